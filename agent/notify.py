"""sd_notify: tell systemd when the agent is ready, alive, busy or stopping.

Every call is harmless without ``NOTIFY_SOCKET`` (not started by systemd).
"""

from __future__ import annotations

__all__ = ["Notifier", "SystemdNotifier", "watchdog_interval"]

import importlib
import logging
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Protocol

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """Sends sd_notify state strings."""

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``READY=1``); True when systemd received it."""
        ...


class SystemdNotifier:
    """Notifier backed by libsystemd's ``sd_notify`` (systemd-python).

    ``systemd.daemon`` (about 0.7 MB resident) is imported on the first notification
    under systemd: an agent started without ``NOTIFY_SOCKET`` (a container) never loads it.
    """

    def __init__(self) -> None:
        self._daemon: ModuleType | None = None
        self._missing = False

    def notify(self, state: str) -> bool:
        """Send ``state``; never raises."""
        if self._missing or not os.environ.get("NOTIFY_SOCKET"):
            return False
        daemon = self._daemon if self._daemon is not None else self._load()
        if daemon is None:
            return False
        try:
            return bool(daemon.notify(state))
        except OSError as err:  # a vanished socket must not stop the agent
            log.debug("sd_notify(%s) failed: %s", state, err)
            return False

    def _load(self) -> ModuleType | None:
        try:
            self._daemon = importlib.import_module("systemd.daemon")
        except ImportError:  # pragma: no cover - systemd-python is a dependency
            log.warning("systemd-python is not installed; sd_notify is disabled")
            self._missing = True
        return self._daemon


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings systemd expects (half of WatchdogSec), or None.

    Follows sd_watchdog_enabled(3): ``WATCHDOG_USEC`` is set and ``WATCHDOG_PID``, when
    set, names this process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 1e6 / 2 if value > 0 else None
