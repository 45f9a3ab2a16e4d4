"""``roomagent hal ...``: the hardware testers' tools.

Devices come from the agent config (``--config PATH``; without it the built-in default, one sim
camera ``cam0``). This module is CLI glue: it alone in ``hal`` reads the agent config; the backends
never import ``agent``.
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from hal.errors import HalError


def register(sub: Any) -> None:
    """Add the ``hal`` command and its sub-commands to ``roomagent``'s sub-parsers."""
    hal = sub.add_parser(
        "hal", help="hardware testers' tools: list, snapshot, record, stamps, scenario, control"
    )
    hal.add_argument("--config", type=Path, default=None, help="agent config (default: built-in, sim cam0)")
    hal.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log lines (JSON, on stderr) from this level up (default: warning)",
    )
    cmds = hal.add_subparsers(dest="hal_command", required=True, metavar="HAL_COMMAND")

    p = cmds.add_parser("list", help="cameras and encoders with their capabilities")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_run(_list))

    p = cmds.add_parser("snapshot", help="save one frame of DEVICE as a PNG")
    p.add_argument("device", help="camera id (see `roomagent hal list`), e.g. cam0")
    p.add_argument("out", type=Path, help="PNG file to write")
    p.set_defaults(func=_run(_snapshot))

    p = cmds.add_parser(
        "record", help="record DEVICE through the HAL encoder into a file (.mkv, .mp4, .webm)"
    )
    p.add_argument("device", help="camera id (see `roomagent hal list`), e.g. cam0")
    p.add_argument("--seconds", type=float, required=True, help="how long to record")
    p.add_argument(
        "--codec", default="h264", help="family (h264, h265, vp8, vp9, av1) or FFmpeg encoder name"
    )
    p.add_argument("out", type=Path, help="file to write: .mkv (any codec), .mp4, .webm (VP8/VP9/AV1)")
    p.set_defaults(func=_run(_record))

    p = cmds.add_parser("stamps", help="read the frame stamps back from a recorded or received file")
    p.add_argument("file", type=Path, help="a video file (e.g. from `hal record`)")
    p.add_argument("--json", action="store_true", help="print one JSON object of figures")
    p.set_defaults(func=_run(_stamps))

    p = cmds.add_parser("scenario", help="run a scripted fault scenario against the sim devices")
    p.add_argument("file", type=Path, help="scenario TOML (format: docs/hal.md, 'Scenario files')")
    p.add_argument("--json", action="store_true", help="print the observations and verdict as JSON")
    p.set_defaults(func=_run(_scenario))

    p = cmds.add_parser("control", help="read a camera control, or set it and read it back")
    p.add_argument("device", help="camera id (see `roomagent hal list`), e.g. cam0")
    p.add_argument("name", help="pan_absolute, tilt_absolute, zoom_absolute, privacy, or any V4L2 control")
    p.add_argument("value", type=int, nargs="?", help="set the control to this integer first")
    p.set_defaults(func=_run(_control))


def _run(handler: Any) -> Any:
    def call(args: argparse.Namespace) -> int:
        from agent.logs import configure_logging
        from hal.codecs import quiet_codec_libraries

        # Logs go to stderr: stdout carries the tool's output (JSON with --json).
        configure_logging(level=args.log_level, stream=sys.stderr)
        quiet_codec_libraries()
        try:
            return int(handler(args))
        except HalError as exc:
            print(f"roomagent hal: {exc}", file=sys.stderr)
            return 1

    return call


# --- config glue ----------------------------------------------------------------------------------


def _setup(args: argparse.Namespace) -> tuple[Any, list[Any], Path]:
    """(agent config, hal CameraSpecs, presets dir) from ``--config``."""
    from agent.config import load_config
    from agent.errors import ConfigError
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.report_lines()), file=sys.stderr)
        raise SystemExit(2) from exc
    specs = config.hal.camera_specs()
    presets = config.presets_dir()
    return config, specs, presets


def _inventory(args: argparse.Namespace) -> tuple[Any, Any]:
    from hal import open_inventory

    config, specs, presets = _setup(args)
    backend = config.hal.backend
    if backend == "v4l2":
        specs = [s for s in specs if s.backend == "v4l2"]
    elif backend == "sim":
        specs = [s for s in specs if s.backend == "sim"]
    return config, open_inventory(specs, backend=backend, presets_dir=presets)


