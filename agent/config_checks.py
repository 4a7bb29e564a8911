"""Configuration of the endpoint and custom (Nagios plugin) checks.

The ``probes.endpoints`` and ``probes.custom`` sections.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.config_types import Duration, ProbeConfig, split_host_port
from agent.config_types import FrozenModel as _Frozen
from agent.config_types import check_regex as _check_regex
from agent.config_types import dotted_path as _dotted

# -- endpoint and custom checks (probes.endpoints, probes.custom) ---------------------

_CHECK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATUS_RANGE = re.compile(r"([1-5])xx|(\d{3})(?:-(\d{3}))?")


def _status_ranges(value: object) -> object:
    """``200``, ``"200-299"``, ``"2xx"`` or a list of them, as ((low, high), ...)."""
    items = value if isinstance(value, list | tuple) else [value]
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, list | tuple) and len(item) == 2:
            ranges.append((int(item[0]), int(item[1])))
            continue
        if isinstance(item, bool) or not isinstance(item, int | str):
            # pydantic reports a ValueError as a validation error, a TypeError as a crash.
            raise ValueError(f"expected a status, a range or a list of them, got {item!r}")  # noqa: TRY004
        match = _STATUS_RANGE.fullmatch(str(item).strip())
        if match is None:
            raise ValueError(f"{item!r} is not a status: use e.g. 200, '200-299' or '2xx'")
        if match.group(1):
            low = int(match.group(1)) * 100
            ranges.append((low, low + 99))
        else:
            low = int(match.group(2))
            ranges.append((low, int(match.group(3) or low)))
    for low, high in ranges:
        if not 100 <= low <= high <= 599:
            raise ValueError(f"status range {low}-{high} is not within 100-599 (low first)")
    if not ranges:
        raise ValueError("expected at least one status")
    return tuple(ranges)


class CheckTlsConfig(_Frozen):
    """TLS for an ``https://`` endpoint check: verify the server, optionally with our own CA."""

    verify: bool = True
    """Verify the server's certificate and host name."""
    ca_file: Path | None = None
    """CA bundle (PEM) to verify against instead of the system's."""


