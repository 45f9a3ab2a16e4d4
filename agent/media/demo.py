"""``roomagent demo``: two simulated rooms exchanging E2EE video over loopback, with a live status line.

Room A's camera → A's pipeline (SFrame with A's sender key) → RTP/UDP → B's receiver (which holds A's
key), and the same from B to A. Each room rotates its sender key every ``rotate_s`` seconds (a new
epoch and KID: the peer gets the new key first, then the sender switches and sends a keyframe), as a
meeting's key packages would. The policy is the first-boot default (E2EE required, suite 4).
"""

from __future__ import annotations

__all__ = ["run_demo"]

import asyncio
import contextlib
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent.e2ee.context import ReceiverContext, SenderContext
from agent.media.key_source import ContextOpener, KeySource
from agent.media.pipeline import MediaPipeline, StreamSettings
from agent.media.receiver import MediaReceiver, bind_udp
from agent.media.sink import RtpSink
from agent.schema.policy import DEFAULT_POLICY
from agent.service import Progress
from hal.types import CameraSpec

_POLICY_VERSION = 0  # the first-boot default policy (no signed policy applied)


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
    receiver: MediaReceiver
    sock: Any
    pipeline: MediaPipeline | None = None
    epoch: int = 0
    kid_base: int = field(default_factory=lambda: secrets.randbits(16) << 16)


def _rotate(sender: _Room, peer: _Room, suite: int) -> None:
    """A new epoch: the peer learns the key first, then the sender switches (and sends a keyframe)."""
    sender.epoch += 1
    base_key = secrets.token_bytes(32)
    kid = sender.kid_base + sender.epoch
    peer.receive_ctx.add_key(kid, base_key, suite, epoch=sender.epoch)
    sender.keys.set_sender(_Sealer(SenderContext(suite, base_key, kid)), sender.epoch, origin="meeting")


def _status(rooms: list[_Room], last: dict[str, tuple[float, int]]) -> str:
    """One line: per direction the fps of the last interval, encrypted frames sent, key epoch, ..."""
    parts = []
    now = time.monotonic()
    for room, peer in ((rooms[0], rooms[1]), (rooms[1], rooms[0])):
        assert room.pipeline is not None
        r = peer.receiver.report()
        then, decoded = last.get(room.name, (now, r["frames_decoded"]))
        fps = (r["frames_decoded"] - decoded) / (now - then) if now > then else 0.0
        last[room.name] = (now, r["frames_decoded"])
        parts.append(
            f"{room.name}→{peer.name} {fps:5.1f} fps  enc {room.pipeline.stats.sent:6d}  "
            f"epoch {room.epoch}  stamps ok {r['stamps_read']}  lost {r['packets_lost']}"
        )
    e2ee = "on" if DEFAULT_POLICY.e2ee.required else "off"
    return " | ".join(parts) + f" | policy v{_POLICY_VERSION} e2ee={e2ee}"


async def _main(rooms: list[_Room], seconds: float | None, rotate_s: float, suite: int, live: bool) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(room.pipeline.run(Progress("demo")), name=f"demo.{room.name}.pipeline")
            for room in rooms
            if room.pipeline is not None
        ]
        next_rotation = time.monotonic() + rotate_s
        last: dict[str, tuple[float, int]] = {}
        try:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if time.monotonic() >= next_rotation:
                    next_rotation += rotate_s
                    _rotate(rooms[0], rooms[1], suite)
                    _rotate(rooms[1], rooms[0], suite)
                if live:
                    print("\r" + _status(rooms, last), end="", file=sys.stderr, flush=True)
        finally:
            for task in tasks:  # the demo ends: stop the pipelines (they clean up in finally)
                task.cancel()


def run_demo(
    *, seconds: float | None, width: int, height: int, fps: int, rotate_s: float, json_out: bool
) -> int:
    from hal.codecs import PyAvEncoderFactory
    from hal.sim import SimInventory

    suite = DEFAULT_POLICY.e2ee.suites[0]
    rooms = []
    for name in ("A", "B"):
        sock = bind_udp("127.0.0.1", 0)
        ctx = ReceiverContext()
        rooms.append(_Room(name, KeySource(), ctx, MediaReceiver(ContextOpener(ctx)), sock))
    settings = StreamSettings(width=width, height=height, fps=fps, bitrate_kbps=1500, codecs=("libx264",))
    for room, peer in ((rooms[0], rooms[1]), (rooms[1], rooms[0])):
        inventory = SimInventory([CameraSpec(id=f"cam-{room.name}", width=width, height=height, fps=fps)])
        sink = RtpSink("127.0.0.1", peer.sock.getsockname()[1])
        room.pipeline = MediaPipeline(
            camera_id=f"cam-{room.name}",
            inventory=inventory,
            encoders=PyAvEncoderFactory(),
            keys=room.keys,
            sink=sink,
            settings=settings,
            e2ee_required=DEFAULT_POLICY.e2ee.required,
        )
        _rotate(room, peer, suite)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=r.receiver.serve, args=(r.sock, stop), name=f"demo.{r.name}.receive", daemon=True
        )
        for r in rooms
    ]
    for t in threads:
        t.start()
    live = not json_out
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_main(rooms, seconds, rotate_s, suite, live))
    finally:
        stop.set()
        for t in threads:
            t.join(2.0)
        for r in rooms:
            r.sock.close()
    if live:
        print(file=sys.stderr)
    summary: dict[str, Any] = {
        f"{room.name}_to_{peer.name}": {
            "sent": room.pipeline.stats.sent if room.pipeline else 0,
            "epoch": room.epoch,
            **peer.receiver.report(),
        }
        for room, peer in ((rooms[0], rooms[1]), (rooms[1], rooms[0]))
    }
    summary["policy_version"] = _POLICY_VERSION
    if json_out:
        print(json.dumps(summary))
    else:
        for direction in ("A_to_B", "B_to_A"):
            r = summary[direction]
            print(
                f"{direction}: sent {r['sent']} decoded {r['frames_decoded']} fps {r['fps']} "
                f"stamps out of order {r['stamps_out_of_order']} decrypt failures {r['decrypt_failures']} "
                f"latency p50/p99 {r['latency_ms_p50']}/{r['latency_ms_p99']} ms, key epoch {r['epoch']}"
            )
    return 0
