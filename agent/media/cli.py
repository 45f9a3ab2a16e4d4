"""Sub-commands ``receive``, ``demo``, ``relay`` and ``lab-key`` (registered in ``agent.cli``).

Top-level imports stay light: PyAV and the HAL load only when a command runs.
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _receive(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.errors import AgentError
    from agent.logs import configure_logging
    from agent.media.key_source import LabReceiver, load_lab_key
    from agent.media.receiver import MediaReceiver, bind_udp

    configure_logging(level="warning", stream=sys.stderr)
    key_file = args.key_file
    try:
        if key_file is None and args.config is not None:
            key_file = load_config(Path(args.config)).e2ee.lab_key_file
        if key_file is None:
            print(
                "receive: no --key-file (or [e2ee] lab_key_file): every frame will fail to decrypt",
                file=sys.stderr,
            )
            lab = None
        else:
            lab = load_lab_key(Path(key_file))
    except AgentError as exc:
        print(f"receive: {exc} (make one with `roomagent lab-key PATH`; the sender needs the same file)",
              file=sys.stderr)
        return 2
    opener: Any = LabReceiver(lab) if lab is not None else _NoKey()
    receiver = MediaReceiver(
        opener, snapshot_dir=None if args.snapshot_dir is None else Path(args.snapshot_dir)
    )
    if args.file is not None:
        return _receive_file(receiver, Path(args.file), args.json)
    host, port = args.listen
    try:
        sock = bind_udp(host, port)
    except OSError as exc:
        print(
            f"receive: cannot listen on {host}:{port}: {exc.strerror or exc}"
            " (another receiver on that port? pick a free one and point the sender's [media] sink at it)",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    thread = threading.Thread(target=receiver.serve, args=(sock, stop), name="receive", daemon=True)
    thread.start()
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.1 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
            if not args.json and sys.stderr.isatty():
                r = receiver.report()
                print(
                    f"\rframes {r['frames_decoded']}  fps {r['fps']:.1f}  lost {r['packets_lost']}  "
                    f"decrypt failures {r['decrypt_failures']}  latency p50 {r['latency_ms_p50']} ms   ",
                    end="",
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        thread.join(2.0)
        sock.close()
    _print_report(receiver.report(), args.json)
    return 0


def _receive_file(receiver: Any, path: Path, as_json: bool) -> int:
    """Read back a file sink's records: the same verification as over the network."""
    from agent.media.errors import RecordFileError
    from agent.media.sink import read_records

    status = 0
    try:
        for record in read_records(path):
            receiver.handle_record(record)
    except RecordFileError as exc:
        print(f"receive: {exc}", file=sys.stderr)
        status = 1  # the complete records before the damage were verified and are reported
    _print_report(receiver.report(), as_json)
    return status


def drop_summary(report: dict[str, Any]) -> str:
    """One line saying how many frames were not shown and why (the figures come from the report)."""
    causes = []
    if report["stamps_skipped"]:
        causes.append(
            f"{report['stamps_skipped']} captured frames never arrived (dropped by the sender or lost on"
            f" the way: {report['packets_lost']} packets lost,"
            f" {report['frames_incomplete']} frames incomplete)"
        )
    elif report["packets_lost"] or report["frames_incomplete"]:
        causes.append(
            f"{report['packets_lost']} packets lost, {report['frames_incomplete']} frames incomplete"
        )
    if report["decrypt_failures"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(report["decrypt_failures_by_reason"].items()))
        causes.append(
            f"{report['decrypt_failures']} failed to decrypt ({reasons}; is --key-file the sender's key?)"
        )
    for key, text in (
        ("skipped_until_keyframe", "skipped until the next keyframe"),
        ("decode_errors", "did not decode"),
        ("malformed_frames", "were malformed"),
        ("unprotected_refused", "were not SFrame-protected and were refused"),
    ):
        if report[key]:
            causes.append(f"{report[key]} {text}")
    head = f"decoded {report['frames_decoded']} of {report['frames_received']} frames received"
    if report["frames_received"] == 0:
        return "received nothing: is the sender's [media] sink this --listen address, and is it running?"
    return head + (": " + "; ".join(causes) if causes else ", none dropped")


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        print(drop_summary(report), file=sys.stderr)  # stdout stays one JSON object
    else:
        print(file=sys.stderr)
        for key, value in report.items():
            print(f"{key}: {value}")
        print(drop_summary(report))


class _NoKey:
    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        from agent.e2ee.header import decode_header
        from agent.e2ee.sframe import UnknownKidError

        kid, _, _ = decode_header(ciphertext)
        raise UnknownKidError(kid)


def _lab_key(args: argparse.Namespace) -> int:
    from agent.media.errors import KeyFileError
    from agent.media.key_source import write_lab_key

    try:
        key = write_lab_key(Path(args.out), suite=args.suite)
    except KeyFileError as exc:
        print(f"lab-key: {exc}", file=sys.stderr)
        return 2
    print(f"wrote lab key {args.out} (suite {key.suite}, kid {key.kid}); lab use only, never in production")
    return 0


