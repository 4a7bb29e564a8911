"""Configuration: one YAML file, ``NODEMEDIC_*`` environment overrides, systemd credentials.

Precedence, highest first: environment (``NODEMEDIC_PROBES__CPU__INTERVAL=5s``), the YAML
file, files in ``$CREDENTIALS_DIRECTORY`` (named like the variable without its prefix,
e.g. ``node__name``), then the defaults below. Every model forbids unknown keys and is
frozen. :func:`load_settings` turns every problem into a :class:`~agent.errors.ConfigError`
whose issues name the source, the field path and what would be valid.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_RULES_FILE",
    "AgentSettings",
    "ApiConfig",
    "CheckTlsConfig",
    "ConditionsConfig",
    "CustomCheckConfig",
    "CustomProbeConfig",
    "DiskioProbeConfig",
    "Duration",
    "EndpointCheckConfig",
    "EndpointsProbeConfig",
    "FilesystemProbeConfig",
    "FleetBudgetConfig",
    "HistoryConfig",
    "KmsgProbeConfig",
    "KubernetesConfig",
    "LogConfig",
    "MqttConfig",
    "MqttOutboxConfig",
    "MqttTlsConfig",
    "NetworkProbeConfig",
    "NodeConfig",
    "ProbeConfig",
    "ProbesConfig",
    "ProcessGroupConfig",
    "ProcessesProbeConfig",
    "RemediationConfig",
    "RemediationWindow",
    "RuleConfig",
    "UnitsProbeConfig",
    "load_settings",
    "parse_duration",
    "split_host_port",
]

import contextvars
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.broker_url import BrokerUrl, parse_broker_url
from agent.config_checks import (
    CheckTlsConfig,
    CustomCheckConfig,
    CustomProbeConfig,
    EndpointCheckConfig,
    EndpointsProbeConfig,
)
from agent.config_kubernetes import KubernetesConfig
from agent.config_probes import (
    DiskioProbeConfig,
    FilesystemProbeConfig,
    KmsgProbeConfig,
    NetworkProbeConfig,
    ProbesConfig,
    ProcessesProbeConfig,
    ProcessGroupConfig,
    UnitsProbeConfig,
)
from agent.config_remediation import FleetBudgetConfig, RemediationConfig, RemediationWindow
from agent.config_remote import RemoteConfig
from agent.config_types import (
    Duration,
    ProbeConfig,
    parse_duration,
    split_host_port,
)
from agent.config_types import FrozenModel as _Frozen
from agent.config_types import check_regex as _check_regex
from agent.config_types import dotted_path as _dotted
from agent.config_types import format_duration as _format_duration
from agent.errors import ConfigError, ConfigIssue
from agent.model import Severity
from agent.probes.catalog import CATALOG

ENV_PREFIX = "NODEMEDIC_"
DEFAULT_RULES_FILE = Path(__file__).parent / "defaults" / "rules.yaml"


class NodeConfig(_Frozen):
    """Who this node is."""

    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253)
    """The node's identity in events (``source: nodemedic://<name>``) and MQTT topics."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels of the node."""

    @field_validator("name")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if any(ch in value for ch in "/+#\0") or value != value.strip():
            raise ValueError("node name must not contain '/', '+', '#', NUL or surrounding spaces")
        return value


class ApiConfig(_Frozen):
    """The HTTP API."""

    listen: str = "127.0.0.1:9464"
    """``HOST:PORT`` or ``[::1]:PORT`` the HTTP API binds (port 0 picks a free one)."""
    enabled: bool = True
    """Serve the HTTP API (metrics, health, conditions, events)."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @property
    def host(self) -> str:
        """Host part of ``listen``."""
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        """Port part of ``listen`` (0 picks a free port)."""
        return split_host_port(self.listen)[1]


class LogConfig(_Frozen):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """The lowest level logged."""
    format: Literal["auto", "text", "journal"] = "auto"
    """``auto``: the journal under systemd, else text on stderr."""


class HistoryConfig(_Frozen):
    """The local event history in the state directory's SQLite database."""

    max_events: int = Field(default=10_000, ge=100, le=10_000_000)
    """Events kept in the local history; the oldest are trimmed first."""


