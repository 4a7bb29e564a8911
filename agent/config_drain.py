"""Configuration of draining this node from its load balancers: ``remediation.drain``."""

from __future__ import annotations

__all__ = ["DrainConfig", "ExecDrainConfig", "HaproxyDrainConfig", "parse_socket_address"]

import re
from datetime import timedelta
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from agent.config_types import Duration
from agent.config_types import FrozenModel as _Frozen

_SERVER = re.compile(r"[^/\s]+/[^/\s]+")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]]+)):(?P<port>\d{1,5})")


def parse_socket_address(value: str) -> str | tuple[str, int]:
    """A runtime API address: a unix socket path, or ``(host, port)`` for ``host:port``.

    ``[::1]:9999`` names an IPv6 address.

    Raises:
        ValueError: naming the address and the two forms accepted.
    """
    if value.startswith("/"):
        if "\0" in value:
            raise ValueError("a socket path must not contain NUL")
        return value
    match = _HOST_PORT.fullmatch(value)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(
            f"{value!r} is neither an absolute unix socket path nor host:port "
            "(e.g. /run/haproxy/admin.sock or 127.0.0.1:9999)"
        )
    return (match["v6"] or match["host"], int(match["port"]))


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


class HaproxyDrainConfig(_Frozen):
    """HAProxy's runtime API and this host's server entries in it.

    HAProxy needs a stats socket at level admin, e.g. ``stats socket
    /run/haproxy/admin.sock mode 660 group nodemedic level admin`` or ``stats socket
    ipv4@127.0.0.1:9999 level admin``.
    """

    socket: str = "/run/haproxy/admin.sock"
    """The runtime API: a unix socket path or host:port."""
    servers: tuple[str, ...] = ()
    """This host's server entries as backend/server, e.g. [web/node-7, api/node-7]."""
    drain_timeout: Duration = timedelta(minutes=2)
    """How long drain waits for the servers' current sessions to reach zero."""
    maint_after_drain: bool = False
    """After the wait, put the servers in MAINT (health checks stop too)."""
    command_timeout: Duration = timedelta(seconds=5)
    """How long one runtime API command may take."""

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        parse_socket_address(value)
        return value

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for server in value:
            if not _SERVER.fullmatch(server):
                raise ValueError(f"{server!r} is not backend/server (e.g. web/node-7)")
        if len(set(value)) != len(value):
            raise ValueError("a server is listed twice")
        return value

    _durations = field_validator("drain_timeout", "command_timeout")(_positive)


class ExecDrainConfig(_Frozen):
    """Programs that drain and undrain this host on another load balancer.

    Each is run without a shell, with only PATH, LANG, LC_ALL and TZ passed through plus
    NODEMEDIC_NODE and NODEMEDIC_RUN; a nonzero exit fails the step. Both must be safe to
    run twice (drain a drained host, undrain one in service).
    """

    drain: tuple[str, ...] = ()
    """The drain command: an absolute program path and its arguments."""
    undrain: tuple[str, ...] = ()
    """The undrain command, likewise."""
    timeout: Duration = timedelta(minutes=2)
    """How long either may run before its process group is killed."""

    @field_validator("drain", "undrain")
    @classmethod
    def _argv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value and not value[0].startswith("/"):
            raise ValueError(f"{value[0]!r}: the program must be an absolute path")
        return value

    _timeout = field_validator("timeout")(_positive)


class DrainConfig(_Frozen):
    """How ``drain.node`` and ``undrain.node`` take this node out of service and back.

    They run the action ``drain.<method>`` / ``undrain.<method>``, so built-in
    playbooks work whatever the load balancer.
    """

    method: Literal["none", "haproxy", "kubernetes", "exec"] = "none"
    """none (drain.node refuses), haproxy, kubernetes or exec."""
    haproxy: HaproxyDrainConfig = Field(default_factory=HaproxyDrainConfig)
    """HAProxy runtime API settings (method haproxy)."""
    exec: ExecDrainConfig = Field(default_factory=ExecDrainConfig)
    """Drain and undrain commands (method exec)."""

    @model_validator(mode="after")
    def _method_configured(self) -> Self:
        if self.method == "haproxy" and not self.haproxy.servers:
            raise ValueError(
                "method is haproxy but haproxy.servers is empty; list this host's "
                "entries as backend/server"
            )
        if self.method == "exec" and not (self.exec.drain and self.exec.undrain):
            raise ValueError("method is exec: set both exec.drain and exec.undrain")
        return self