def _open_camera(inventory: Any, device: str) -> Any:
    """Open ``device``, or say which cameras this config has."""
    from hal.errors import UnsupportedError

    ids = [d.id for d in inventory.list_devices() if d.kind == "camera"]
    if device not in ids:
        raise UnsupportedError(
            f"no camera {device!r} in this config; it has: {', '.join(ids) or 'none'}"
            " (`roomagent hal list`; other cameras: [[hal.cameras]] in --config)",
            device=device,
        )
    return inventory.open_camera(device)


# --- commands -------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hal import encoder_factory

    _, inventory = _inventory(args)
    devices: list[dict[str, Any]] = []
    for info in inventory.list_devices():
        entry = asdict(info)
        if entry.get("capabilities") is None and info.backend == "v4l2":
            try:
                entry["capabilities"] = asdict(inventory.open_camera(info.id).capabilities())
            except HalError as exc:
                entry["capabilities"] = None
                entry["error"] = str(exc)
        devices.append(entry)
    for caps in encoder_factory().probe():
        devices.append(
            {
                "id": caps.name,
                "kind": "encoder",
                "backend": "pyav",
                "name": caps.name,
                "capabilities": asdict(caps),
            }
        )
    if args.json:
        print(json.dumps(devices, indent=2, default=str))
    else:
        for d in devices:
            shown: dict[str, Any] = d.get("capabilities") or {}
            if d["kind"] == "camera":
                modes = ", ".join(
                    f"{m['width']}x{m['height']}@{m['fps']:g} {m['pixel_format']}"
                    for m in shown.get("modes", [])
                )
                controls = ", ".join(c["name"] for c in shown.get("controls", [])) or "-"
                print(f"{d['id']:<12} camera  {d['backend']:<5} {d['name']}  [{modes}]  controls: {controls}")
            else:
                hw = "hardware" if shown.get("hardware") else "software"
                print(f"{d['id']:<12} encoder pyav  {shown.get('codec')} ({hw})")
    return 0


async def _first_frame(camera: Any) -> Any:
    async with camera:
        async for frame in camera.frames():
            return frame
    raise HalError("camera produced no frame")


def _snapshot(args: argparse.Namespace) -> int:
    from hal.images import save_png

    _, inventory = _inventory(args)
    frame = asyncio.run(_first_frame(_open_camera(inventory, args.device)))
    save_png(frame.image, args.out)
    print(f"{args.out}: {frame.width}x{frame.height} frame {frame.seq} of {args.device}")
    return 0


_STREAM_CODEC = {"h264": "h264", "h265": "hevc", "vp8": "vp8", "vp9": "vp9", "av1": "av1"}


def _record(args: argparse.Namespace) -> int:
    from hal import encoder_factory
    from hal.codecs import KNOWN_ENCODERS, family_of

    config, inventory = _inventory(args)
    family = family_of(args.codec)
    if args.codec in KNOWN_ENCODERS:
        preference = [args.codec]
    else:
        preference = [n for n in config.hal.encoder.codecs if KNOWN_ENCODERS.get(n, ("",))[0] == family]
    if args.seconds <= 0:
        print("roomagent hal: --seconds must be > 0", file=sys.stderr)
        return 2
    camera = _open_camera(inventory, args.device)
    stats = asyncio.run(_record_async(camera, encoder_factory(), config, family, preference, args))
    print(f"{args.out}: {stats['frames']} frames, {stats['bytes']} bytes, {stats['encoder']}")
    print(_drop_report(stats))
    return 0


def _drop_report(stats: dict[str, Any]) -> str:
    """What the camera captured against what was written, and why the difference."""
    captured, written, seconds = stats["captured"], stats["frames"], stats["elapsed_s"]
    dropped = captured - written
    if dropped <= 0:
        return f"captured {captured} frames in {seconds:.1f} s, none dropped"
    encode_fps = written / seconds if seconds > 0 else 0.0
    return (
        f"captured {captured} frames in {seconds:.1f} s, dropped {dropped} "
        f"({dropped * 100 // captured}%): {stats['encoder']} encoded {encode_fps:.1f} fps, slower than the "
        f"camera's {stats['fps']} fps, and a camera does not wait for a slow consumer "
        f"(pick a faster --codec or a smaller mode in --config)"
    )


