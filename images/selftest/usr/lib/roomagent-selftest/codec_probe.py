"""Self-test diagnosis: open each FFmpeg encoder the HAL may probe and encode one frame.

Prints each encoder's name before touching it, so when a native library crashes the process (an
instruction this CPU lacks, say) the last line names the culprit.
"""

from __future__ import annotations

import faulthandler
from fractions import Fraction

import av

faulthandler.enable()
ENCODERS = ["libx264", "libx265", "libvpx", "libvpx-vp9", "libsvtav1", "libaom-av1", "h264_v4l2m2m",
            "h264_vaapi", "h264_nvenc"]  # fmt: skip
for name in ENCODERS:
    print(f"{name}: opening", flush=True)
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 320, 240, "yuv420p", Fraction(1, 15)
        ctx.open()
        frame = av.VideoFrame(320, 240, "yuv420p")
        frame.pts = 0
        packets = ctx.encode(frame) + ctx.encode(None)
        print(f"{name}: ok, {len(packets)} packets", flush=True)
    except Exception as exc:  # an encoder that does not open is fine; a crash is what we look for
        print(f"{name}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
print("codec probe: done")
