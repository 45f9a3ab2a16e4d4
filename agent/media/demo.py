"""``roomagent demo``: simulated rooms meeting each other, E2EE video and audio both ways, measured.

Every room has a sim camera, a sim microphone, a sim display and (for measurement) one sim speaker per
remote room. Room X's camera -> X's pipeline (H.264, SFrame with X's sender key) and X's microphone ->
Opus -> SFrame with the same key, each to every other room; the receiving room opens the frames with
the keys it holds for X (RFC 9605 §4.4.4), decodes, shows X's picture in its grid and plays X's audio.
Each room rotates its sender key every ``rotate_s`` seconds (the peers get the new key first, then
the sender switches), as a meeting's key packages would.

Transport: the lab RTP/UDP path (``agent.media.rtp``) on loopback, optionally through an
:class:`agent.media.relay.ImpairingRelay` per direction (``--loss``, ``--jitter-ms``,
``--blackout-ms``). It has no retransmission and no RTCP: a receiver that loses part of a video frame
asks for a keyframe through an in-process call standing in for RTCP PLI (at most every 100 ms per
stream). The WebRTC transport (aiortc: NACK, PLI, jitter buffers, bandwidth estimation) plugs the same
sender and playout components in.

``--json`` prints per direction (``A_to_B``: what B shows and plays of A): video sent, shown, stamps
missing, out of order, glass-to-glass latency p50/p99 (capture to display), freeze time; audio sent,
played, concealed, mouth-to-ear p50/p99; A/V skew p95; decrypt failures (of the receiving room).
"""

from __future__ import annotations

__all__ = ["DemoOptions", "run_demo", "run_meeting"]

import asyncio
import bisect
import contextlib
import functools
import json
import secrets
import string
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.e2ee.context import ReceiverContext, SenderContext
from agent.media.audio import AudioSender
from agent.media.key_source import ContextOpener, KeySource
from agent.media.meeting import MeetingReceive
from agent.media.pipeline import MediaPipeline, StreamSettings
from agent.media.receiver import bind_udp, percentile
from agent.media.relay import ImpairingRelay, Impairment
from agent.media.sink import FanoutSink, RtpSink
from agent.schema.policy import DEFAULT_POLICY
from agent.service import Progress
from hal.display import SdlDisplay, SimDisplay
from hal.sim.audio import SimMicrophone, SimSpeaker
from hal.types import AudioSpec, CameraSpec, DisplaySpec

_POLICY_VERSION = 0  # the first-boot default policy (no signed policy applied)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    rooms: int = 2
    seconds: float | None = None
    width: int = 640
    height: int = 360
    fps: int = 30
    bitrate_kbps: int = 1500
    rotate_s: float = 10.0
    audio: bool = True
    impairment: Impairment | None = None
    compose_every: int = 15  # compose the screen picture every n-th picture (stamps: every one)
    lip_sync: bool = True  # hold pictures until the sound captured with them plays
    sdl_driver: str | None = None  # show room A's screen through SDL2 ("" = SDL's choice)
    receive_sizes: tuple[tuple[int, int], ...] = ()  # per-room camera sizes override (width, height)


class _Sealer:
    """A fresh meeting-style sender key (a fresh key per process needs no CTR store, §9.1)."""

    def __init__(self, context: SenderContext) -> None:
        self.context = context

    @property
    def kid(self) -> int:
        return self.context.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self.context.encrypt(metadata, plaintext)


@dataclass
class _Room:
    name: str
    keys: KeySource
    receive_ctx: ReceiverContext
    sock: Any
    display: SimDisplay | SdlDisplay
    receiver: MeetingReceive | None = None
    pipeline: MediaPipeline | None = None
    audio: AudioSender | None = None
    epoch: int = 0
    kid_base: int = field(default_factory=lambda: secrets.randbits(16) << 16)
    speakers: dict[str, SimSpeaker] = field(default_factory=dict)  # by sending room
    video_sinks: dict[str, RtpSink] = field(default_factory=dict)  # by receiving room
    audio_sinks: dict[str, RtpSink] = field(default_factory=dict)
    audio_played: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # sender -> (capture, play)


def _rotate(sender: _Room, peers: list[_Room], suite: int) -> None:
    """A new epoch: the peers learn the key first, then the sender switches (and sends a keyframe)."""
    sender.epoch += 1
    base_key = secrets.token_bytes(32)
    kid = sender.kid_base + sender.epoch
    for peer in peers:
        peer.receive_ctx.add_key(kid, base_key, suite, epoch=sender.epoch)
    sender.keys.set_sender(_Sealer(SenderContext(suite, base_key, kid)), sender.epoch, origin="meeting")


def _names(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n]) if n <= 26 else [f"R{i}" for i in range(n)]


