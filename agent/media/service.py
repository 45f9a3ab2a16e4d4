"""Media services for ``roomagent run``: one :class:`MediaPipeline` per configured camera.

The composition root (``agent.daemon.room``) builds the :class:`Media` of the room with
:func:`build_media` and hands it to whoever needs it: the pipelines run as services, the privacy guard
sets the sender on ``media.keys``, the room's apply target calls ``apply_config``/``healthy``.

Local config only: ``[media] sink``, ``[media] mtu``, ``[e2ee] lab_key_file``. A lab key is logged
loudly (warning ``media_lab_key_in_use``, never key bytes) and shown in the state (``media.key``).
"""

from __future__ import annotations

__all__ = ["Media", "build_media"]

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from agent.config import AgentConfig
from agent.media.errors import SinkError
from agent.media.key_source import KeySource, load_lab_key
from agent.media.pipeline import MediaPipeline, StreamSettings
from agent.media.sink import Sink, open_sink
from hal.protocols import EncoderFactory, Inventory

_log = structlog.get_logger()


@dataclass(slots=True)
class Media:
    """The media path of one agent: the shared key source and the pipelines."""

    keys: KeySource
    pipelines: list[MediaPipeline] = field(default_factory=list)
    inventory: Inventory | None = None
    encoders: EncoderFactory | None = None

    def describe(self) -> dict[str, Any]:
        return {"key": self.keys.describe(), "pipelines": [p.describe() for p in self.pipelines]}

    def request_keyframe(self) -> None:
        for p in self.pipelines:
            p.request_keyframe()

    def set_e2ee_required(self, required: bool) -> None:
        for p in self.pipelines:
            p.set_e2ee_required(required)

    def set_shutter_when_idle(self, enabled: bool) -> None:
        for p in self.pipelines:
            p.set_shutter_when_idle(enabled)

    def apply_config(self, body: Mapping[str, Any]) -> list[str]:
        """Apply a ``config`` document body (``cameras``, ``encoder``, ``media``) to the pipelines live.

        Every change is validated for every pipeline before any is applied, so a bad body changes
        nothing. ``cameras[].width/height/fps`` and ``encoder.bitrate_kbps/keyframe_interval/codecs``
        are live; ``media.sink`` reopens each pipeline's sink; ``media.mtu`` applies to the new sinks.
        Returns the names of the pipelines that changed; then await :meth:`healthy`.

        Raises:
            ValueError: an invalid value, a camera id that is not running, or an unopenable sink.
        """
        cameras = {c["id"]: c for c in body.get("cameras") or []}
        encoder = body.get("encoder") or {}
        media = body.get("media") or {}
        running = {p.camera_id for p in self.pipelines}
        unknown = set(cameras) - running
        if unknown:
            raise ValueError(f"cameras not running here: {', '.join(sorted(unknown))}")
        plans: list[tuple[MediaPipeline, dict[str, Any]]] = []
        for p in self.pipelines:
            change: dict[str, Any] = {}
            cam = cameras.get(p.camera_id, {})
            change.update({k: cam[k] for k in ("width", "height", "fps") if k in cam})
            change.update({k: encoder[k] for k in ("bitrate_kbps", "keyframe_interval") if k in encoder})
            if "codecs" in encoder:
                change["codecs"] = tuple(encoder["codecs"])
            p.check(change)  # raises before anything changed
            plans.append((p, change))
        sinks: list[Sink] = []
        if media.get("sink"):
            try:
                for p in self.pipelines:
                    url = _sink_url(media["sink"], p.camera_id, len(self.pipelines))
                    sinks.append(open_sink(url, mtu=int(media.get("mtu", 1200))))
            except SinkError as exc:
                for sink in sinks:
                    sink.close()
                raise ValueError(f"media.sink: {exc.reason}") from exc
        changed = []
        for i, (p, change) in enumerate(plans):
            if change and p.apply(change) is not None:
                changed.append(p.name)
            if sinks:
                p.set_sink(sinks[i])
                if p.name not in changed:
                    changed.append(p.name)
        return changed

    async def healthy(self, timeout_s: float) -> bool:
        """True when every pipeline sends sealed frames again within ``timeout_s`` (after an apply)."""
        results = await asyncio.gather(*(p.healthy(timeout_s) for p in self.pipelines))
        return all(results)


def _sink_url(url: str, camera_id: str, cameras: int) -> str:
    """One sink per camera: a file sink gets a per-camera suffix when there are several cameras."""
    parts = urlsplit(url)
    if parts.scheme == "file" and cameras > 1:
        path = Path(parts.path)
        return f"file://{path.with_name(f'{path.stem}-{camera_id}{path.suffix}')}"
    return url


def build_media(
    config: AgentConfig,
    *,
    inventory: Inventory | None = None,
    encoders: EncoderFactory | None = None,
    keys: KeySource | None = None,
    e2ee_required: bool = True,
) -> Media:
    """Build the media path from the local config (no pipelines without ``[media] sink``).

    Raises:
        KeyFileError: the lab key file is unusable.
        SinkError: the sink cannot be opened.
        HalError: the inventory cannot be opened.
    """
    keys = keys if keys is not None else KeySource()
    media = Media(keys=keys)
    if config.e2ee.lab_key_file is not None:
        keys.use_lab_key(load_lab_key(config.e2ee.lab_key_file), path=config.e2ee.lab_key_file)
    if not config.media.enabled or config.media.sink is None:
        _log.info(
            "media_off", reason="disabled" if not config.media.enabled else "no [media] sink configured"
        )
        return media
    import hal

    specs = config.hal.camera_specs()
    if inventory is None:
        inventory = hal.open_inventory(specs, backend=config.hal.backend, presets_dir=config.presets_dir())
    if encoders is None:
        encoders = hal.encoder_factory()
    media.inventory = inventory
    media.encoders = encoders
    enc = config.hal.encoder
    for spec in config.hal.cameras:
        sink = open_sink(
            _sink_url(config.media.sink, spec.id, len(config.hal.cameras)),
            mtu=config.media.mtu,
            e2ee_required=e2ee_required,
        )
        settings = StreamSettings(
            width=spec.width,
            height=spec.height,
            fps=spec.fps,
            bitrate_kbps=enc.bitrate_kbps,
            keyframe_interval=enc.keyframe_interval,
            codecs=tuple(enc.codecs),
            preset=enc.preset,
        )
        media.pipelines.append(
            MediaPipeline(
                camera_id=spec.id,
                inventory=inventory,
                encoders=encoders,
                keys=keys,
                sink=sink,
                settings=settings,
                e2ee_required=e2ee_required,
            )
        )
    return media
