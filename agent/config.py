"""The local configuration file (``/etc/roomagent/agent.toml``), parsed into strict models.

Every section forbids unknown keys and coerces nothing it should not: a typo or a wrong type is an
error naming the dotted key path. With no file at all the built-in defaults run the agent on the
simulated HAL, offline.
"""

from __future__ import annotations

__all__ = [
    "AgentConfig",
    "CameraSpec",
    "ControlSection",
    "DeviceSection",
    "E2eeSection",
    "EncoderSection",
    "HalSection",
    "LogSection",
    "MediaSection",
    "MqttSection",
    "StateSection",
    "SupervisorSection",
    "TrustSection",
    "UpdateSection",
    "default_state_dir",
    "load_config",
    "parse_config",
]

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from hal.types import CameraSpec as HalCameraSpec

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Identifier = Annotated[str, Field(pattern=_ID)]
# TOML has no path type: a path is a string, converted (the one coercion we allow).
FilePath = Annotated[Path, Field(strict=False)]


class _Strict(BaseModel):
    # The attribute docstrings below each field are its documentation: agent/config_docs.py reads them
    # from this file to generate docs/config.md (pydantic's use_attribute_docstrings would parse this
    # source at every start).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DeviceSection(_Strict):
    """This room's identity on the management plane."""
    id: Identifier = "room-sim"
    """Device id: the `{id}` in every MQTT topic and in signed documents' `targets`."""
    groups: list[Identifier] = Field(default_factory=list)
    """Groups the room belongs to; it takes `{prefix}/groups/{group}/desired/*` documents."""


def _check_broker_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError("must name a broker host")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError("port must be a number from 1 to 65535") from exc
    return value


class MqttSection(_Strict):
    """The broker the control link connects to: one (`url`) or several endpoints of one clustered
    broker (`urls`), tried in turn."""
    url: str | None = None
    """`mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`; unset (and no `urls`): no broker, the room runs
    offline on its last-known-good state."""
    urls: list[str] = Field(default_factory=list, max_length=32)
    """Several endpoints of one clustered broker, tried in turn on loss (same scheme for all)."""
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT version: "5" (session expiry, message expiry, reason codes) or "3.1.1" (managed and
    clustered brokers such as NATS that speak only 3.1.1; docs/mqtt.md says what that path does instead)."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=120, strict=False)] = 5.0
    """Seconds a connect may take before the next endpoint is tried: short on purpose, a connect to a
    surviving cluster node can hang while the cluster re-elects leaders."""
    ca: FilePath | None = None
    """CA certificate (PEM) that signed the broker's certificate (mqtts only)."""
    cert: FilePath | None = None
    """Client certificate (PEM) for mutual TLS; goes with `key`."""
    key: FilePath | None = None
    """Client private key (PEM) for mutual TLS; goes with `cert`."""
    prefix: str = "roomagent/v1"
    """Topic prefix `{p}` of every topic (no wildcards, no leading or trailing `/`)."""
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    """MQTT keep-alive in seconds; the broker publishes the last will after 1.5 times this."""
    username: str | None = None
    """MQTT user name, when the broker authenticates by name rather than by client certificate."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return value if value is None else _check_broker_url(value)

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            _check_broker_url(url)
        if len(set(value)) != len(value):
            raise ValueError("lists one broker twice")
        return value

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The broker URLs to try, in order (``url`` is a one-element list)."""
        if self.urls:
            return tuple(self.urls)
        return (self.url,) if self.url else ()

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "#+"):
            raise ValueError("must be a topic prefix without wildcards or leading/trailing '/'")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> MqttSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        if self.url and self.urls:
            raise ValueError("give url (one broker) or urls (several endpoints), not both")
        schemes = {urlsplit(u).scheme for u in self.endpoints}
        if len(schemes) > 1:
            raise ValueError("urls mix mqtt:// and mqtts://: a room never falls back to plain text")
        if "mqtt" in schemes and (self.cert or self.ca):
            raise ValueError("ca/cert/key need an mqtts:// url")
        return self