class ConditionsConfig(_Frozen):
    """Flap damping for every rule's conditions.

    A condition that went to firing ``flap_limit`` times within ``flap_window`` is
    flapping: it resolves only once its value has stayed clear for a whole window.
    """

    flap_window: Duration = timedelta(minutes=10)
    """The window in which firings are counted, and a flapping condition must stay clear."""
    flap_limit: int = Field(default=3, ge=2)
    """Firings within ``flap_window`` that make a condition flapping."""


def _one_or_many(value: object) -> object:
    # `url: mqtt://a:1883` and `url: [mqtt://a:1883, mqtts://b:8883]` are both natural.
    return (value,) if isinstance(value, str) else value


def _protocol_text(value: object) -> object:
    # YAML reads `protocol: 5` as an int and `protocol: 3.1.1` as a string.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class MqttTlsConfig(_Frozen):
    """TLS for ``mqtts://`` brokers: the CA to trust and the client certificate to present."""

    ca_file: Path | None = None
    """CA certificates to trust (PEM); default the system's."""
    cert_file: Path | None = None
    """Client certificate to present (PEM); needs ``key_file`` unless it holds the key."""
    key_file: Path | None = None
    """Private key of ``cert_file`` (PEM)."""
    check_hostname: bool = True
    """Check that the broker's certificate names the host in the URL."""

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file; give both or neither")
        return self


class MqttOutboxConfig(_Frozen):
    """Bounds of the SQLite outbox that holds events until the broker acknowledges them.

    When either bound is exceeded the outbox sheds events: lowest severity first, then
    oldest (see the README).
    """

    max_events: int = Field(default=100_000, ge=10, le=10_000_000)
    """Events the outbox holds at most; beyond that it sheds."""
    max_bytes: ByteSize = Field(default=ByteSize(64 * 1024 * 1024), ge=64 * 1024)
    """Payload bytes the outbox holds at most; beyond that it sheds."""