def _wire(opts: DemoOptions) -> tuple[list[_Room], list[ImpairingRelay]]:
    from hal.codecs import PyAvEncoderFactory
    from hal.sim import SimInventory

    rooms: list[_Room] = []
    for name in _names(opts.rooms):
        ctx = ReceiverContext(max_epochs=8)
        display: SimDisplay | SdlDisplay
        if opts.sdl_driver is not None and not rooms:
            # The first room's screen on a real SDL2 display (a window, or KMS/DRM full screen).
            spec = DisplaySpec(id=f"display-{name}", backend="sdl", driver=opts.sdl_driver or None)
            display = SdlDisplay(spec)
        else:
            display = SimDisplay(DisplaySpec(id=f"display-{name}"), compose_every=opts.compose_every)
        rooms.append(_Room(name, KeySource(), ctx, bind_udp("127.0.0.1", 0), display))
    by_name = {r.name: r for r in rooms}
    relays: list[ImpairingRelay] = []
    for i, room in enumerate(rooms):
        for peer in rooms:
            if peer is room:
                continue
            host, port = peer.sock.getsockname()[:2]
            if opts.impairment is not None:
                relay = ImpairingRelay(
                    (host, port),
                    Impairment(**{**_imp_dict(opts.impairment), "seed": opts.impairment.seed + i}),
                ).start()
                relays.append(relay)
                host, port = relay.address
            room.video_sinks[peer.name] = RtpSink(host, port)
            if opts.audio:
                room.audio_sinks[peer.name] = RtpSink(host, port)
                speaker = SimSpeaker(AudioSpec(id=f"speaker-{peer.name}-from-{room.name}"))
                played = peer.audio_played.setdefault(room.name, [])
                speaker.on_played = lambda c, p, played=played: played.append((c, p))
                peer.speakers[room.name] = speaker
    suite = DEFAULT_POLICY.e2ee.suites[0]
    bases = {room.kid_base: room.name for room in rooms}  # a room's KIDs are its base + epoch
    for room in rooms:
        room.receiver = MeetingReceive(
            ContextOpener(room.receive_ctx),
            room.display,
            functools.partial(_speaker_for, room),
            peer_of_kid=lambda kid: bases.get(kid & ~0xFFFF),
            on_need_keyframe=functools.partial(_pli, by_name),
            lip_sync=opts.lip_sync,
        )
        width, height = (
            opts.receive_sizes[rooms.index(room)] if opts.receive_sizes else (opts.width, opts.height)
        )
        settings = StreamSettings(
            width=width, height=height, fps=opts.fps, bitrate_kbps=opts.bitrate_kbps, codecs=("libx264",)
        )
        inventory = SimInventory(
            [CameraSpec(id=f"cam-{room.name}", width=width, height=height, fps=opts.fps)]
        )
        room.pipeline = MediaPipeline(
            camera_id=f"cam-{room.name}",
            inventory=inventory,
            encoders=PyAvEncoderFactory(),
            keys=room.keys,
            sink=FanoutSink(list(room.video_sinks.values())),
            settings=settings,
            e2ee_required=DEFAULT_POLICY.e2ee.required,
        )
        if opts.audio:
            room.audio = AudioSender(
                SimMicrophone(AudioSpec(id=f"mic-{room.name}")),
                room.keys,
                FanoutSink(list(room.audio_sinks.values())),
            )
        _rotate(room, [p for p in rooms if p is not room], suite)
    return rooms, relays


def _imp_dict(imp: Impairment) -> dict[str, Any]:
    return {
        "loss_pct": imp.loss_pct,
        "jitter_ms": imp.jitter_ms,
        "delay_ms": imp.delay_ms,
        "blackout_ms": imp.blackout_ms,
        "blackout_at_s": imp.blackout_at_s,
        "seed": imp.seed,
        "max_queued": imp.max_queued,
    }


def _speaker_for(room: _Room, peer: str) -> SimSpeaker:
    """The sim speaker for a peer's audio (a new one for a stream of no known room)."""
    return room.speakers.setdefault(peer, SimSpeaker(AudioSpec(id=f"speaker-{room.name}-from-{peer}")))


def _pli(rooms: dict[str, _Room], peer: str) -> None:
    """A keyframe request from a receiver to the sending room (stands in for RTCP PLI)."""
    sender = rooms.get(peer)
    if sender is not None and sender.pipeline is not None:
        sender.pipeline.request_keyframe()


async def _main(rooms: list[_Room], seconds: float | None, rotate_s: float, suite: int, live: bool) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    async with contextlib.AsyncExitStack() as stack:
        for room in rooms:
            if isinstance(room.display, SdlDisplay):
                await stack.enter_async_context(room.display)
        await _meet(rooms, deadline, rotate_s, suite, live)