class TrustSection(_Strict):
    """Where trust starts."""
    root: FilePath | None = None
    """The first trust root (a signed `root` envelope) shipped with the image; unset: the room accepts no
    document until one is configured."""


class StateSection(_Strict):
    """Persisted state (identity, applied documents, audit log, `state.json`)."""
    dir: FilePath | None = None
    """State directory; unset: `$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/roomagent`
    (`~/.local/state/roomagent`)."""
    report_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often `state.json` and the retained state are refreshed, in seconds."""


class LogSection(_Strict):
    """Logging (JSON lines to stdout; journald stores them under systemd)."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    format: Literal["auto", "json", "console"] = "auto"
    """`auto`: readable console lines on a terminal, JSON otherwise."""


class CameraSpec(_Strict):
    """One camera: simulated (described here) or a real V4L2 device."""


    id: Identifier
    """Camera id used by commands, the CLI and logs (e.g. `cam0`)."""
    backend: Literal["sim", "v4l2"] = "sim"
    """`sim`: a simulated camera drawn from this description; `v4l2`: a real device."""
    device: FilePath | None = None
    """V4L2 device node (e.g. `/dev/video0`); required for `v4l2`."""
    width: Annotated[int, Field(ge=16, le=7680)] = 1280
    """Capture width in pixels (even)."""
    height: Annotated[int, Field(ge=16, le=4320)] = 720
    """Capture height in pixels (even)."""
    fps: Annotated[int, Field(ge=1, le=120)] = 30
    """Frames per second."""
    pattern: Literal["bars", "gradient", "noise", "room"] = "bars"
    """Test picture of a simulated camera (each frame also carries a stamp barcode)."""
    pixel_format: str | None = None
    """V4L2 pixel format (e.g. `YUYV`, `MJPG`); unset: the device's preferred one."""

    @model_validator(mode="after")
    def _v4l2_needs_device(self) -> CameraSpec:
        if self.backend == "v4l2" and self.device is None:
            raise ValueError("a v4l2 camera needs device (e.g. /dev/video0)")
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even")
        return self


class EncoderSection(_Strict):
    """Video encoder selection and settings."""
    codecs: list[str] = Field(
        default_factory=lambda: ["h264_v4l2m2m", "h264_vaapi", "h264_nvenc", "libx264", "libvpx"]
    )
    """Encoders to try in order; the first that opens is used (hardware first, software last)."""
    bitrate_kbps: Annotated[int, Field(ge=50, le=200_000)] = 2500
    """Target bitrate in kbit/s."""
    keyframe_interval: Annotated[int, Field(ge=1, le=3000)] = 60
    """Frames between keyframes (a receiver that lost packets recovers at the next one)."""
    low_latency: bool = True
    """Tune the encoder for latency (no B-frames, no look-ahead)."""
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] | None = None
    """x264/x265 speed preset; unset: the HAL's default (`veryfast` for x264, `ultrafast` for x265)."""


class HalSection(_Strict):
    """The hardware abstraction layer: cameras and encoders."""
    backend: Literal["sim", "v4l2", "auto"] = "sim"
    """`sim` or `v4l2` for every camera; `auto`: each camera by its own `backend`."""
    cameras: list[CameraSpec] = Field(default_factory=lambda: [CameraSpec(id="cam0")])
    """The cameras (`[[hal.cameras]]`, keys below); default: one simulated `cam0`."""
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    """Encoder settings (`[hal.encoder]`)."""
    presets_dir: FilePath | None = None
    """Directory of stored PTZ presets; unset: `presets/` in the state directory (room and `hal`)."""

    def camera_specs(self) -> list[HalCameraSpec]:
        """The cameras as the HAL's own value type (the agent hands devices to hal/ only this way)."""
        from hal.types import CameraSpec as HalCameraSpec

        return [
            HalCameraSpec(
                id=c.id,
                backend=c.backend,
                device=c.device,
                width=c.width,
                height=c.height,
                fps=c.fps,
                pattern=c.pattern,
                pixel_format=c.pixel_format,
            )
            for c in self.cameras
        ]

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraSpec]) -> list[CameraSpec]:
        ids = [c.id for c in cameras]
        if len(ids) != len(set(ids)):
            raise ValueError("camera ids must be unique")
        return cameras


