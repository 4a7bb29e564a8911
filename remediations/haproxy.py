"""A small asyncio client of HAProxy's runtime API (the stats socket at level admin).

One command per connection, in HAProxy's non-interactive mode: the client sends the
command and a newline, HAProxy answers and closes. Every command runs under a timeout.
Failures become :class:`HaproxyError` with a message a human can act on: the socket is
missing, access is denied, nothing listens, or HAProxy's own answer (``No such server.``)
naming the server asked about.
"""

from __future__ import annotations

__all__ = [
    "ADMIN_DRAIN",
    "ADMIN_MAINT",
    "HaproxyError",
    "RuntimeApi",
    "ServerState",
    "split_server",
]

import asyncio
import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agent.config_drain import parse_socket_address
from agent.errors import AgentError

ADMIN_MAINT = 0x01 | 0x02 | 0x20
"""``srv_admin_state`` bits of maintenance: forced, inherited, from DNS resolution."""
ADMIN_DRAIN = 0x08 | 0x10
"""``srv_admin_state`` bits of drain: forced, inherited."""
_FORCED = 0x01 | 0x08
"""The bits ``set server ... state`` sets (maint, drain); ``ready`` clears both."""
_MAX_ANSWER = 16 * 1024 * 1024


class HaproxyError(AgentError):
    """Raised when the runtime API cannot be reached, times out or refuses a command."""