class MqttConfig(_Frozen):
    """Publishing events and state to an MQTT broker; without ``url`` the agent is local-only."""

    url: Annotated[str | tuple[str, ...], BeforeValidator(_one_or_many)] = ()
    """``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``, or a list tried in order for failover."""
    topic_prefix: str = "nodemedic/v1"
    """The topics' first levels (no ``+``, ``#``, leading or trailing ``/``)."""
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol_text)] = "5"
    """MQTT protocol version."""
    username: str | None = Field(default=None, min_length=1)
    """User name to authenticate with."""
    password: SecretStr | None = None
    """Password; best given as the systemd credential ``mqtt__password``. Never logged."""
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    keepalive: Duration = timedelta(seconds=30)
    """MQTT keep-alive; a dead link is noticed within 1.5 times this."""
    session_expiry: Duration = timedelta(hours=1)
    """How long the broker keeps the session (and commands for the node) after a disconnect."""
    connect_timeout: Duration = timedelta(seconds=10)
    """Limit for the TCP/TLS connect and the CONNACK."""
    inflight: int = Field(default=20, ge=1, le=65535)
    """Events published but not yet acknowledged, at most; at most the broker's receive maximum."""
    drain_batch: int = Field(default=0, ge=0, le=1000)
    """Events per message for the outage backlog, on the ``batch`` topic; 0: one per message."""
    reconnect_min: Duration = timedelta(milliseconds=500)
    """First reconnect delay; it doubles (with jitter) up to ``reconnect_max``."""
    reconnect_max: Duration = timedelta(seconds=60)
    """Longest reconnect delay."""
    auth_retry: Duration = timedelta(seconds=60)
    """Retry pace after the broker refused the credentials or the TLS handshake failed."""
    outbox: MqttOutboxConfig = Field(default_factory=MqttOutboxConfig)

    @field_validator("url")
    @classmethod
    def _urls(cls, value: str | tuple[str, ...]) -> tuple[str, ...]:
        urls = (value,) if isinstance(value, str) else value
        for url in urls:
            parse_broker_url(url)
        return urls

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(
                f"topic_prefix {value!r} must be non-empty levels joined by '/', without a"
                " leading or trailing '/', e.g. nodemedic/v1"
            )
        if any(ch in value for ch in "+#\0"):
            raise ValueError(f"topic_prefix {value!r} must not contain '+', '#' or NUL")
        return value

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(seconds=65535):
            raise ValueError("keepalive must be between 1s and 65535s (MQTT's limit)")
        return value

    @field_validator("session_expiry")
    @classmethod
    def _session_expiry(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(seconds=0xFFFFFFFE):
            raise ValueError("session_expiry must be between 0s and 136y (MQTT's limit)")
        return value

    @field_validator("connect_timeout", "reconnect_min", "reconnect_max", "auth_retry")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=10):
            raise ValueError("must be at least 10ms")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password is set without username; set mqtt.username too")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(
                "reconnect_max must not be below reconnect_min "
                f"({_format_duration(self.reconnect_max)} < {_format_duration(self.reconnect_min)})"
            )
        tls_files = (self.tls.ca_file, self.tls.cert_file)
        if any(path is not None for path in tls_files) and not any(
            broker.tls for broker in self.brokers
        ):
            raise ValueError(
                "tls files are set but no url uses mqtts://; use mqtts://HOST:PORT or drop mqtt.tls"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when at least one broker URL is configured."""
        return bool(self.url)

    @property
    def brokers(self) -> tuple[BrokerUrl, ...]:
        """The broker URLs, parsed, in failover order."""
        urls = (self.url,) if isinstance(self.url, str) else self.url
        return tuple(parse_broker_url(url) for url in urls)


Op = Literal[">", ">=", "<", "<=", "==", "!="]


class RuleConfig(_Frozen):
    """A threshold rule over one metric; see the README for its semantics."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    """Unique rule name: lower case, digits, ``-``, ``_``, ``.``."""
    metric: str
    """The metric watched, named exactly as /metrics exposes it."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Label matchers: an exact value, or ``~regex`` for a full regular-expression match."""
    op: Op
    """How the value is compared with ``threshold``."""
    threshold: float
    """The value that breaches."""
    clear: float | None = None
    """Hysteresis: once firing, it resolves only when ``value op clear`` no longer holds."""
    for_: Duration = Field(default=timedelta(0), alias="for")
    """How long a breach must last before the condition fires."""
    severity: Severity = Severity.WARNING
    """Severity of the condition's events."""
    description: str = ""
    """Shown with the condition."""

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in CATALOG:
            import difflib  # only for a misspelt name: not loaded by a valid config

            near = difflib.get_close_matches(value, CATALOG, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ValueError(
                f"unknown metric {value!r}; {hint}metrics are named as /metrics shows them "
                "(the README lists them all)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        spec = CATALOG[self.metric]
        for label, pattern in self.labels.items():
            if label not in spec.labels:
                valid = ", ".join(spec.labels) or "none"
                raise ValueError(
                    f"labels: {self.metric} has no label {label!r} (its labels: {valid})"
                )
            if pattern.startswith("~"):
                _check_regex(pattern[1:])
        if self.clear is not None:
            if self.op in ("==", "!="):
                raise ValueError(f"clear: not allowed with op {self.op!r}; leave it out")
            if self.op in (">", ">=") and self.clear > self.threshold:
                raise ValueError(
                    f"clear: {self.clear} is above threshold {self.threshold}; with op "
                    f"{self.op!r} the clear value must be <= the threshold"
                )
            if self.op in ("<", "<=") and self.clear < self.threshold:
                raise ValueError(
                    f"clear: {self.clear} is below threshold {self.threshold}; with op "
                    f"{self.op!r} the clear value must be >= the threshold"
                )
        return self


def _default_rules() -> list[RuleConfig]:
    data = yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
    return [RuleConfig.model_validate(rule) for rule in data["rules"]]


_config_data: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("_config_data")


class AgentSettings(BaseSettings):
    """The whole agent configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        use_attribute_docstrings=True,
    )

    node: NodeConfig = Field(default_factory=NodeConfig)
    state_dir: Path = Path("/var/lib/nodemedic")
    """Holds ``nodemedic.db`` (SQLite, WAL): the outbox, event history and condition state."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    conditions: ConditionsConfig = Field(default_factory=ConditionsConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    rules: tuple[RuleConfig, ...] = Field(default_factory=lambda: tuple(_default_rules()))

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[RuleConfig, ...]) -> tuple[RuleConfig, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}; rule names must be unique")
            seen.add(rule.name)
        return rules

    @model_validator(mode="after")
    def _rules_have_probes(self) -> Self:
        enabled = set(self.probes.enabled()) | {"agent"}
        if "rules" not in self.model_fields_set:
            # The shipped rules follow the probes: disabling a probe drops its default
            # rules rather than making the operator rewrite the rule list. (The model is
            # frozen; this runs while it is being built.)
            kept = tuple(r for r in self.rules if CATALOG[r.metric].probe in enabled)
            object.__setattr__(self, "rules", kept)
            return self
        for rule in self.rules:
            probe = CATALOG[rule.metric].probe
            if probe not in enabled:
                raise ValueError(
                    f"rule {rule.name!r} watches {rule.metric}, which the disabled probe "
                    f"{probe!r} produces; enable probes.{probe} or remove the rule"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the YAML file over credentials over defaults."""
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=dict(_config_data.get({}))),
        ]
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(_CredentialsSource(settings_cls, Path(credentials)))
        return tuple(sources)


class _CredentialsSource(EnvSettingsSource):
    """Reads settings from systemd credential files (``LoadCredential=node__name:...``).

    A credential named like the environment variable without its prefix, lower case,
    supplies that setting: ``api__listen`` for ``NODEMEDIC_API__LISTEN``.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        values: dict[str, str] = {}
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_file():
                    key = ENV_PREFIX + entry.name
                    values[key.lower()] = entry.read_text(encoding="utf-8").strip()
        super().__init__(
            settings_cls,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            case_sensitive=False,
        )
        self.env_vars = values


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(source, "", "file not found")]) from None
    except OSError as err:
        raise ConfigError([ConfigIssue(source, "", f"cannot read: {err.strerror}")]) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([ConfigIssue(source, "", f"invalid YAML: {where}{problem}")]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(source, "", f"expected a mapping of sections, got {type(data).__name__}")]
        )
    return data


