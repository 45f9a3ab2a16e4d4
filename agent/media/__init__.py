"""The media path: capture → encode → SFrame → RTP/UDP or file, and the verifying receiver.

Modules: ``rtp`` (RFC 3550 packetizer and reassembler, pure), ``frame`` (the RTP-independent frame
header that SFrame authenticates), ``sink`` (where protected frames leave the device; refuses
plaintext), ``keys`` (the current SFrame sender and lab key files), ``pipeline`` (the per-camera
service), ``receiver`` (``roomagent receive``), ``demo`` and ``bench``.
"""