class MediaSection(_Strict):
    """Where encrypted media goes."""
    sink: str | None = None
    """`rtp://HOST:PORT` (SFrame-protected RTP over UDP) or `file:///PATH` (a record file); unset: no
    pipeline runs."""
    mtu: Annotated[int, Field(ge=256, le=9000)] = 1200
    """Largest RTP datagram payload in bytes."""
    enabled: bool = True
    """`false` keeps media off even with a sink."""

    @field_validator("sink")
    @classmethod
    def _check_sink(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme == "rtp":
            if not parts.hostname or parts.port is None:
                raise ValueError("rtp sink must be rtp://HOST:PORT")
        elif parts.scheme == "file":
            if not parts.path:
                raise ValueError("file sink must be file:///PATH")
        else:
            raise ValueError("sink must be rtp://HOST:PORT or file:///PATH")
        return value


class E2eeSection(_Strict):
    """End-to-end encryption (SFrame, RFC 9605)."""
    lab_key_file: FilePath | None = None
    """A shared lab key (`roomagent lab-key`): lab use only; meetings get keys from the customer's key
    packages."""
    suite: Annotated[int, Field(ge=1, le=5)] = 4
    """SFrame cipher suite for the lab key (RFC 9605 §4.5; 4 = AES-128-GCM-SHA256-128)."""


class ControlSection(_Strict):
    """Limits of the signed-document control plane."""
    max_document_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 64 * 1024
    """Largest document accepted, checked before parsing (bigger ones are acked `too_large`)."""
    clock_skew_s: Annotated[int, Field(ge=0, le=3600)] = 300
    """How far in the future a document's `issued_at` may be, in seconds."""
    health_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    """How long an applied config has to become healthy before it is rolled back, in seconds."""
    rejection_audit_bytes_per_day: Annotated[int, Field(ge=4096, le=64 << 20)] = 256 * 1024
    """Audit bytes per day for coalesced counters of unauthenticated rejections (anyone on the broker
    can cause them; see docs/control-plane.md, "Coalesced rejections")."""
    rejection_flush_s: Annotated[float, Field(ge=1, le=86400)] = 60.0
    """How often the coalesced rejection counters are written to the audit log, in seconds."""
    rejection_acks_per_s: Annotated[float, Field(ge=0.1, le=1000)] = 5.0
    """Acks per second and topic for unauthenticated rejections; the rest are only counted."""
    unsigned_per_s_per_topic: Annotated[float, Field(ge=1, le=100000)] = 200.0
    """Messages naming no signer key id verified at most this often per topic; the rest are counted
    unparsed, so a flood never delays a real document."""


class UpdateSection(_Strict):
    """Firmware updates (`update` documents, RAUC A/B slots); off unless the image has RAUC."""

    enabled: bool = False
    """Take `update` documents and install them through RAUC; without it every update is acked
    `rejected` (`unsupported`), nothing changed."""
    firmware_version_file: FilePath = Path("/usr/lib/roomagent/firmware-version")
    """The running slot's firmware version: a file holding an integer written into each image at build
    time (updates must carry a greater one)."""
    dbus: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    """D-Bus address of RAUC and logind (`unix:path=...`); unset: the system bus."""
    ca: FilePath | None = None
    """CA bundle for HTTPS mirrors; unset: the system's."""
    health_timeout_s: Annotated[float, Field(gt=0, le=900)] = 120.0
    """How long the new slot has after booting to pass its health check before the room falls back, in
    seconds."""
    poll_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    """How often the updater looks again while it waits (RAUC progress, the install window, a meeting to
    end), in seconds."""


class SupervisorSection(_Strict):
    """Restarts of failed services inside the agent."""
    max_restarts: Annotated[int, Field(ge=1, le=1000)] = 5
    """Restarts of one service allowed within `restart_window_s` before the agent exits (and systemd takes
    over)."""
    restart_window_s: Annotated[float, Field(gt=0)] = 60.0
    """The window for `max_restarts`, in seconds."""
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    """First delay before restarting a failed service, in seconds (doubles each time)."""
    backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    """Longest restart delay, in seconds."""
    stall_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """A service that reports no progress for this long counts as hung (systemd's watchdog pings stop)."""


class AgentConfig(_Strict):
    """The whole `agent.toml`."""
    device: DeviceSection = Field(default_factory=DeviceSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    trust: TrustSection = Field(default_factory=TrustSection)
    state: StateSection = Field(default_factory=StateSection)
    log: LogSection = Field(default_factory=LogSection)
    hal: HalSection = Field(default_factory=HalSection)
    media: MediaSection = Field(default_factory=MediaSection)
    e2ee: E2eeSection = Field(default_factory=E2eeSection)
    control: ControlSection = Field(default_factory=ControlSection)
    supervisor: SupervisorSection = Field(default_factory=SupervisorSection)
    update: UpdateSection = Field(default_factory=UpdateSection)

    def state_dir(self) -> Path:
        """Where persisted state lives: ``[state] dir``, else systemd's, else the user's."""
        return self.state.dir if self.state.dir is not None else default_state_dir()

    def presets_dir(self) -> Path:
        """Where PTZ presets persist: ``[hal] presets_dir``, else ``presets/`` in the state directory.

        One place, so a preset stored with ``roomagent hal`` is the one a ``ptz_preset`` command recalls.
        """
        return self.hal.presets_dir if self.hal.presets_dir is not None else self.state_dir() / "presets"


def default_state_dir() -> Path:
    """``$STATE_DIRECTORY`` (set by systemd's StateDirectory=), else ``$XDG_STATE_HOME/roomagent``."""
    systemd_dir = os.environ.get("STATE_DIRECTORY")
    if systemd_dir:
        # systemd passes a colon-separated list when several directories are configured.
        return Path(systemd_dir.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "roomagent"


def _issue_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _file_sink_in_state_dir(config: AgentConfig) -> ConfigIssue | None:
    """A file sink never writes into the state directory (audit log, keys, trust root live there)."""
    sink = config.media.sink
    if sink is None or not sink.startswith("file://"):
        return None
    target = Path(urlsplit(sink).path).resolve()
    state = config.state_dir().resolve()
    if target == state or state in target.parents:
        return ConfigIssue("media.sink", f"a file sink must not be inside the state directory {state}")
    return None


def parse_config(data: dict[str, Any], *, source: str = "<config>", check_files: bool = True) -> AgentConfig:
    """Validate a parsed TOML mapping.

    Raises:
        ConfigError: naming every offending key path with its reason.
    """
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        issues = [
            ConfigIssue(_issue_path(tuple(e["loc"])), re.sub(r"^Value error, ", "", e["msg"]))
            for e in exc.errors()
        ]
        raise ConfigError(source, issues) from exc
    sink_issue = _file_sink_in_state_dir(config)
    if sink_issue is not None:
        raise ConfigError(source, [sink_issue])
    if check_files:
        issues = []
        for key, path in (
            ("trust.root", config.trust.root),
            ("mqtt.ca", config.mqtt.ca),
            ("mqtt.cert", config.mqtt.cert),
            ("mqtt.key", config.mqtt.key),
            ("e2ee.lab_key_file", config.e2ee.lab_key_file),
        ):
            if path is not None and not path.is_file():
                issues.append(ConfigIssue(key, f"file not found: {path}"))
        if issues:
            raise ConfigError(source, issues)
    return config


def load_config(path: Path | None) -> AgentConfig:
    """Load ``path`` (TOML), or the built-in defaults when ``path`` is None.

    Raises:
        ConfigError: unreadable file, TOML syntax error, or invalid keys.
    """
    if path is None:
        return AgentConfig()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigIssue("(file)", exc.strerror or str(exc))]) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(path), [ConfigIssue("(syntax)", str(exc))]) from exc
    return parse_config(data, source=str(path))