async def _record_async(
    camera: Any, factory: Any, config: Any, family: str, preference: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    from fractions import Fraction

    import av
    import av.error

    from hal.codecs import CLOCK
    from hal.errors import DeviceIOError
    from hal.types import EncoderConfig

    frames = size = 0
    first_seq: int | None = None
    last_seq = 0
    async with camera:
        mode = camera.capabilities().modes[0]
        enc_config = EncoderConfig(
            codec=family,
            width=mode.width,
            height=mode.height,
            fps=round(mode.fps),
            bitrate_kbps=config.hal.encoder.bitrate_kbps,
            keyframe_interval=config.hal.encoder.keyframe_interval,
            low_latency=config.hal.encoder.low_latency,
        )
        encoder = factory.open(enc_config, preference)
        try:
            container = av.open(str(args.out), mode="w")
        except (av.error.FFmpegError, OSError) as exc:
            raise DeviceIOError(f"cannot write {args.out}: {exc}") from exc
        with container:
            stream: Any = container.add_stream(_STREAM_CODEC[encoder.capabilities.codec], rate=enc_config.fps)
            stream.width, stream.height, stream.pix_fmt = enc_config.width, enc_config.height, "yuv420p"
            stream.time_base = Fraction(1, CLOCK)

            def mux(packets: list[Any]) -> None:
                nonlocal size
                for p in packets:
                    packet = av.Packet(p.data)
                    packet.pts = packet.dts = p.pts
                    packet.time_base = Fraction(1, CLOCK)
                    packet.stream = stream
                    packet.is_keyframe = p.keyframe
                    container.mux(packet)
                    size += len(p.data)

            loop = asyncio.get_running_loop()
            started = loop.time()
            deadline = started + args.seconds
            async for frame in camera.frames():
                # Sequence numbers count every frame the sensor captured, so gaps are frames dropped
                # while we were still encoding the previous one.
                first_seq = frame.seq if first_seq is None else first_seq
                last_seq = frame.seq
                mux(await asyncio.to_thread(encoder.encode, frame))
                frames += 1
                if loop.time() >= deadline:
                    break
            elapsed = loop.time() - started
            mux(encoder.flush())
        encoder.close()
    captured = 0 if first_seq is None else last_seq - first_seq + 1
    return {
        "frames": frames,
        "captured": captured,
        "elapsed_s": elapsed,
        "fps": enc_config.fps,
        "bytes": size,
        "encoder": encoder.capabilities.name,
    }


def _stamps(args: argparse.Namespace) -> int:
    import av.error

    from hal.errors import DeviceIOError
    from hal.stamps_report import read_file_stamps

    try:
        report = read_file_stamps(args.file)
    except (av.error.FFmpegError, OSError) as exc:
        raise DeviceIOError(f"cannot read {args.file}: {exc}") from exc
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for key, value in report.as_dict().items():
            print(f"{key}: {'-' if value is None else value}")
    return 0 if report.stamped else 1


def _scenario(args: argparse.Namespace) -> int:
    from hal.scenario import load_scenario, run_scenario

    _, specs, _ = _setup(args)
    scenario = load_scenario(args.file, [s for s in specs if s.backend == "sim"])
    result = asyncio.run(run_scenario(scenario))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        for o in result.observations:
            print(f"{o.t_s:7.3f}s  {o.event:<16} {o.detail}")
        if result.report is not None:
            r = result.report
            print(
                f"frames {r.frames}, stamped {r.stamped}, unreadable {r.unreadable}, missing {r.missing}, "
                f"out of order {r.out_of_order}, restarts {r.restarts}, "
                f"latency mean {r.latency_ms_mean} ms max {r.latency_ms_max} ms"
            )
        print(result.verdict)
    return 0 if result.recovered else 1


_SIM_PTZ = {"pan_absolute": "pan", "tilt_absolute": "tilt", "zoom_absolute": "zoom"}


def _control(args: argparse.Namespace) -> int:
    from hal.errors import UnsupportedError
    from hal.v4l2 import V4l2Camera

    _, inventory = _inventory(args)
    camera = _open_camera(inventory, args.device)
    if isinstance(camera, V4l2Camera):
        if args.value is not None:
            camera.controls.set(args.name, args.value)
        print(f"{args.name}={camera.controls.get(args.name)}")
        return 0

    async def sim() -> int:
        if args.name == "privacy":
            if args.value is not None:
                await camera.set_shutter(bool(args.value))
            return int(camera.shutter_closed)
        axis = _SIM_PTZ.get(args.name)
        if axis is None:
            raise UnsupportedError(f"no control {args.name!r}", device=args.device)
        if args.value is not None:
            await camera.set_ptz(**{axis: args.value})
        return int(getattr(await camera.get_ptz(), axis))

    print(f"{args.name}={asyncio.run(sim())}")
    return 0
