"""``roomagent webrtc join``: meet in a Janus VideoRoom with the sim camera and SFrame keys.

Keys come from a join-keys file (the same shape a guest's join link carries; see
:mod:`agent.webrtc.joinkeys`). The sender CTR is kept in a counter store beside it, so a second run
with the same file never reuses a (key, KID, CTR) (RFC 9605 §9.1).
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any


def _load_keys(path: Path) -> Any:
    from agent.webrtc.joinkeys import JoinKeys

    return JoinKeys.from_json(json.loads(path.read_bytes()[:65536]))


async def _join(args: argparse.Namespace) -> dict[str, Any]:
    from agent.e2ee.context import ReceiverContext, SenderContext
    from agent.e2ee.counter import CounterStore
    from agent.media.key_source import ContextOpener, KeySource
    from agent.webrtc.codecs import SFrameBinding, bind
    from agent.webrtc.joinkeys import SfuPlace
    from agent.webrtc.participant import CameraTrack, LowLayerTrack, Participant, ToneTrack
    from hal.sim.camera import SimInventory
    from hal.types import CameraSpec

    keys = _load_keys(Path(args.keys_file))
    source = KeySource()
    receiver = ReceiverContext()
    for peer in keys.recv:
        receiver.add_key(peer.kid, peer.key, keys.suite, epoch=1)
    if keys.send is not None:
        store = CounterStore(Path(args.keys_file).with_suffix(".ctr.json"))
        sender = SenderContext(keys.suite, keys.send.key, keys.send.kid, counter_store=store)
        source.set_sender(_Sealer(sender), 1, origin="meeting")
    binding = bind(SFrameBinding(source, ContextOpener(receiver)))
    place = SfuPlace(args.sfu_url, args.sfu_room, args.token)
    spec = CameraSpec(id="cam0", width=args.width, height=args.height, fps=args.fps, pattern="room")
    inventory = SimInventory([spec])
    async with inventory.open_camera("cam0") as camera:
        video = CameraTrack(camera.frames()) if not args.no_video else None
        audio = ToneTrack() if not args.no_audio else None
        low = LowLayerTrack(video) if video is not None and args.layers == 2 else None
        participant = Participant(place, args.name, video, audio, video_low=low, layer=args.take)
        start = time.monotonic()
        task = asyncio.create_task(participant.run(), name="webrtc_participant")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), args.seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return {
        "name": args.name,
        "seconds": round(time.monotonic() - start, 2),
        "publisher_id": participant.publisher_id,
        "sent": {
            "video_frames": 0 if video is None else video.sent,
            "audio_frames": 0 if audio is None else audio.sent,
            "camera_gaps": [] if video is None else [list(g) for g in video.gaps],
        },
        "sframe": binding.snapshot(),
        "received": {str(k): v.as_dict() for k, v in participant.received.items()},
    }


class _Sealer:
    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    @property
    def kid(self) -> int:
        return int(self._ctx.kid)

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        out: bytes = self._ctx.encrypt(metadata, plaintext)
        return out


def _run_join(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging
    from agent.webrtc.errors import WebRtcError

    configure_logging(level="info", stream=sys.stderr)

    try:
        report = asyncio.run(_join(args))
    except (WebRtcError, OSError, ValueError) as exc:
        print(f"roomagent webrtc join: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"{report['name']}: sent {report['sent']}, received {len(report['received'])} publisher(s)")
        for info in report["received"].values():
            print(f"  {info['display']}: video {info['video_frames']} audio {info['audio_frames']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("webrtc", help="meet over WebRTC through a Janus SFU (SFrame end to end)")
    wsub = p.add_subparsers(dest="webrtc_command", required=True, metavar="ACTION")
    j = wsub.add_parser("join", help="publish the sim camera + audio and subscribe to the others")
    j.add_argument("--sfu-url", required=True, help="Janus HTTP API URL, e.g. http://10.0.0.1:8088/janus")
    j.add_argument("--sfu-room", required=True, type=int, help="VideoRoom id")
    j.add_argument("--token", default="", help="join token (the VideoRoom pin)")
    j.add_argument("--keys-file", required=True, help="join keys JSON (see docs/webrtc.md)")
    j.add_argument("--name", default="room", help="display name")
    j.add_argument("--seconds", type=float, default=20.0, help="how long to stay (default 20)")
    j.add_argument("--width", type=int, default=640, help="camera picture width (default 640)")
    j.add_argument("--height", type=int, default=360, help="camera picture height (default 360)")
    j.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    j.add_argument("--layers", type=int, choices=(1, 2), default=2, help="video layers sent (2: + half size)")
    j.add_argument("--take", choices=("high", "low", "all"), default="high", help="layer taken from others")
    j.add_argument("--no-video", action="store_true", help="send no video (audio only)")
    j.add_argument("--no-audio", action="store_true", help="send no audio (video only)")
    j.add_argument("--json", action="store_true", help="print the report as JSON")
    j.set_defaults(func=_run_join)
