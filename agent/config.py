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
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DeviceSection(_Strict):
    id: Identifier = "room-sim"
    groups: list[Identifier] = Field(default_factory=list)


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
    # One broker (``url``) or several endpoints of one clustered broker (``urls``), tried in turn.
    url: str | None = None
    urls: list[str] = Field(default_factory=list, max_length=32)
    # "5" (session expiry, message expiry, reason codes) or "3.1.1" (managed and clustered brokers
    # such as NATS that speak only 3.1.1; see docs/mqtt.md for what the 3.1.1 path does instead).
    protocol: Literal["5", "3.1.1"] = "5"
    # Short on purpose: a connect to a surviving cluster node can hang while the cluster re-elects
    # leaders, and the next endpoint is the better bet.
    connect_timeout_s: Annotated[float, Field(gt=0, le=120, strict=False)] = 5.0
    ca: FilePath | None = None
    cert: FilePath | None = None
    key: FilePath | None = None
    prefix: str = "roomagent/v1"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    username: str | None = None

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
    root: FilePath | None = None


class StateSection(_Strict):
    dir: FilePath | None = None
    report_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


class LogSection(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class CameraSpec(_Strict):
    """One camera: simulated (described here) or a real V4L2 device."""

    id: Identifier
    backend: Literal["sim", "v4l2"] = "sim"
    device: FilePath | None = None
    width: Annotated[int, Field(ge=16, le=7680)] = 1280
    height: Annotated[int, Field(ge=16, le=4320)] = 720
    fps: Annotated[int, Field(ge=1, le=120)] = 30
    pattern: Literal["bars", "gradient", "noise", "room"] = "bars"
    pixel_format: str | None = None

    @model_validator(mode="after")
    def _v4l2_needs_device(self) -> CameraSpec:
        if self.backend == "v4l2" and self.device is None:
            raise ValueError("a v4l2 camera needs device (e.g. /dev/video0)")
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even")
        return self


class EncoderSection(_Strict):
    codecs: list[str] = Field(
        default_factory=lambda: ["h264_v4l2m2m", "h264_vaapi", "h264_nvenc", "libx264", "libvpx"]
    )
    bitrate_kbps: Annotated[int, Field(ge=50, le=200_000)] = 2500
    keyframe_interval: Annotated[int, Field(ge=1, le=3000)] = 60
    low_latency: bool = True
    # x264/x265 speed preset; unset: the HAL's default (veryfast for x264, ultrafast for x265).
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] | None = None


class HalSection(_Strict):
    backend: Literal["sim", "v4l2", "auto"] = "sim"
    cameras: list[CameraSpec] = Field(default_factory=lambda: [CameraSpec(id="cam0")])
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    presets_dir: FilePath | None = None

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
    sink: str | None = None
    mtu: Annotated[int, Field(ge=256, le=9000)] = 1200
    enabled: bool = True

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
    lab_key_file: FilePath | None = None
    suite: Annotated[int, Field(ge=1, le=5)] = 4


class ControlSection(_Strict):
    max_document_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 64 * 1024
    clock_skew_s: Annotated[int, Field(ge=0, le=3600)] = 300
    health_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class SupervisorSection(_Strict):
    max_restarts: Annotated[int, Field(ge=1, le=1000)] = 5
    restart_window_s: Annotated[float, Field(gt=0)] = 60.0
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    stall_timeout_s: Annotated[float, Field(gt=0)] = 10.0


class AgentConfig(_Strict):
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

    def state_dir(self) -> Path:
        """Where persisted state lives: ``[state] dir``, else systemd's, else the user's."""
        return self.state.dir if self.state.dir is not None else default_state_dir()


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