async def _meet(rooms: list[_Room], deadline: float | None, rotate_s: float, suite: int, live: bool) -> None:
    async with asyncio.TaskGroup() as tg:
        tasks = []
        for room in rooms:
            if room.pipeline is not None:
                tasks.append(
                    tg.create_task(
                        room.pipeline.run(Progress(f"demo.{room.name}.pipeline")),
                        name=f"demo.{room.name}.pipeline",
                    )
                )
            if room.audio is not None:
                tasks.append(
                    tg.create_task(
                        room.audio.run(Progress(f"demo.{room.name}.audio")), name=f"demo.{room.name}.audio"
                    )
                )
        next_rotation = time.monotonic() + rotate_s
        try:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if time.monotonic() >= next_rotation:
                    next_rotation += rotate_s
                    for room in rooms:
                        _rotate(room, [p for p in rooms if p is not room], suite)
                if live:
                    print("\r" + _status(rooms), end="", file=sys.stderr, flush=True)
        finally:
            for task in tasks:  # the demo ends: stop the senders (they clean up in finally)
                task.cancel()


def _status(rooms: list[_Room]) -> str:
    parts = []
    for room in rooms:
        for sender, tile in sorted(room.display.tiles.items()):
            parts.append(f"{sender}→{room.name} shown {tile.shown}")
    return " | ".join(parts)


def _skew_p95(
    video: list[tuple[int, int]], audio: list[tuple[int, int]]
) -> tuple[float | None, float | None]:
    """(p95 of |audio latency - video latency|, median signed) over video pictures whose capture time
    has an audio frame within 20 ms. Positive: the sound comes later than the picture."""
    if not video or not audio:
        return None, None
    audio = sorted(audio)
    captures = [c for c, _ in audio]
    skews = []
    for cap_v, shown in video:
        i = bisect.bisect_left(captures, cap_v)
        best = min((j for j in (i - 1, i) if 0 <= j < len(audio)), key=lambda j: abs(captures[j] - cap_v))
        cap_a, played = audio[best]
        if abs(cap_a - cap_v) <= 20_000_000:
            skews.append(((played - cap_a) - (shown - cap_v)) / 1e6)
    if not skews:
        return None, None
    p95 = percentile([abs(s) for s in skews], 0.95)
    med = percentile(skews, 0.5)
    return (None if p95 is None else round(p95, 2)), (None if med is None else round(med, 2))


