"""PyAV encoders through the HAL: every codec that opens here round-trips every stamp; hardware
candidates that cannot open are skipped with a logged reason."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import pytest
from structlog.testing import capture_logs

from hal import encoder_factory, open_inventory
from hal.codecs import PyAvEncoderFactory, open_decoder
from hal.errors import DecoderError, EncoderError, UnsupportedError
from hal.images import save_png
from hal.stamps import read_stamp
from hal.types import CameraSpec, EncoderConfig, Frame

W, H = 320, 240
SOFTWARE = ["libx264", "libx265", "libvpx", "libvpx-vp9", "libsvtav1"]


@pytest.fixture(scope="module")
def factory() -> PyAvEncoderFactory:
    return encoder_factory()


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """40 sim frames at 320x240, captured once for every codec test."""
    import asyncio

    async def take() -> list[Frame]:
        inv = open_inventory(
            [CameraSpec(id="c", width=W, height=H, fps=120)], backend="sim", presets_dir=None
        )
        out: list[Frame] = []
        async with inv.open_camera("c") as cam:
            async for frame in cam.frames():
                out.append(frame)
                if len(out) == 40:
                    return out
        return out

    return asyncio.run(take())


@pytest.mark.parametrize("name", SOFTWARE)
def test_round_trip_reads_every_stamp(factory: PyAvEncoderFactory, frames: list[Frame], name: str) -> None:
    if name not in {c.name for c in factory.probe()}:
        pytest.skip(f"{name} does not open on this machine")
    config = EncoderConfig(codec=name, width=W, height=H, fps=30, bitrate_kbps=1500, keyframe_interval=300)
    encoder = factory.open(config, [name])
    decoder = open_decoder(encoder.capabilities.codec)
    packets = []
    for i, frame in enumerate(frames):
        if i == 25:
            encoder.request_keyframe()
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.flush())
    encoder.close()

    assert [p.frame_seq for p in packets] == [f.seq for f in frames]  # one packet per frame, in order
    assert packets[0].keyframe
    assert packets[25].keyframe
    assert not any(p.keyframe for p in packets[1:25])
    assert all(b.pts > a.pts for a, b in itertools.pairwise(packets))
    assert {p.codec for p in packets} == {encoder.capabilities.codec}

    seen = []
    for p in packets:
        seen.extend(decoder.decode(p.data))
    seen.extend(decoder.flush())
    assert [d.stamp.seq if d.stamp else None for d in seen] == [f.seq for f in frames]
    assert [d.stamp.capture_ns for d in seen if d.stamp] == [f.capture_ns for f in frames]


def test_receiver_can_join_at_a_requested_keyframe(factory: PyAvEncoderFactory, frames: list[Frame]) -> None:
    encoder = factory.open(EncoderConfig(codec="h264", width=W, height=H, fps=30), ["libx264"])
    packets = [p for f in frames[:10] for p in encoder.encode(f)]
    encoder.request_keyframe()
    packets += [p for f in frames[10:20] for p in encoder.encode(f)]
    decoder = open_decoder("h264")
    late = [d for p in packets[10:] for d in decoder.decode(p.data)] + decoder.flush()
    assert [d.stamp.seq for d in late if d.stamp] == [f.seq for f in frames[10:20]]


def test_probe_lists_what_really_opens(factory: PyAvEncoderFactory) -> None:
    names = {c.name for c in factory.probe()}
    assert "libx264" in names
    assert "h264_nvenc" not in names
    assert "h264_v4l2m2m" not in names


def test_fallback_along_the_preference_list_logs_why(frames: list[Frame]) -> None:
    factory = encoder_factory()
    config = EncoderConfig(codec="h264", width=W, height=H, fps=30)
    with capture_logs() as logs:
        encoder = factory.open(config, ["h264_nvenc", "h264_v4l2m2m", "no_such_encoder", "libx264"])
    assert encoder.capabilities.name == "libx264"
    assert not encoder.capabilities.hardware
    fallbacks = [e for e in logs if e["event"] == "encoder_fallback"]
    assert [e["encoder"] for e in fallbacks] == ["h264_nvenc", "h264_v4l2m2m", "no_such_encoder"]
    assert all(e["reason"] for e in fallbacks)
    assert encoder.encode(frames[0])


def test_preference_may_fall_back_to_another_family() -> None:
    encoder = encoder_factory().open(
        EncoderConfig(codec="h264", width=W, height=H, fps=30), ["h264_nvenc", "libvpx"]
    )
    assert encoder.capabilities.codec == "vp8"
    assert encoder.config.codec == "vp8"


def test_nothing_opens() -> None:
    with capture_logs(), pytest.raises(EncoderError) as err:
        encoder_factory().open(
            EncoderConfig(codec="h264", width=W, height=H, fps=30), ["h264_nvenc", "bogus"]
        )
    assert "h264_nvenc" in str(err.value)
    assert "bogus" in str(err.value)


def test_defaults_per_codec_family(frames: list[Frame]) -> None:
    with capture_logs():
        encoder = encoder_factory().open(EncoderConfig(codec="h264", width=W, height=H, fps=30))
    assert encoder.capabilities.codec == "h264"
    with pytest.raises(UnsupportedError):
        encoder_factory().open(EncoderConfig(codec="mpeg2", width=W, height=H, fps=30))


def test_frames_of_another_size_are_scaled(factory: PyAvEncoderFactory, frames: list[Frame]) -> None:
    encoder = factory.open(EncoderConfig(codec="h264", width=640, height=480, fps=30), ["libx264"])
    decoder = open_decoder("h264")
    out = [d for f in frames[:3] for p in encoder.encode(f) for d in decoder.decode(p.data)]
    assert out
    assert all((d.width, d.height) == (640, 480) for d in out)


def test_garbage_is_a_decoder_error() -> None:
    decoder = open_decoder("vp8")
    with pytest.raises(DecoderError):
        decoder.decode(b"\x00garbage" * 10)
    with pytest.raises(UnsupportedError):
        open_decoder("no-such-codec")


def test_snapshot_png(tmp_path: Path, frames: list[Frame]) -> None:
    out = tmp_path / "snap.png"
    save_png(frames[0].image, out)
    assert out.read_bytes().startswith(b"\x89PNG")
    with av.open(str(out)) as container:
        [image] = list(container.decode(video=0))
    assert (image.width, image.height) == (W, H)
    assert read_stamp(image) is not None  # PNG is lossless: the stamp survives
