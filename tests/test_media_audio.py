"""Audio both ways, in-process: sim microphone -> Opus -> SFrame (meeting key) -> RTP frames ->
receiver (decrypt with the key from the peer's key set) -> playout -> sim speaker that reads stamps."""

from __future__ import annotations

import secrets
import time

import numpy as np

from agent.e2ee.context import ReceiverContext, SenderContext
from agent.media.audio import AudioPlayout, AudioSender
from agent.media.key_source import ContextOpener, KeySource
from agent.media.protect import ProtectedFrame
from agent.media.receiver import MediaReceiver
from agent.media.rtp import Depacketizer, Packetizer
from agent.media.sink import SinkStats
from hal.audio_codecs import OpusEncoder
from hal.audio_stamps import slot_of
from hal.sim.audio import SimMicrophone, SimSpeaker
from hal.types import AudioFrame, AudioSpec


class _Sealer:
    def __init__(self, ctx: SenderContext) -> None:
        self.ctx = ctx

    @property
    def kid(self) -> int:
        return self.ctx.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self.ctx.encrypt(metadata, plaintext)


class _RtpLoop:
    """A sink that packetizes like the RTP sink and hands datagrams to a receiver, dropping some."""

    url = "test:rtp-loop"
    e2ee_required = True

    def __init__(self, receiver: MediaReceiver, drop: set[int]) -> None:
        self.stats = SinkStats()
        self.packetizer = Packetizer(0x1234)
        self.receiver = receiver
        self.drop = drop
        self.frames: list[ProtectedFrame] = []

    def send(self, frame: ProtectedFrame) -> None:
        self.frames.append(frame)
        n = self.stats.frames
        self.stats.frames += 1
        now = n * 0.02  # the reassembler declares a gap lost after its timeout: let time pass
        for datagram in self.packetizer.packetize(frame.payload, frame.ticks, keyframe=frame.keyframe):
            if n not in self.drop:
                self.receiver.handle_datagram(datagram, now)
        self.receiver.poll(now)

    def close(self) -> None:
        pass


def _meeting_keys() -> tuple[KeySource, ReceiverContext]:
    base, kid = secrets.token_bytes(32), 0x5A5A0001
    keys = KeySource()
    keys.set_sender(_Sealer(SenderContext(4, base, kid)), 1)
    ctx = ReceiverContext()
    ctx.add_key(kid, base, 4, epoch=1)
    return keys, ctx


def test_audio_sealed_per_frame_decrypted_played_and_verified() -> None:
    keys, ctx = _meeting_keys()
    speaker = SimSpeaker(AudioSpec(id="spk"))
    playout = AudioPlayout(speaker, name="A")
    receiver = MediaReceiver(ContextOpener(ctx), on_audio=lambda ssrc, ts, data: playout.push(ts, data))
    drop = {60, 61, 120}
    sink = _RtpLoop(receiver, drop)
    mic = SimMicrophone(AudioSpec(id="mic"))
    sender = AudioSender(mic, keys, sink)
    first = slot_of(time.time_ns()) - 300
    for slot in range(first, first + 200):
        sender.send(mic.render(slot))
    assert sender.stats.sent == 200
    # every frame on the wire is an SFrame ciphertext: no Opus packet in clear
    opus = OpusEncoder().encode(mic.render(first))[0].data
    assert all(opus[:8] not in f.payload for f in sink.frames)
    assert all(f.protected and f.kid == 0x5A5A0001 for f in sink.frames)
    assert receiver.stats.decrypt_failures == 0
    assert receiver.stats.audio_frames == 197
    assert playout.stats.as_dict() == {
        "received": 197,
        "decoded": 197,
        "concealed": 3,  # the three lost frames are filled in
        "late_dropped": 0,
        "gaps_not_concealed": 0,
        "decode_errors": 0,
    }
    rep = speaker.report
    assert rep.frames_played == 200
    assert rep.frames_concealed == 3
    assert rep.out_of_order == 0
    assert rep.stamps_read >= 150
    # the lost frames' slots are missing from what was heard (concealment carries no stamp)
    assert rep.slots_missing >= 2


def test_wrong_key_is_a_decrypt_failure_and_nothing_plays() -> None:
    keys, _ = _meeting_keys()
    other = ReceiverContext()
    other.add_key(0x5A5A0001, secrets.token_bytes(32), 4, epoch=1)  # same KID, another key
    speaker = SimSpeaker(AudioSpec(id="spk"))
    playout = AudioPlayout(speaker)
    receiver = MediaReceiver(ContextOpener(other), on_audio=lambda s, ts, d: playout.push(ts, d))
    sender = AudioSender(SimMicrophone(AudioSpec(id="mic")), keys, _RtpLoop(receiver, set()))
    for slot in range(10):
        sender.send(SimMicrophone(AudioSpec(id="m")).render(slot))
    assert receiver.stats.decrypt_failures == 10
    assert speaker.report.frames_played == 0


def test_no_key_no_audio() -> None:
    receiver = MediaReceiver(ContextOpener(ReceiverContext()))
    sink = _RtpLoop(receiver, set())
    sender = AudioSender(SimMicrophone(AudioSpec(id="mic")), KeySource(), sink)
    sender.send(AudioFrame(device_id="m", seq=0, capture_ns=0, samples=np.zeros(960, np.int16) + 500))
    assert sender.stats.sent == 0
    assert sink.stats.frames == 0


def test_playout_drops_late_frames_and_bounds_concealment() -> None:
    speaker = SimSpeaker(AudioSpec(id="spk"))
    playout = AudioPlayout(speaker)
    enc = OpusEncoder()
    mic = SimMicrophone(AudioSpec(id="mic"))
    packets = [(slot * 1800, enc.encode(mic.render(slot))[0].data) for slot in range(40)]
    order = [*range(0, 10), 12, 11, *range(13, 20), *range(35, 40)]  # 11 late; 20..34 an outage
    for i in order:
        playout.push(*packets[i])
    st = playout.stats
    assert st.late_dropped == 1
    assert st.concealed == 2  # slots 10 and 11 were concealed when 12 came (11 then came too late)
    assert st.gaps_not_concealed == 15  # an outage longer than 100 ms is not papered over
    assert Depacketizer  # the lab transport's reassembler is what MediaReceiver uses