def _summary(
    rooms: list[_Room], opts: DemoOptions, relays: list[ImpairingRelay], t_start_ns: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_name = {r.name: r for r in rooms}
    for sender in rooms:
        for receiver_name, vsink in sender.video_sinks.items():
            peer = by_name[receiver_name]
            assert peer.receiver is not None
            tile = peer.display.tiles.get(sender.name)
            t = tile.as_dict() if tile is not None else {}
            sent = vsink.stats.frames
            shown = t.get("shown", 0)
            d: dict[str, Any] = {
                "video_sent": sent,
                "video_shown": shown,
                "video_shown_pct": round(100 * shown / sent, 2) if sent else None,
                "video_stamps_missing": t.get("stamps_missing", 0),
                "video_out_of_order": t.get("out_of_order", 0),
                "glass_to_glass_ms_p50": t.get("latency_ms_p50"),
                "glass_to_glass_ms_p99": t.get("latency_ms_p99"),
                "video_freeze_ms": t.get("freeze_ms", 0.0),
                "decrypt_failures": peer.receiver.receiver.stats.decrypt_failures,
                "epoch": sender.epoch,
            }
            if opts.impairment is not None and opts.impairment.blackout_ms and tile is not None:
                end_ns = t_start_ns + int(
                    (opts.impairment.blackout_at_s + opts.impairment.blackout_ms / 1000) * 1e9
                )
                after = [shown_ns for cap, shown_ns in tile.shown_at if cap >= end_ns]
                d["video_recovery_ms"] = round((min(after) - end_ns) / 1e6, 1) if after else None
            asink = sender.audio_sinks.get(receiver_name)
            speaker = peer.speakers.get(sender.name)
            if asink is not None and speaker is not None:
                rep = speaker.report.as_dict()
                playout = peer.receiver.playouts.get(sender.name)
                a_sent = asink.stats.frames
                gaps = sender.audio.stats.capture_gaps if sender.audio is not None else 0
                expected = a_sent + gaps
                played = rep["frames_played"] - rep["frames_concealed"]
                d.update(
                    {
                        "audio_sent": a_sent,
                        "audio_played": played,
                        "audio_concealed": rep["frames_concealed"],
                        # over the frames sent plus those the sender's microphone never delivered
                        # (a receiver conceals those gaps too: it cannot tell them from losses)
                        "audio_played_or_concealed_pct": round(100 * rep["frames_played"] / expected, 2)
                        if expected
                        else None,
                        "audio_late_dropped": playout.stats.late_dropped if playout else 0,
                        "audio_capture_gaps": gaps,
                        "audio_stamps_read": rep["stamps_read"],
                        "audio_stamps_unreadable": rep["stamps_unreadable"],
                        "mouth_to_ear_ms_p50": rep["latency_ms_p50"],
                        "mouth_to_ear_ms_p99": rep["latency_ms_p99"],
                    }
                )
                if opts.impairment is not None and opts.impairment.blackout_ms:
                    end_ns = t_start_ns + int(
                        (opts.impairment.blackout_at_s + opts.impairment.blackout_ms / 1000) * 1e9
                    )
                    after_a = [p for c, p in peer.audio_played.get(sender.name, []) if c >= end_ns]
                    d["audio_recovery_ms"] = round((min(after_a) - end_ns) / 1e6, 1) if after_a else None
                skew95, skew50 = _skew_p95(
                    tile.shown_at if tile else [], peer.audio_played.get(sender.name, [])
                )
                d["av_skew_ms_p95"] = skew95
                d["av_skew_ms_median"] = skew50
            out[f"{sender.name}_to_{receiver_name}"] = d
    out["rooms"] = len(rooms)
    out["transport"] = "lab-rtp-udp" + ("+impairing-relay" if relays else "")
    if relays:
        out["relay"] = {
            "loss_pct": opts.impairment.loss_pct if opts.impairment else 0,
            "jitter_ms": opts.impairment.jitter_ms if opts.impairment else 0,
            "blackout_ms": opts.impairment.blackout_ms if opts.impairment else 0,
            **{
                k: sum(r.stats.as_dict()[k] for r in relays)
                for k in ("received", "forwarded", "lost", "blacked_out", "overflow")
            },
        }
    out["policy_version"] = _POLICY_VERSION
    return out


def run_meeting(opts: DemoOptions, *, live: bool = False) -> dict[str, Any]:
    """Run the meeting for ``opts.seconds`` (None: until Ctrl-C) and return the per-direction figures."""
    if opts.rooms < 2:
        raise ValueError("a meeting needs at least two rooms")
    rooms, relays = _wire(opts)
    suite = DEFAULT_POLICY.e2ee.suites[0]
    stop = threading.Event()
    threads = []
    for r in rooms:
        assert r.receiver is not None
        threads.append(
            threading.Thread(
                target=r.receiver.serve, args=(r.sock, stop), name=f"demo.{r.name}.receive", daemon=True
            )
        )
    for t in threads:
        t.start()
    t_start_ns = time.time_ns()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_main(rooms, opts.seconds, opts.rotate_s, suite, live=live))
    finally:
        stop.set()
        for t in threads:
            t.join(2.0)
        for relay in relays:
            relay.stop()
        for r in rooms:
            if r.receiver is not None:
                r.receiver.close()
        for r in rooms:
            r.sock.close()
            for sink in [*r.video_sinks.values(), *r.audio_sinks.values()]:
                sink.close()
    return _summary(rooms, opts, relays, t_start_ns)


def run_demo(
    *,
    seconds: float | None,
    width: int,
    height: int,
    fps: int,
    rotate_s: float,
    json_out: bool,
    rooms: int = 2,
    audio: bool = True,
    impairment: Impairment | None = None,
    lip_sync: bool = True,
    sdl_driver: str | None = None,
) -> int:
    opts = DemoOptions(
        lip_sync=lip_sync,
        sdl_driver=sdl_driver,
        rooms=rooms,
        seconds=seconds,
        width=width,
        height=height,
        fps=fps,
        rotate_s=rotate_s,
        audio=audio,
        impairment=impairment,
    )
    summary = run_meeting(opts, live=not json_out)
    if not json_out:
        print(file=sys.stderr)
    if json_out:
        print(json.dumps(summary))
        return 0
    for direction, r in summary.items():
        if not isinstance(r, dict) or "video_sent" not in r:
            continue
        line = (
            f"{direction}: video sent {r['video_sent']} shown {r['video_shown']} "
            f"g2g p50/p99 {r['glass_to_glass_ms_p50']}/{r['glass_to_glass_ms_p99']} ms "
            f"freeze {r['video_freeze_ms']} ms"
        )
        if "audio_sent" in r:
            line += (
                f"; audio sent {r['audio_sent']} played {r['audio_played']} concealed {r['audio_concealed']} "
                f"m2e p50/p99 {r['mouth_to_ear_ms_p50']}/{r['mouth_to_ear_ms_p99']} ms; "
                f"A/V skew p95 {r['av_skew_ms_p95']} ms"
            )
        line += f"; decrypt failures {r['decrypt_failures']}, key epoch {r['epoch']}"
        print(line)
    return 0