def split_server(name: str) -> tuple[str, str]:
    """``web/node-7`` as ``("web", "node-7")``.

    Raises:
        HaproxyError: when ``name`` is not backend/server.
    """
    backend, sep, server = name.partition("/")
    if not sep or not backend or not server or "/" in server:
        raise HaproxyError(f"{name!r} is not backend/server (e.g. web/node-7)")
    return backend, server


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server entry as ``show servers state`` and ``show stat`` report it.

    Attributes:
        name: backend/server.
        admin_state: ``srv_admin_state`` (bits: 0x01 forced maint, 0x08 forced drain...).
        op_state: ``srv_op_state`` (0 stopped, 1 starting, 2 running, 3 stopping).
        sessions: current sessions (``scur`` of ``show stat``), None when not asked.
    """

    name: str
    admin_state: int
    op_state: int
    sessions: int | None = None

    @property
    def admin(self) -> Literal["maint", "drain", "ready"]:
        """The administrative state: maint wins over drain."""
        if self.admin_state & ADMIN_MAINT:
            return "maint"
        if self.admin_state & ADMIN_DRAIN:
            return "drain"
        return "ready"

    @property
    def forced(self) -> bool:
        """The runtime API (or the state file) forced drain or maint on it."""
        return bool(self.admin_state & _FORCED)


class RuntimeApi:
    """HAProxy's runtime API at ``address`` (a unix socket path or ``host:port``).

    Args:
        address: where the stats socket listens.
        timeout: seconds one command may take (connect, send, the whole answer).
    """

    def __init__(self, address: str, *, timeout: float = 5.0) -> None:
        try:
            self._target = parse_socket_address(address)
        except ValueError as err:
            raise HaproxyError(f"HAProxy runtime API address: {err}") from None
        self.address = address
        self._timeout = timeout

    async def command(self, line: str) -> str:
        """Send one command; its answer with the trailing blank line stripped.

        Raises:
            HaproxyError: the socket is missing, access is denied, nothing listens, the
                answer took longer than the timeout, or the command contains a newline.
        """
        if "\n" in line or "\r" in line or ";" in line:
            raise HaproxyError(f"refusing a runtime API command with a separator: {line!r}")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(line)
        except TimeoutError:
            raise HaproxyError(
                f"HAProxy runtime API {self.address} did not answer {line!r} "
                f"within {self._timeout:g}s"
            ) from None
        except FileNotFoundError:
            raise HaproxyError(
                f"HAProxy stats socket {self.address} does not exist; is HAProxy running "
                f"with 'stats socket {self.address} level admin'?"
            ) from None
        except PermissionError:
            raise HaproxyError(
                f"permission denied on HAProxy stats socket {self.address}; give the "
                "agent's user access (stats socket ... mode 660 group <its group>)"
            ) from None
        except ConnectionRefusedError:
            raise HaproxyError(
                f"nothing listens on HAProxy runtime API {self.address}; is HAProxy running?"
            ) from None
        except OSError as err:
            raise HaproxyError(
                f"HAProxy runtime API {self.address}: {err.strerror or err}"
            ) from None

    async def _exchange(self, line: str) -> str:
        if isinstance(self._target, str):
            reader, writer = await asyncio.open_unix_connection(self._target)
        else:
            reader, writer = await asyncio.open_connection(*self._target)
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answer = bytearray()
            while chunk := await reader.read(64 * 1024):
                answer += chunk
                if len(answer) > _MAX_ANSWER:
                    raise HaproxyError(f"answer to {line!r} is over {_MAX_ANSWER} bytes")
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # HAProxy closed first; nothing is lost
                await writer.wait_closed()
        text = answer.decode(errors="replace").rstrip("\n")
        if text.startswith(("Permission denied", "Unknown command")):
            raise HaproxyError(
                f"HAProxy runtime API {self.address} refused {line.split(maxsplit=1)[0]!r}: "
                f"{text.splitlines()[0]} (the stats socket needs 'level admin')"
            )
        return text

    async def set_state(self, server: str, state: Literal["ready", "drain", "maint"]) -> None:
        """``set server <backend>/<server> state <state>``.

        Raises:
            HaproxyError: HAProxy's answer (``No such server.``) with the server's name.
        """
        split_server(server)
        answer = await self.command(f"set server {server} state {state}")
        if answer.strip():
            raise HaproxyError(f"HAProxy refused to set {server} to {state}: {answer.strip()}")

    async def servers(self, names: Sequence[str]) -> dict[str, ServerState]:
        """The admin and operational state and current sessions of each of ``names``.

        Raises:
            HaproxyError: a backend or server HAProxy does not have, named.
        """
        found: dict[str, ServerState] = {}
        for backend in dict.fromkeys(split_server(name)[0] for name in names):
            answer = await self.command(f"show servers state {backend}")
            found.update(_parse_servers_state(backend, answer))
        # -1 4 -1: every proxy, servers only (4), every server.
        sessions = _parse_sessions(await self.command("show stat -1 4 -1"))
        missing = [name for name in names if name not in found]
        if missing:
            raise HaproxyError(
                f"HAProxy ({self.address}) has no server {', '.join(missing)}; "
                "check remediation.drain.haproxy.servers against its backends"
            )
        return {
            name: ServerState(
                name, found[name].admin_state, found[name].op_state, sessions.get(name, 0)
            )
            for name in names
        }


def _parse_servers_state(backend: str, answer: str) -> dict[str, ServerState]:
    lines = answer.splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise HaproxyError(f"HAProxy has no backend {backend!r}: {answer.strip() or 'no answer'}")
    header = next((ln[2:].split() for ln in lines if ln.startswith("# ")), None)
    if header is None:
        raise HaproxyError(f"unexpected answer to 'show servers state {backend}': {answer!r}")
    found = {}
    for row in lines[1:]:
        if not row.strip() or row.startswith("#"):
            continue
        fields = dict(zip(header, row.split(), strict=False))
        name = f"{fields['be_name']}/{fields['srv_name']}"
        found[name] = ServerState(name, int(fields["srv_admin_state"]), int(fields["srv_op_state"]))
    return found


def _parse_sessions(answer: str) -> dict[str, int]:
    """Current sessions (``scur``) by backend/server from ``show stat`` CSV."""
    reader = csv.DictReader(io.StringIO(answer.removeprefix("# ")))
    sessions = {}
    for row in reader:
        if row.get("svname") in ("FRONTEND", "BACKEND") or not row.get("pxname"):
            continue
        sessions[f"{row['pxname']}/{row['svname']}"] = int(row.get("scur") or 0)
    return sessions
