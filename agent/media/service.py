"""Media services for ``roomagent run``: one :class:`MediaPipeline` per configured camera.

``agent.daemon.main`` calls :func:`services` with the runtime. Other sub-systems reach the media
path through :func:`media_of` (e.g. the privacy engineer's key target sets the sender on
``media_of(runtime).keys``, the control plane calls ``apply``/``healthy`` on the pipelines).

Local config only: ``[media] sink``, ``[media] mtu``, ``[e2ee] lab_key_file``. A lab key is logged
loudly (warning ``media_lab_key_in_use``, never key bytes) and shown in the state (``media.key``).
"""

from __future__ import annotations

__all__ = ["Media", "build_media", "media_of", "services"]

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from agent.config import AgentConfig
from agent.media.keys import KeySource, load_lab_key
from agent.media.pipeline import MediaPipeline, Progress, StreamSettings
from agent.media.sink import open_sink
from hal.protocols import EncoderFactory, Inventory

_log = structlog.get_logger()
_BY_RUNTIME: weakref.WeakKeyDictionary[Any, Media] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class Media:
    """The media path of one agent: the shared key source and the pipelines."""

    keys: KeySource
    pipelines: list[MediaPipeline] = field(default_factory=list)
    inventory: Inventory | None = None

    def describe(self) -> dict[str, Any]:
        return {"key": self.keys.describe(), "pipelines": [p.describe() for p in self.pipelines]}

    def request_keyframe(self) -> None:
        for p in self.pipelines:
            p.request_keyframe()

    def set_e2ee_required(self, required: bool) -> None:
        for p in self.pipelines:
            p.set_e2ee_required(required)


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
    from hal.types import CameraSpec

    specs = [
        CameraSpec(
            id=c.id,
            backend=c.backend,
            device=c.device,
            width=c.width,
            height=c.height,
            fps=c.fps,
            pattern=c.pattern,
            pixel_format=c.pixel_format,
        )
        for c in config.hal.cameras
    ]
    if inventory is None:
        inventory = hal.open_inventory(specs, backend=config.hal.backend, presets_dir=config.hal.presets_dir)
    if encoders is None:
        encoders = hal.encoder_factory()
    media.inventory = inventory
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


class _ReportingPipeline:
    """A pipeline as a daemon service that also publishes its description in the state."""

    def __init__(self, pipeline: MediaPipeline, media: Media, runtime: Any) -> None:
        self.name = pipeline.name
        self._pipeline = pipeline
        self._media = media
        self._runtime = runtime

    async def run(self, progress: Progress) -> None:
        self._runtime.update_state(media=self._media.describe())
        try:
            await self._pipeline.run(progress)
        finally:
            self._runtime.update_state(media=self._media.describe())


def services(runtime: Any) -> list[Any]:
    """The media services of ``runtime`` (the provider ``agent.daemon.main`` calls)."""
    media = build_media(runtime.config)
    _BY_RUNTIME[runtime] = media
    runtime.update_state(media=media.describe())
    return [_ReportingPipeline(p, media, runtime) for p in media.pipelines]


def media_of(runtime: Any) -> Media | None:
    """The media path built for ``runtime`` by :func:`services`, if any."""
    return _BY_RUNTIME.get(runtime)
