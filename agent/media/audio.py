"""Audio both ways: microphone -> (echo canceller) -> Opus -> SFrame -> sink, and the receive side's
playout: SFrame-opened Opus frames -> lost frames concealed, late ones dropped -> decoded -> speaker.

Both ends are transport-agnostic: the sender hands :class:`agent.media.protect.ProtectedFrame` to any
:class:`agent.media.sink.Sink` (RTP/UDP in the lab, a WebRTC track), and :class:`AudioPlayout` takes
``(timestamp, opus bytes)`` from whatever reassembled and decrypted the frame
(``agent.media.receiver.MediaReceiver(on_audio=...)`` here). Each audio frame is sealed on its own
(RFC 9605 §4.2: one SFrame per encoded frame) with the same meeting sender key as the room's video.
"""

from __future__ import annotations

__all__ = ["AudioPlayout", "AudioSender", "AudioSenderStats", "PlayoutStats"]

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from agent.e2ee.sframe import SFrameError
from agent.media.errors import SinkError
from agent.media.key_source import KeySource
from agent.media.protect import protect_frame
from agent.media.sink import Sink
from hal.audio_codecs import OpusDecoder, OpusEncoder
from hal.errors import HalError
from hal.protocols import Microphone, Speaker
from hal.types import AudioFrame

_log = structlog.get_logger()
_TICKS_PER_FRAME = 1800  # 20 ms at the 90 kHz media clock (agent.media.rtp)
_MAX_CONCEAL = 5  # frames: a longer gap is silence (DTX) or an outage, not something to paper over


class _Progress:
    def beat(self) -> None: ...


@dataclass(slots=True)
class AudioSenderStats:
    captured: int = 0
    capture_gaps: int = 0  # frames the microphone never delivered (its buffer overran under load)
    sent: int = 0  # Opus frames sealed and handed to the sink
    no_key: int = 0  # frames not sent because there was no sender key (media stops without keys)
    seal_errors: int = 0
    send_errors: int = 0


class AudioSender:
    """Captures, cancels echo, encodes and seals audio; a ``Service`` (``name``, ``async run``).

    Args:
        mic: the room's microphone.
        keys: the room's sender keys (the same :class:`KeySource` as its video).
        sink: where sealed frames go.
        echo_canceller: an ``hal.aec.EchoCanceller``; with ``reference``, the frame the room's speaker
            is playing now (the echo canceller's far-end input).
    """

    name = "audio-sender"

    def __init__(
        self,
        mic: Microphone,
        keys: KeySource,
        sink: Sink,
        *,
        encoder: OpusEncoder | None = None,
        echo_canceller: Any = None,
        reference: Callable[[], Any] | None = None,
    ) -> None:
        self._mic = mic
        self._keys = keys
        self._sink = sink
        self._encoder = encoder or OpusEncoder()
        self._aec = echo_canceller
        self._reference = reference
        self.stats = AudioSenderStats()
        self._last_seq: int | None = None

    async def run(self, progress: Any = None) -> None:
        beat = progress or _Progress()
        async with self._mic:
            async for frame in self._mic.frames():
                self.stats.captured += 1
                beat.beat()
                # Opus on 20 ms of mono audio and one AEAD seal take well under a millisecond: done
                # inline rather than paying a thread hop per frame.
                self.send(frame)

    def send(self, frame: AudioFrame) -> None:
        if self._last_seq is not None and frame.seq > self._last_seq + 1:
            self.stats.capture_gaps += frame.seq - self._last_seq - 1
        self._last_seq = frame.seq
        if self._aec is not None and self._reference is not None:
            frame = AudioFrame(
                device_id=frame.device_id,
                seq=frame.seq,
                capture_ns=frame.capture_ns,
                samples=self._aec.cancel(frame.samples, self._reference()),
            )
        sealer, _epoch, _gen = self._keys.current()
        try:
            packets = self._encoder.encode(frame)
        except HalError as exc:
            _log.warning("audio_encode_failed", error=str(exc))
            return
        if sealer is None:
            self.stats.no_key += len(packets)
            return
        for packet in packets:
            try:
                protected = protect_frame(sealer, packet)
            except SFrameError as exc:
                self.stats.seal_errors += 1
                _log.warning("audio_seal_failed", error=str(exc))
                continue
            try:
                self._sink.send(protected)
            except SinkError as exc:
                self.stats.send_errors += 1
                _log.warning("audio_send_failed", sink=exc.sink, reason=exc.reason)
                continue
            self.stats.sent += 1


@dataclass(slots=True)
class PlayoutStats:
    received: int = 0
    decoded: int = 0
    concealed: int = 0
    late_dropped: int = 0  # arrived after a later frame was already played
    gaps_not_concealed: int = 0  # frames missing in gaps longer than the concealment limit
    decode_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class AudioPlayout:
    """One remote sender's audio to a speaker. Thread-confined (the receiving thread calls ``push``).

    A frame is played when it arrives (the speaker's device buffer absorbs small jitter); a gap in
    the 20 ms timestamp grid is filled with concealed frames (up to 100 ms); a frame older than the
    newest one played is dropped, since playing it now would be out of time.
    """

    def __init__(self, speaker: Speaker, *, decoder: OpusDecoder | None = None, name: str = "") -> None:
        self._speaker = speaker
        self._decoder = decoder or OpusDecoder()
        self._last_ts: int | None = None
        self.name = name
        self.stats = PlayoutStats()

    def push(self, timestamp: int, opus: bytes) -> None:
        self.stats.received += 1
        if self._last_ts is not None:
            step = ((timestamp - self._last_ts) % (1 << 32)) / _TICKS_PER_FRAME
            if step > (1 << 31) / _TICKS_PER_FRAME or step < 0.5:
                self.stats.late_dropped += 1
                return
            missing = round(step) - 1
            if 0 < missing <= _MAX_CONCEAL:
                for _ in range(missing):
                    self._play(self._decoder.conceal())
                    self.stats.concealed += 1
            elif missing > _MAX_CONCEAL:
                self.stats.gaps_not_concealed += missing
        self._last_ts = timestamp
        try:
            frame = self._decoder.decode(opus)
        except HalError:
            self.stats.decode_errors += 1
            self._play(self._decoder.conceal())
            self.stats.concealed += 1
            return
        self.stats.decoded += 1
        self._play(frame)

    def delay_ns(self) -> int:
        """How long audio handed to the speaker now waits before it is heard (the device's queue;
        0 when the device does not say)."""
        queued = getattr(self._speaker, "queued_ns", None)
        return int(queued()) if callable(queued) else 0

    def _play(self, frame: AudioFrame) -> None:
        try:
            self._speaker.play(frame)
        except HalError as exc:
            _log.warning("audio_play_failed", peer=self.name, error=str(exc))
