"""The agent's exceptions: one root, one subclass per boundary."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "BusClosedError",
    "ConfigError",
    "ConfigIssue",
    "KubernetesError",
    "ProbeError",
    "ProbeTimeoutError",
    "StoreCorruptError",
    "StoreError",
    "SystemdError",
]

from dataclasses import dataclass


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class BusClosedError(AgentError):
    """Raised when reading a subscription that has ended, or subscribing to a closed bus."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One thing wrong with a configuration.

    Attributes:
        source: the file (or ``env`` / ``credentials``) the value came from.
        path: dotted field path, e.g. ``rules[2].clear``.
        message: what is wrong and what would be valid.
    """

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


class ConfigError(AgentError):
    """Raised when a configuration file, its rules or its environment overrides are invalid."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class KubernetesError(AgentError):
    """Raised when the Kubernetes API cannot be reached, refuses a request, or is not configured.

    Attributes:
        status: the HTTP status the API server answered (404, 429...), None when none came.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProbeError(AgentError):
    """Raised when a probe cannot read its source (a file, a syscall, psutil)."""


class ProbeTimeoutError(ProbeError):
    """Raised when a probe's blocking work does not finish within its timeout."""


class StoreError(AgentError):
    """Raised when the SQLite store cannot be opened, migrated or written."""


class StoreCorruptError(StoreError):
    """Raised when the database file is damaged or not a SQLite database at all."""


class SystemdError(AgentError):
    """Raised when systemd refuses a D-Bus call, does not answer in time, or the bus is gone.

    Attributes:
        unit: the unit the call was about, if any.
        dbus_error: the D-Bus error name (``org.freedesktop.systemd1.NoSuchUnit``,
            ``org.freedesktop.DBus.Error.Disconnected`` when the bus is gone...), if any.
    """

    def __init__(
        self, message: str, *, unit: str | None = None, dbus_error: str | None = None
    ) -> None:
        super().__init__(message)
        self.unit = unit
        self.dbus_error = dbus_error
