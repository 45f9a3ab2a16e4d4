"""One media pipeline per active camera: capture → encode → SFrame → sink, as a supervised service.

Threads and queues (STYLE: blocking work in threads with bounded drop-oldest queues):

- the event loop captures (``camera.frames()``), decimates to the configured frame rate and offers each
  frame to a bounded queue that drops the *oldest* frame when full (``stats.dropped_queue``);
- one worker thread per pipeline encodes (HAL encoder, blocking), seals each encoded frame with the
  current SFrame sender (:class:`agent.media.key_source.KeySource`) and hands it to the sink.

Privacy rules enforced here (no unencrypted media leaves the device): with E2EE required and no
sender key nothing is encoded or sent (``stats.dropped_no_key``); the sink refuses anything not
sealed; the camera's in-use indicator is switched ON before the first frame leaves and OFF as soon as
frames stop leaving (no key, refused, camera gone, service stopped).

Recovery: an unplugged camera (``DeviceGoneError``) is reopened every ``replug_poll_s`` until it
returns; the first frame after it is a keyframe. An encoder that fails is reopened (falling back
along the codec preference list) with backoff. Live changes (:meth:`MediaPipeline.apply`) reopen the
encoder with the new size, rate, codec or bitrate; :meth:`MediaPipeline.healthy` reports when
sealed frames flow again.
"""

from __future__ import annotations

__all__ = ["MediaPipeline", "PipelineStats", "Progress", "StreamSettings"]

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from agent.e2ee.sframe import SFrameError
from agent.media.errors import PlaintextRefusedError, SinkError
from agent.media.frame import CODEC_IDS
from agent.media.key_source import KeySource
from agent.media.protect import ProtectedFrame, plain_copy_frame, protect_frame
from agent.media.sink import Sink
from agent.service import Progress
from hal.errors import DeviceGoneError, EncoderError, HalError
from hal.protocols import Camera, Encoder, EncoderFactory, Inventory
from hal.types import EncoderConfig, Frame, IndicatorState