def _impairment(args: argparse.Namespace) -> Any:
    from agent.media.relay import Impairment

    return Impairment(
        loss_pct=args.loss,
        jitter_ms=args.jitter_ms,
        blackout_ms=args.blackout_ms,
        blackout_at_s=args.blackout_at_s,
        seed=args.seed,
    )


def _demo(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging
    from agent.media.demo import run_demo

    configure_logging(level="warning", stream=sys.stderr)
    impaired = args.loss or args.jitter_ms or args.blackout_ms
    try:
        impairment = _impairment(args) if impaired else None
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    if args.rooms < 2:
        print("demo: --rooms must be at least 2", file=sys.stderr)
        return 2
    return run_demo(
        seconds=args.seconds,
        width=args.width,
        height=args.height,
        fps=args.fps,
        rotate_s=args.rotate_s,
        json_out=args.json,
        rooms=args.rooms,
        audio=not args.no_audio,
        impairment=impairment,
        lip_sync=not args.no_lip_sync,
        sdl_driver=args.sdl,
    )


def _relay(args: argparse.Namespace) -> int:
    import json
    import threading

    from agent.logs import configure_logging
    from agent.media.relay import ImpairingRelay

    configure_logging(level="warning", stream=sys.stderr)
    try:
        relay = ImpairingRelay(args.to, _impairment(args), listen=args.listen).start()
    except (ValueError, OSError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    host, port = relay.address
    print(f"relay listening on {host}:{port} -> {args.to[0]}:{args.to[1]}", file=sys.stderr, flush=True)
    try:
        threading.Event().wait(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
    if args.json:
        print(json.dumps({"listen": [host, port], **relay.stats.as_dict()}))
    return 0


def _impairment_args(p: Any) -> None:
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="drop this % of datagrams")
    p.add_argument("--jitter-ms", type=float, default=0.0, metavar="MS", help="extra delay 0..MS each")
    p.add_argument("--blackout-ms", type=float, default=0.0, metavar="MS", help="drop everything for MS")
    p.add_argument("--blackout-at-s", type=float, default=5.0, metavar="S", help="blackout starts at S")
    p.add_argument("--seed", type=int, default=1, help="seed of the impairment (same seed, same drops)")


def register(sub: Any) -> None:
    p = sub.add_parser("receive", help="receive, decrypt, decode and verify an RTP/SFrame stream")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--listen", type=_host_port, metavar="HOST:PORT", help="receive RTP/UDP here")
    source.add_argument("--file", metavar="PATH", help="read back a file sink's record file instead")
    p.add_argument("--key-file", help="lab key file (JSON) shared with the sender")
    p.add_argument("--config", help="read [e2ee] lab_key_file from this agent config")
    p.add_argument("--seconds", type=float, help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print one JSON object of figures at the end")
    p.add_argument("--snapshot-dir", help="save a PNG of the newest picture about once a second")
    p.set_defaults(func=_receive)

    p = sub.add_parser(
        "lab-key", help="write a fresh lab SFrame key file (mode 0600) for runs without a meeting"
    )
    p.add_argument("out", help="key file to create (JSON); refuses to overwrite one")
    p.add_argument("--suite", type=int, default=4, choices=[1, 2, 3, 4, 5], help="RFC 9605 cipher suite")
    p.set_defaults(func=_lab_key)

    p = sub.add_parser(
        "demo", help="simulated rooms meeting each other: E2EE video and audio both ways, measured"
    )
    p.add_argument("--seconds", type=float, help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--rooms", type=int, default=2, help="number of rooms (each meets every other)")
    p.add_argument("--width", type=int, default=640, help="picture width of every room (default 640)")
    p.add_argument("--height", type=int, default=360, help="picture height of every room (default 360)")
    p.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    p.add_argument("--rotate-s", type=float, default=10.0, help="rotate each room's key every N seconds")
    p.add_argument("--no-audio", action="store_true", help="video only")
    p.add_argument("--no-lip-sync", action="store_true", help="show pictures as soon as they are decoded")
    p.add_argument(
        "--sdl",
        nargs="?",
        const="",
        metavar="DRIVER",
        help="show room A's screen through SDL2 (kmsdrm, x11, wayland, offscreen; default: SDL's choice)",
    )
    _impairment_args(p)
    p.add_argument("--json", action="store_true", help="print the final figures as JSON")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "relay", help="an impairing UDP relay (loss, jitter, blackout) between two UDP endpoints"
    )
    p.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="receive here (default: a free loopback port, printed at start)",
    )
    p.add_argument("--to", type=_host_port, required=True, metavar="HOST:PORT", help="forward to here")
    p.add_argument("--seconds", type=float, help="stop after N seconds (default: until Ctrl-C)")
    _impairment_args(p)
    p.add_argument("--json", action="store_true", help="print the relay's counters as JSON at the end")
    p.set_defaults(func=_relay)