def load_settings(path: Path | None, *, environ: Mapping[str, str] | None = None) -> AgentSettings:
    """Load and validate the configuration.

    Args:
        path: the YAML file, or None for defaults and environment only.
        environ: the environment to read overrides from (default ``os.environ``); used
            to tell whether a bad value came from the file or a variable.

    Raises:
        ConfigError: listing every issue with its source and field path.
    """
    data = _read_yaml(path) if path is not None else {}
    env = os.environ if environ is None else environ
    token = _config_data.set(data)
    try:
        return AgentSettings()
    except ValidationError as err:
        raise ConfigError(
            [_issue(error, data, str(path) if path else "defaults", env) for error in err.errors()]
        ) from err
    finally:
        _config_data.reset(token)


_NO_ECHO = frozenset({"mqtt.url", "mqtt.password", "mqtt.username"})
"""Fields whose bad values are not repeated in errors: they may hold a secret."""


def _issue(error: Any, data: Mapping[str, Any], source: str, env: Mapping[str, str]) -> ConfigIssue:
    loc: Sequence[str | int] = error["loc"]
    path = _dotted(loc)
    upper_env = {key.upper() for key in env}
    names = [str(part) for part in loc if isinstance(part, str)]
    credentials = Path(env.get("CREDENTIALS_DIRECTORY", "/nonexistent"))
    for depth in range(len(names), 0, -1):
        var = ENV_PREFIX + "__".join(names[:depth]).upper()
        if var in upper_env:
            source = f"environment {var}"
            break
        credential = "__".join(names[:depth]).lower()
        if (credentials / credential).is_file() and not _in_file(data, names[:depth]):
            source = f"credential {credentials / credential}"
            break
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key {_last_key(loc)!r}; {_valid_keys(loc)}"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif (
        "input" in error
        and path not in _NO_ECHO
        and not isinstance(error["input"], dict | list | tuple)
        and repr(error["input"]) not in message
    ):
        message = f"{message} (got {error['input']!r})"
    return ConfigIssue(source, path, message)


def _in_file(data: Mapping[str, Any], names: Sequence[str]) -> bool:
    node: Any = data
    for name in names:
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
    return True


def _last_key(loc: Sequence[str | int]) -> str:
    return str(loc[-1]) if loc else ""


def _valid_keys(loc: Sequence[str | int]) -> str:
    model: Any = AgentSettings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return "see the README for valid keys"
        annotation = field.annotation
        args = getattr(annotation, "__args__", None)
        if args:
            annotation = next((a for a in args if isinstance(a, type)), annotation)
        model = annotation
    fields = getattr(model, "model_fields", None)
    if not fields:
        return "see the README for valid keys"
    keys = [info.alias or name for name, info in fields.items()]
    return "valid keys: " + ", ".join(keys)
