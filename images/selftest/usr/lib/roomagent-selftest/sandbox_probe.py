"""Self-test probe: the agent's native libraries doing real work inside roomagent.service's sandbox.

Run by selftest.py through ``systemd-run`` with the unit's own properties, once with
MemoryDenyWriteExecute=yes and once with =no: PyAV captures from the V4L2 camera (vivid) through
FFmpeg's video4linux2 demuxer, encodes with libx264 and decodes again; cryptography signs and verifies
(Ed25519), agrees a key (X25519), seals with AES-GCM and HPKE (X25519) and runs ML-KEM-768. Prints one line
per step; exits non-zero on the first failure. No frame bytes or keys are printed.
"""

from __future__ import annotations

import faulthandler
import sys
import time
from fractions import Fraction

faulthandler.enable()  # a crash in native code still names the Python line

device = sys.argv[1] if len(sys.argv) > 1 else "/dev/video0"


def step(name: str, t0: float) -> None:
    print(f"{name}: ok ({time.monotonic() - t0:.2f} s)", flush=True)


t = time.monotonic()
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

sk = Ed25519PrivateKey.generate()
sig = sk.sign(b"roomagent selftest")
sk.public_key().verify(sig, b"roomagent selftest")
a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
assert a.exchange(b.public_key()) == b.exchange(a.public_key())
key = AESGCM.generate_key(bit_length=128)
ct = AESGCM(key).encrypt(b"\x00" * 12, b"frame", b"aad")
assert AESGCM(key).decrypt(b"\x00" * 12, ct, b"aad") == b"frame"
step("cryptography ed25519+x25519+aes-gcm", t)

t = time.monotonic()
# HPKE (RFC 9180) seal/open with X25519, and an ML-KEM-768 encapsulation: the device's key delivery.
from cryptography.hazmat.primitives import hpke  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import mlkem  # noqa: E402

suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
recipient = X25519PrivateKey.generate()
sealed = suite.encrypt(b"sframe base key", recipient.public_key(), b"roomagent selftest")
assert suite.decrypt(sealed, recipient, b"roomagent selftest") == b"sframe base key"
kem_key = mlkem.MLKEM768PrivateKey.generate()
first, second = kem_key.public_key().encapsulate()
shared, ciphertext = (first, second) if len(first) == 32 else (second, first)
assert kem_key.decapsulate(ciphertext) == shared
step("cryptography hpke x25519 seal/open + ml-kem-768", t)

t = time.monotonic()
import av  # noqa: E402

step(f"import av {av.__version__}", t)

t = time.monotonic()
# Encode while capturing, as the agent's pipeline does: a captured frame may point into the driver's
# mmap()ed buffers, which are gone once the container is closed.
container = av.open(device, format="video4linux2", options={"video_size": "640x360", "framerate": "15"})
stream = container.streams.video[0]
enc = av.CodecContext.create("libx264", "w")
enc.width, enc.height, enc.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuv420p"
enc.time_base = Fraction(1, 15)
enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
packets = []
captured = 0
fmt = ""
for frame in container.decode(stream):
    fmt = frame.format.name
    f = frame.reformat(format="yuv420p")
    f.pts = captured
    packets += enc.encode(f)
    captured += 1
    if captured >= 10:
        break
packets += enc.encode(None)
container.close()
size = sum(p.size for p in packets)
step(
    f"capture {captured} frames {enc.width}x{enc.height} {fmt} from {device}, "
    f"libx264 {len(packets)} packets {size} bytes",
    t,
)

t = time.monotonic()
dec = av.CodecContext.create("h264", "r")
decoded = 0
for p in packets:
    decoded += len(dec.decode(p))
decoded += len(dec.decode(None))
if decoded != captured:
    raise SystemExit(f"decoded {decoded} of {captured} frames")
step(f"h264 decode {decoded} frames", t)
print("probe: all ok")
