"""WebRTC transport for rooms and browsers: aiortc through a Janus VideoRoom, SFrame end to end.

See docs/webrtc.md and docs/adr/0035-one-transport-for-rooms-and-browsers.md.
"""
