"""Audio HAL: stamps, sim microphone/speaker and their faults, echo cancellation, ALSA through PyAV."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hal.aec import EchoCanceller, erle_db
from hal.audio_stamps import AudioStampReader, read_audio_stamp, slot_of, stamp_tone
from hal.errors import DeviceGoneError
from hal.protocols import Microphone, Speaker
from hal.sim.audio import EchoPath, SimMicrophone, SimSpeaker, speech_like
from hal.types import AudioFrame, AudioSpec


def test_stamp_reads_back_and_rejects_garbage() -> None:
    slot = slot_of(time.time_ns())
    tone = stamp_tone(slot)
    assert read_audio_stamp(tone[240:720], slot + 100) == slot
    rng = np.random.default_rng(0)
    wrong = sum(read_audio_stamp(rng.integers(-9000, 9000, 480), slot) is not None for _ in range(300))
    assert wrong <= 3  # CRC-8: about 1 in 256 noise windows may pass


def test_stamps_survive_opus_with_codec_delay() -> None:
    from hal.audio_codecs import OpusDecoder, OpusEncoder

    enc, dec = OpusEncoder(), OpusDecoder()
    reader = AudioStampReader()
    base = slot_of(time.time_ns())
    read: list[int | None] = []
    for i in range(300):
        frame = AudioFrame(device_id="m", seq=i, capture_ns=0, samples=stamp_tone(base + i))
        for packet in enc.encode(frame):
            read += reader.feed(dec.decode(packet.data).samples, time.time_ns())
    good = [s for s in read if s is not None]
    assert len(good) >= 0.7 * len(read)  # typically 93-99 %; unreadable ones read as None, never wrong
    assert len(read) >= 290
    assert good == sorted(good)
    assert all(base <= s < base + 300 for s in good)


async def test_sim_microphone_paced_stamped_and_faults() -> None:
    mic = SimMicrophone(AudioSpec(id="mic"))
    assert isinstance(mic, Microphone)
    async with mic:
        frames = []
        t0 = time.monotonic()
        async for frame in mic.frames():
            frames.append(frame)
            if len(frames) == 10:
                mic.faults.silence(0.05)
            if len(frames) == 20:
                break
        assert time.monotonic() - t0 >= 0.3  # paced at 20 ms
        slots = [f.seq for f in frames]
        assert slots == list(range(slots[0], slots[0] + 20))
        assert read_audio_stamp(frames[0].samples[240:720], slots[0]) == slots[0]
        assert any(not f.samples.any() for f in frames[10:]), "silence fault gives zeros"
        mic.faults.unplug()
        with pytest.raises(DeviceGoneError):
            async for _ in mic.frames():
                pass


def test_sim_speaker_verifies_loss_order_concealment_latency() -> None:
    spk = SimSpeaker(AudioSpec(id="spk"))
    assert isinstance(spk, Speaker)
    base = slot_of(time.time_ns()) - 10
    order = [*range(0, 20), *range(22, 30), 25, *range(30, 40)]  # 2 lost, 1 late duplicate
    now = time.time_ns()
    for k, i in enumerate(order):
        spk.play(
            AudioFrame(device_id="x", seq=i, capture_ns=0, samples=stamp_tone(base + i)), now + k * 20_000_000
        )
    spk.play(
        AudioFrame(device_id="x", seq=0, capture_ns=0, samples=np.zeros(960, np.int16), concealed=True),
        now + 40 * 20_000_000,
    )
    rep = spk.report
    assert rep.frames_played == len(order) + 1
    assert rep.frames_concealed == 1
    assert rep.slots_missing == 2
    assert rep.out_of_order == 1
    assert rep.latencies_ms
    assert min(rep.latencies_ms) > 150


def test_echo_canceller_erle_at_least_20_db_on_sim_echo_path() -> None:
    """Far-end speech through the sim speaker, a delayed, attenuated, filtered room path into the
    sim microphone together with near-end speech; ERLE measured over far-end-only talk after 3 s."""
    far = speech_like(7.0, seed=1)
    near = speech_like(7.0, seed=2, level=3000)
    path = EchoPath(delay_ms=30, gain_db=-6)
    speaker = SimSpeaker(AudioSpec(id="spk"), echo=path)
    mic = SimMicrophone(AudioSpec(id="mic"), air=lambda slot: path.mic_in() + _near(near, slot), stamps=False)
    aec = EchoCanceller(tail_ms=80)
    echo_only: list[np.ndarray] = []
    residual: list[np.ndarray] = []
    for i in range(len(far) // 960):
        played = far[i * 960 : (i + 1) * 960]
        speaker.play(AudioFrame(device_id="far", seq=i, capture_ns=0, samples=played))
        captured = mic.render(i)
        out = aec.cancel(captured.samples, played)
        if 150 <= i < 250:  # seconds 3..5: far end alone
            echo_only.append(captured.samples)
            residual.append(out)
    erle = erle_db(np.concatenate(echo_only), np.concatenate(residual))
    print(f"ERLE {erle:.1f} dB")
    assert erle >= 20.0
    aec.close()


def _near(near: np.ndarray, slot: int) -> np.ndarray:
    # near-end talk only in seconds 5..6 (double talk), silent elsewhere
    if 250 <= slot < 300:
        return near[slot * 960 : (slot + 1) * 960].astype(np.float64)
    return np.zeros(960)


_ALSA_CONF = """
pcm.null {{ type null }}
pcm.roomcap {{ type null }}
pcm.roomplay {{ type file slave {{ pcm "null" }} file "{out}" format "raw" }}
"""


def test_alsa_backends_against_null_and_file_pcms(tmp_path: Path) -> None:
    """No sound card and no module loading here (no snd-aloop): the ALSA backends run against ALSA's
    own ``null`` (capture) and ``file`` (playback) PCM plugins, defined by an asoundrc for this test
    only, so the real libasound code path through PyAV is exercised."""
    out = tmp_path / "played.raw"
    conf = tmp_path / "asoundrc"
    conf.write_text(_ALSA_CONF.format(out=out))
    script = textwrap.dedent(
        """
        import asyncio, numpy as np
        from hal.alsa import AlsaMicrophone, AlsaSpeaker
        from hal.audio_stamps import stamp_tone
        from hal.types import AudioFrame, AudioSpec
        async def main():
            async with AlsaMicrophone(AudioSpec(id="m", backend="alsa", device="roomcap")) as mic:
                n = 0
                async for f in mic.frames():
                    assert f.samples.shape == (960,) and f.samples.dtype == np.int16
                    n += 1
                    if n == 10: break
            async with AlsaSpeaker(AudioSpec(id="s", backend="alsa", device="roomplay")) as spk:
                for i in range(25):
                    spk.play(AudioFrame(device_id="s", seq=i, capture_ns=0, samples=stamp_tone(1000 + i)))
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.3)
            print("ok", n, spk.frames_played)
        asyncio.run(main())
        """
    )
    env = {**os.environ, "ALSA_CONFIG_PATH": str(conf), "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["ok", "10"]
    raw = np.frombuffer(out.read_bytes(), dtype="<i2")
    played = int(proc.stdout.split()[2])
    assert played >= 20
    assert len(raw) >= played * 960 - 960
    assert read_audio_stamp(raw[240:720], 1000) == 1000  # what reached ALSA is what was played


def test_alsa_missing_pcm_is_a_typed_error(tmp_path: Path) -> None:
    conf = tmp_path / "asoundrc"
    conf.write_text("pcm.null { type null }\n")
    script = (
        "import asyncio\nfrom hal.alsa import AlsaMicrophone\nfrom hal.errors import DeviceGoneError\n"
        "from hal.types import AudioSpec\n"
        "async def main():\n"
        "    try:\n"
        "        async with AlsaMicrophone(AudioSpec(id='m', backend='alsa', device='nosuch')):\n"
        "            pass\n"
        "    except DeviceGoneError as e:\n"
        "        print('gone', e.device)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "ALSA_CONFIG_PATH": str(conf), "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "gone m", proc.stderr[-2000:]


def test_unplugged_speaker_is_a_typed_error_and_playout_goes_on() -> None:
    from agent.media.audio import AudioPlayout
    from hal.audio_codecs import OpusEncoder

    spk = SimSpeaker(AudioSpec(id="spk"))
    playout = AudioPlayout(spk, name="peer")
    enc = OpusEncoder()
    mic = SimMicrophone(AudioSpec(id="m"))
    spk.faults.unplug()
    with pytest.raises(DeviceGoneError):
        spk.play(mic.render(1))
    for slot in range(5):
        playout.push(slot * 1800, enc.encode(mic.render(slot))[0].data)  # logged, not raised
    assert playout.stats.decoded == 5
    assert spk.report.frames_played == 0
    spk.faults.replug()
    playout.push(5 * 1800, enc.encode(mic.render(5))[0].data)
    assert spk.report.frames_played == 1


async def test_stalled_microphone_resumes_on_the_wall_clock_grid() -> None:
    mic = SimMicrophone(AudioSpec(id="mic"))
    async with mic:
        slots = []
        async for frame in mic.frames():
            slots.append(frame.seq)
            if len(slots) == 3:
                mic.faults.stall(0.2)
            if len(slots) == 6:
                break
    assert slots[3] - slots[2] >= 8  # ~10 slots of 20 ms were never captured
    mic.faults.glitch(1)
    assert np.abs(mic.render(slots[-1] + 1).samples.astype(int)).max() > 15000