_log = structlog.get_logger()
_STOP = object()


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What the encoder produces; changed live by a config document (:meth:`MediaPipeline.apply`)."""

    width: int
    height: int
    fps: int
    codec: str = "h264"
    bitrate_kbps: int = 2500
    keyframe_interval: int = 60
    codecs: tuple[str, ...] = ("libx264",)  # FFmpeg encoder preference, first that opens wins
    preset: str | None = None  # x264/x265 speed preset; None: the HAL default

    def __post_init__(self) -> None:
        if not (16 <= self.width <= 7680 and 16 <= self.height <= 4320) or self.width % 2 or self.height % 2:
            raise ValueError(
                f"size {self.width}x{self.height}: width/height must be even, 16..7680 x 16..4320"
            )
        if not 1 <= self.fps <= 120:
            raise ValueError(f"fps {self.fps}: must be 1..120")
        video = [c for c in CODEC_IDS if c != "opus"]
        if self.codec not in video:
            raise ValueError(f"codec {self.codec!r}: must be one of {', '.join(video)}")
        if not 50 <= self.bitrate_kbps <= 200_000:
            raise ValueError(f"bitrate_kbps {self.bitrate_kbps}: must be 50..200000")
        if not 1 <= self.keyframe_interval <= 3000:
            raise ValueError(f"keyframe_interval {self.keyframe_interval}: must be 1..3000")

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(
            codec=self.codec,
            width=self.width,
            height=self.height,
            fps=self.fps,
            bitrate_kbps=self.bitrate_kbps,
            keyframe_interval=self.keyframe_interval,
            low_latency=True,
            preset=self.preset,
        )


@dataclass(slots=True)
class PipelineStats:
    captured: int = 0
    decimated: int = 0
    dropped_queue: int = 0
    dropped_no_key: int = 0
    encoded: int = 0
    sent: int = 0
    keyframes: int = 0
    refused: int = 0
    seal_errors: int = 0
    send_errors: int = 0
    encoder_errors: int = 0
    encoder_opens: int = 0
    camera_gone: int = 0
    camera_recovered: int = 0
    restarts: int = 0  # restart_pipeline commands carried out (camera and encoder reopened)
    protect_ns: int = 0  # thread time spent sealing (or, with plain_copy, copying) frames
    latencies_ns: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=4096))

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__ if k != "latencies_ns"}


class _DropOldestQueue:
    """A bounded hand-off from the loop to the worker; a full queue drops its oldest item."""

    def __init__(self, size: int) -> None:
        self._items: collections.deque[object] = collections.deque()
        self._size = size
        self._cond = threading.Condition()

    def put(self, item: object) -> bool:
        """Add ``item``; True if an older item had to be dropped for it."""
        with self._cond:
            dropped = False
            if len(self._items) >= self._size:
                self._items.popleft()
                dropped = True
            self._items.append(item)
            self._cond.notify()
            return dropped

    def put_stop(self) -> None:
        with self._cond:
            self._items.clear()
            self._items.append(_STOP)
            self._cond.notify()

    def get(self) -> object:
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()


class MediaPipeline:
    """The media service of one camera (implements ``agent.service.Service``).

    Args:
        camera_id: the inventory id of the camera.
        inventory: where the camera is opened (and reopened after a replug).
        encoders: the HAL encoder factory.
        keys: the current SFrame sender.
        sink: where sealed frames go (it enforces the plaintext rule again).
        settings: the initial stream settings.
        e2ee_required: policy ``e2ee.required``; False only for benchmarks and policies that allow it.
        plain_copy: benchmark only: copy instead of encrypting. Never set from config or documents.
        queue_size: frames the capture→encode queue holds before dropping the oldest.
    """

    def __init__(
        self,
        *,
        camera_id: str,
        inventory: Inventory,
        encoders: EncoderFactory,
        keys: KeySource,
        sink: Sink,
        settings: StreamSettings,
        e2ee_required: bool = True,
        plain_copy: bool = False,
        queue_size: int = 3,
        replug_poll_s: float = 0.05,
        shutter_when_idle: bool = True,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.name = f"media[{camera_id}]"
        self.camera_id = camera_id
        self.stats = PipelineStats()
        self._inventory = inventory
        self._encoders = encoders
        self._keys = keys
        self._sink = sink
        self._settings = settings
        self._settings_gen = 0
        self._plain_copy = plain_copy
        self._e2ee_required = e2ee_required
        sink.e2ee_required = e2ee_required
        self._queue = _DropOldestQueue(queue_size)
        self._replug_poll_s = replug_poll_s
        self._keyframe_wanted = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._camera: Camera | None = None
        self._indicator_on = False
        self._progress: Progress | None = None
        self._last_sent_mono = 0.0  # reset by apply(): healthy() waits for frames after it
        self._last_sent_any = 0.0
        self._encoder_name: str | None = None
        self._queue_size = queue_size
        self._shutter_when_idle = shutter_when_idle
        self._shutter_ours: bool | None = None  # what this pipeline last set on the camera
        self._grabs: list[asyncio.Future[tuple[Frame, Camera]]] = []  # snapshot requests
        self._restart_wanted = False
        self._opened = asyncio.Event()  # set each time the camera is (re)opened

    # --- control ---------------------------------------------------------------------------------

    @property
    def settings(self) -> StreamSettings:
        return self._settings

    def request_keyframe(self) -> None:
        """The next encoded frame will be a keyframe (a command, a key rotation, a new receiver)."""
        self._keyframe_wanted.set()

    @property
    def running(self) -> bool:
        """True while the camera is open (the service runs and has a device)."""
        return self._camera is not None

    async def restart(self, timeout_s: float) -> bool:
        """Close and reopen the camera and the encoder (``restart_pipeline``), without the supervisor
        counting a failure. True when the camera was open again within ``timeout_s``."""
        self._opened.clear()
        self._restart_wanted = True
        try:
            async with asyncio.timeout(timeout_s):
                await self._opened.wait()
        except TimeoutError:
            return False
        return True

    async def grab_frame(self, timeout_s: float) -> tuple[Frame, Camera] | None:
        """The next captured frame and the camera it came from (a remote snapshot), or ``None``
        when the pipeline has no open camera or none arrives within ``timeout_s``.

        The frame is the camera's (a pooled picture): copy it before yielding to the loop again.
        """
        if self._camera is None or self._loop is None:
            return None
        future: asyncio.Future[tuple[Frame, Camera]] = self._loop.create_future()
        self._grabs.append(future)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            return None
        finally:
            if future in self._grabs:
                self._grabs.remove(future)

    def set_e2ee_required(self, required: bool) -> None:
        """Follow policy ``e2ee.required`` (the sink enforces it too)."""
        self._e2ee_required = required
        self._sink.e2ee_required = required

    def set_sink(self, sink: Sink) -> None:
        """Send to another sink from the next frame on (a pushed ``[media] sink``); closes the old one.

        Any sink is safe to point anywhere: it only ever carries SFrame-protected frames.
        """
        old, self._sink = self._sink, sink
        sink.e2ee_required = self._e2ee_required
        old.close()
        self.request_keyframe()  # the new destination needs a picture to start from
        _log.info("media_sink_changed", camera=self.camera_id, sink=sink.url)

    def set_shutter_when_idle(self, enabled: bool) -> None:
        """Follow policy ``camera.shutter_when_idle``: closed while no meeting key is set."""
        self._shutter_when_idle = enabled

    def check(self, body: Mapping[str, Any]) -> StreamSettings:
        """The settings ``body`` would give, validated, without applying them.

        ``body`` holds any of ``width``, ``height``, ``fps``, ``codec``, ``bitrate_kbps``,
        ``keyframe_interval``, ``codecs`` (the encoder preference list).

        Raises:
            ValueError: an unknown key or an invalid value.
        """
        allowed = {"width", "height", "fps", "codec", "bitrate_kbps", "keyframe_interval", "codecs"}
        unknown = set(body) - allowed
        if unknown:
            raise ValueError(f"unknown stream settings: {', '.join(sorted(unknown))}")
        changes = dict(body)
        if "codecs" in changes:
            codecs = changes["codecs"]
            if (
                not isinstance(codecs, list | tuple)
                or not all(isinstance(c, str) for c in codecs)
                or not codecs
            ):
                raise ValueError("codecs must be a non-empty list of encoder names")
            changes["codecs"] = tuple(codecs)
        for key in allowed - {"codec", "codecs"}:
            if key in changes and type(changes[key]) is not int:
                raise ValueError(f"{key} must be an integer")
        if "codec" in changes and not isinstance(changes["codec"], str):
            raise ValueError("codec must be a string")
        return replace(self._settings, **changes)  # __post_init__ validates

    def apply(self, body: Mapping[str, Any]) -> StreamSettings:
        """Change size, frame rate, codec, bitrate or keyframe interval live (keys as :meth:`check`).

        The encoder is reopened on the next frame and starts with a keyframe; use :meth:`healthy` to
        wait for sealed frames.

        Raises:
            ValueError: an unknown key or an invalid value; nothing changed.
        """
        new = self.check(body)
        if new != self._settings:
            self._settings = new
            self._settings_gen += 1
            self._last_sent_mono = 0.0  # healthy() waits for frames of the new settings
            _log.info("media_settings_changed", camera=self.camera_id, **_settings_log(new))
        return new

    async def healthy(self, timeout_s: float) -> bool:
        """True once sealed frames have left after now (i.e. flowing again), within ``timeout_s``."""
        since = time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            if self._last_sent_mono > since:
                return True
            await asyncio.sleep(0.02)
        return False

    def describe(self) -> dict[str, Any]:
        """For the state report (no key bytes, no frame bytes)."""
        return {
            "camera": self.camera_id,
            "encoder": self._encoder_name,
            "settings": _settings_log(self._settings),
            "sink": self._sink.url,
            "e2ee_required": self._e2ee_required,
            "plain_copy": self._plain_copy,
            "key": self._keys.describe(),
            "indicator_on": self._indicator_on,
            "shutter_closed_idle": bool(self._shutter_ours),
            "stats": self.stats.as_dict(),
        }

    # --- the service -----------------------------------------------------------------------------

    async def run(self, progress: Progress) -> None:
        """Run until cancelled. Camera loss is waited out; other failures raise (to be restarted)."""
        self._loop = asyncio.get_running_loop()
        self._progress = progress
        self._queue = _DropOldestQueue(self._queue_size)  # fresh per run: a restart starts clean
        worker = threading.Thread(target=self._work, name=f"{self.name}.encode", daemon=True)
        worker.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._camera_loop(progress), name=f"{self.name}.capture")
                tg.create_task(self._indicator_watch(), name=f"{self.name}.indicator")
        finally:
            self._queue.put_stop()
            await asyncio.to_thread(worker.join, 5.0)
            await self._set_indicator(False)
            self._camera = None

    async def _camera_loop(self, progress: Progress) -> None:
        while True:
            try:
                camera = self._inventory.open_camera(self.camera_id)
                async with camera:
                    self._camera = camera
                    self._opened.set()
                    if self.stats.camera_gone:
                        self.stats.camera_recovered += 1
                        _log.info("media_camera_back", camera=self.camera_id)
                    self.request_keyframe()
                    await self._capture(camera, progress)
            except DeviceGoneError:
                self._camera = None
                self._indicator_on = False  # the LED went with the device
                self.stats.camera_gone += 1
                _log.warning("media_camera_gone", camera=self.camera_id)
                while not await self._camera_present():
                    progress.beat()  # an idle wait, not a hang
                    await asyncio.sleep(self._replug_poll_s)

    async def _indicator_watch(self) -> None:
        """The indicator goes OFF when frames stop leaving (stalled camera, encoder trouble)."""
        while True:
            await asyncio.sleep(0.1)
            quiet_s = max(0.3, 3.0 / self._settings.fps)
            if self._indicator_on and time.monotonic() - self._last_sent_any > quiet_s:
                await self._set_indicator(False)

    async def _camera_present(self) -> bool:
        return any(d.id == self.camera_id for d in self._inventory.list_devices())

    async def _capture(self, camera: Camera, progress: Progress) -> None:
        next_due = 0.0
        async for frame in camera.frames():
            if self._restart_wanted:
                self._restart_wanted = False
                self.stats.restarts += 1
                self._settings_gen += 1  # the worker opens a fresh encoder
                _log.info("media_pipeline_restart", camera=self.camera_id)
                return  # leaves ``async with camera``: the camera loop opens it again
            self.stats.captured += 1
            if self._grabs:
                grabs, self._grabs = self._grabs, []
                for future in grabs:
                    if not future.done():
                        future.set_result((frame, camera))
            # Decimate to the configured rate: the camera may run faster than the stream.
            interval_ns = 1_000_000_000 / self._settings.fps
            if frame.capture_ns < next_due - interval_ns / 2:
                self.stats.decimated += 1
                continue
            next_due = max(next_due + interval_ns, frame.capture_ns + interval_ns / 2)
            sealer, _, _ = self._keys.current()
            idle = sealer is None and not self._plain_copy
            if await self._follow_shutter(camera, closed=idle and self._shutter_when_idle) and not idle:
                continue  # captured while the shutter was still closed: a black picture, skip it
            if idle:
                # No key: nothing may leave. Do not encode; wait (an idle turn, not a hang).
                self.stats.dropped_no_key += 1
                progress.beat()
                if self._indicator_on:
                    await self._set_indicator(False)
                continue
            if self._queue.put(frame):
                self.stats.dropped_queue += 1

    async def _follow_shutter(self, camera: Camera, *, closed: bool) -> bool:
        """Close the privacy shutter when idle (policy), open it again when a meeting starts.

        Only a shutter this pipeline closed is opened again by it; it never overrides someone else's.
        Returns True when it changed the shutter.
        """
        if closed == self._shutter_ours:
            return False
        if not closed and self._shutter_ours is None:
            self._shutter_ours = False
            return False
        try:
            await camera.set_shutter(closed)
        except HalError as exc:
            _log.warning("media_shutter_failed", camera=self.camera_id, error=str(exc))
            return False
        self._shutter_ours = closed
        _log.info(
            "media_shutter", camera=self.camera_id, closed=closed, reason="idle" if closed else "in_meeting"
        )
        return True

    # --- indicator -------------------------------------------------------------------------------

    async def _set_indicator(self, on: bool) -> None:
        camera = self._camera
        self._indicator_on = on
        if camera is None:
            return
        try:
            await camera.set_indicator(IndicatorState.ON if on else IndicatorState.OFF)
        except HalError as exc:
            _log.warning("media_indicator_failed", camera=self.camera_id, error=str(exc))

    def _indicator_from_worker(self, on: bool) -> None:
        """Switch the indicator and wait for it: ON must be lit before the frame leaves."""
        if self._indicator_on == on or self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._set_indicator(on), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=2.0)

    # --- the worker thread -----------------------------------------------------------------------

    def _work(self) -> None:
        encoder: Encoder | None = None
        encoder_gen = -1
        key_gen = -1
        retry_at = 0.0
        failures = 0
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                assert isinstance(item, Frame)
                frame = item
                if encoder is None or encoder_gen != self._settings_gen:
                    if time.monotonic() < retry_at:
                        continue
                    if encoder is not None:
                        encoder.close()
                        encoder = None
                    encoder_gen = self._settings_gen
                    encoder = self._open_encoder()
                    if encoder is None:
                        failures += 1
                        retry_at = time.monotonic() + min(2.0, 0.1 * 2**failures)
                        continue
                    failures = 0
                    encoder.request_keyframe()
                sealer, _, generation = self._keys.current()
                if generation != key_gen:
                    key_gen = generation
                    encoder.request_keyframe()  # a new key starts with a keyframe
                if sealer is None and not self._plain_copy:
                    self.stats.dropped_no_key += 1
                    self._indicator_from_worker(False)
                    continue
                if self._keyframe_wanted.is_set():
                    self._keyframe_wanted.clear()
                    encoder.request_keyframe()
                try:
                    packets = encoder.encode(frame)
                except EncoderError as exc:
                    self.stats.encoder_errors += 1
                    _log.warning("media_encoder_failed", camera=self.camera_id, error=str(exc))
                    encoder.close()
                    encoder = None
                    failures += 1
                    retry_at = time.monotonic() + min(2.0, 0.1 * 2**failures)
                    continue
                self.stats.encoded += 1
                for packet in packets:
                    self._send_packet(packet, sealer)
        finally:
            if encoder is not None:
                encoder.close()

    def _open_encoder(self) -> Encoder | None:
        settings = self._settings
        try:
            encoder = self._encoders.open(settings.encoder_config(), settings.codecs)
        except HalError as exc:
            self.stats.encoder_errors += 1
            _log.error("media_encoder_unavailable", camera=self.camera_id, error=str(exc))
            return None
        self.stats.encoder_opens += 1
        self._encoder_name = encoder.capabilities.name
        _log.info(
            "media_encoder_open", camera=self.camera_id, encoder=self._encoder_name, **_settings_log(settings)
        )
        return encoder

    def _send_packet(self, packet: Any, sealer: Any) -> None:
        started = time.thread_time_ns()
        try:
            sealed: ProtectedFrame = (
                plain_copy_frame(packet) if self._plain_copy else protect_frame(sealer, packet)
            )
        except (SFrameError, ValueError) as exc:
            self.stats.seal_errors += 1
            _log.error("media_seal_failed", camera=self.camera_id, error=str(exc))
            self._indicator_from_worker(False)
            return
        self.stats.protect_ns += time.thread_time_ns() - started
        self._indicator_from_worker(True)  # lit before the frame leaves
        sink = self._sink
        try:
            sink.send(sealed)
        except PlaintextRefusedError as exc:
            self.stats.refused += 1
            _log.error("media_plaintext_refused", camera=self.camera_id, sink=exc.sink)
            self._indicator_from_worker(False)
            return
        except SinkError as exc:
            self.stats.send_errors += 1
            _log.warning("media_send_failed", camera=self.camera_id, error=exc.reason)
            return
        self.stats.sent += 1
        if sealed.keyframe:
            self.stats.keyframes += 1
        self.stats.latencies_ns.append(time.time_ns() - sealed.capture_ns)
        self._last_sent_mono = self._last_sent_any = time.monotonic()
        loop, progress = self._loop, self._progress
        if loop is not None and progress is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed while this frame left
                loop.call_soon_threadsafe(progress.beat)


def _settings_log(settings: StreamSettings) -> dict[str, Any]:
    return {
        "width": settings.width,
        "height": settings.height,
        "fps": settings.fps,
        "codec": settings.codec,
        "bitrate_kbps": settings.bitrate_kbps,
        "keyframe_interval": settings.keyframe_interval,
    }


def settings_from(
    width: int,
    height: int,
    fps: int,
    *,
    codecs: Sequence[str],
    bitrate_kbps: int,
    keyframe_interval: int,
    preset: str | None = None,
) -> StreamSettings:
    """Stream settings from a camera spec and the ``[hal.encoder]`` section."""
    return StreamSettings(
        width=width,
        height=height,
        fps=fps,
        codec="h264",
        bitrate_kbps=bitrate_kbps,
        keyframe_interval=keyframe_interval,
        codecs=tuple(codecs),
        preset=preset,
    )