class _CheckConfig(_Frozen):
    """What every check has. Errors inside one are reported with the check's name."""

    name: str = Field(pattern=_CHECK_NAME, max_length=100)
    """The check's name: the `check` label of its series and its events."""
    interval: Duration | None = None
    """Time between runs of this check; default the probe's interval."""
    timeout: Duration | None = None
    """How long one run may take; default the interval, at most 10s."""

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_check(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as err:
            name = data.get("name") if isinstance(data, Mapping) else None
            if not isinstance(name, str) or not re.fullmatch(_CHECK_NAME, name):
                raise
            if any(str(e["msg"]).startswith("Value error, check ") for e in err.errors()):
                raise
            problems = "; ".join(_check_problem(error) for error in err.errors())
            raise ValueError(f"check {name!r}: {problems}") from None

    @field_validator("interval")
    @classmethod
    def _min_interval(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(milliseconds=100):
            raise ValueError("must be at least 100ms")
        return value

    @field_validator("timeout")
    @classmethod
    def _min_timeout(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(milliseconds=10):
            raise ValueError("must be at least 10ms")
        return value

    def _invalid(self, problem: str) -> ValueError:
        # Model-level checks run outside the wrap above, so they name the check themselves.
        return ValueError(f"check {self.name!r}: {problem}")

    def seconds(self, default_interval: float) -> tuple[float, float]:
        """(interval, timeout): the probe's interval by default; timeout at most 10 s."""
        interval = self.interval.total_seconds() if self.interval else default_interval
        timeout = self.timeout.total_seconds() if self.timeout else min(interval, 10.0)
        return interval, timeout


def _check_problem(error: Any) -> str:
    field = _dotted(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {field!r}"
    message = "required field is missing" if error["type"] == "missing" else error["msg"]
    message = str(message).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


class EndpointCheckConfig(_CheckConfig):
    """An HTTP(S) GET of ``url``, or a TCP connect to ``tcp`` (``HOST:PORT``)."""

    url: str | None = None
    """An http:// or https:// URL to GET (give url or tcp)."""
    tcp: str | None = None
    """HOST:PORT to connect to (give url or tcp)."""
    expect_status: Annotated[tuple[tuple[int, int], ...], BeforeValidator(_status_ranges)] = (
        (200, 200),
    )
    """Accepted HTTP statuses: 200, "200-299", "2xx" or a list of them."""
    body_regex: str | None = None
    """A regular expression the response body must contain."""
    max_redirects: int = Field(default=3, ge=0, le=10)
    """Redirects followed at most (0-10)."""
    max_body: ByteSize = Field(default=ByteSize(64 * 1024), ge=1024, le=16 * 1024 * 1024)
    """Most body bytes read for body_regex."""
    tls: CheckTlsConfig = Field(default_factory=CheckTlsConfig)
    """TLS options for https:// URLs."""

    @model_validator(mode="after")
    def _target(self) -> Self:
        if (self.url is None) == (self.tcp is None):
            raise self._invalid("give exactly one of url (http:// or https://) or tcp (HOST:PORT)")
        if self.tcp is not None:
            try:
                host, port = split_host_port(self.tcp)
            except ValueError as err:
                raise self._invalid(f"tcp: {err}") from None
            if not host or port == 0:
                raise self._invalid(f"tcp: {self.tcp!r} needs a host and a port in 1-65535")
            http_only = {"expect_status", "body_regex", "max_redirects", "max_body", "tls"}
            if self.model_fields_set & http_only:
                keys = ", ".join(sorted(self.model_fields_set & http_only))
                raise self._invalid(f"{keys}: only for url checks, not tcp")
            return self
        url = str(self.url)
        scheme, sep, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if not sep or scheme.lower() not in ("http", "https") or not host or " " in url:
            raise self._invalid(
                f"url: {url!r} is not an http:// or https:// URL with a host, e.g. "
                "http://127.0.0.1:8080/healthz"
            )
        if scheme.lower() == "http" and "tls" in self.model_fields_set:
            raise self._invalid("tls: only for https:// URLs")
        if self.body_regex is not None:
            try:
                _check_regex(self.body_regex)
            except ValueError as err:
                raise self._invalid(f"body_regex: {err}") from None
        return self


class CustomCheckConfig(_CheckConfig):
    """A Nagios-style plugin: ``command`` is the argv, run without a shell."""

    command: tuple[str, ...] = Field(min_length=1)
    """The plugin's argv, run without a shell; the program as an absolute path."""
    max_output: ByteSize = Field(default=ByteSize(16 * 1024), ge=256, le=1024 * 1024)
    """Most output bytes kept; the rest is read and dropped."""
    env: tuple[str, ...] = ()
    """Names of environment variables passed through to the plugin (besides PATH and LC_ALL=C)."""

    @model_validator(mode="before")
    @classmethod
    def _argv(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("command"), str):
            raise ValueError(  # noqa: TRY004 - pydantic reports only ValueError as invalid
                "command: give the argv as a list, e.g. [/usr/lib/nagios/plugins/check_load, "
                "-w, '5,4,3'], not a shell string; checks never run through a shell"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        program = self.command[0]
        if not program.startswith("/"):
            raise self._invalid(f"command: the program must be an absolute path, got {program!r}")
        if any("\0" in arg for arg in self.command):
            raise self._invalid("command: arguments must not contain NUL")
        bad = [name for name in self.env if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise self._invalid(f"env: {bad[0]!r} is not an environment variable name")
        return self


_C = TypeVar("_C", bound=_CheckConfig)


def _unique_checks(checks: tuple[_C, ...]) -> tuple[_C, ...]:
    seen: set[str] = set()
    for check in checks:
        if check.name in seen:
            raise ValueError(f"duplicate check name {check.name!r}; check names must be unique")
        seen.add(check.name)
    return checks


class EndpointsProbeConfig(ProbeConfig):
    """Endpoint checks; ``interval`` is each check's default and the longest report gap."""

    checks: tuple[EndpointCheckConfig, ...] = ()

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks: tuple[EndpointCheckConfig, ...]) -> tuple[EndpointCheckConfig, ...]:
        return _unique_checks(checks)


class CustomProbeConfig(ProbeConfig):
    """Custom (Nagios plugin) checks; ``interval`` is each check's default."""

    checks: tuple[CustomCheckConfig, ...] = ()

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks: tuple[CustomCheckConfig, ...]) -> tuple[CustomCheckConfig, ...]:
        return _unique_checks(checks)
