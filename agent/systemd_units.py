"""What systemd says about units, as plain values: no D-Bus library here.

:mod:`agent.systemd_dbus` fills these from systemd's replies and signals; the probe and the
actions read them. Also the object-path encoding of unit names (``sd_bus_path_encode``).
"""

from __future__ import annotations

__all__ = [
    "UNIT_PATH_PREFIX",
    "WATCHED_PROPERTIES",
    "JobOutcome",
    "UnitChange",
    "UnitState",
    "unit_name_of_path",
    "unit_path",
]

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def unit_path(name: str) -> str:
    """The object path of unit ``name`` (systemd's ``sd_bus_path_encode``)."""
    raw = name.encode("utf-8")
    encoded = "".join(
        chr(b) if chr(b) in _LABEL_CHARS and not (i == 0 and chr(b).isdigit()) else f"_{b:02x}"
        for i, b in enumerate(raw)
    )
    return UNIT_PATH_PREFIX + (encoded or "_")


def unit_name_of_path(path: str) -> str | None:
    """The unit name an object path encodes, or None for a path that is not a unit's."""
    if not path.startswith(UNIT_PATH_PREFIX):
        return None
    encoded = path[len(UNIT_PATH_PREFIX) :]
    out = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] != "_":
            out.append(ord(encoded[i]))
            i += 1
            continue
        try:
            out.append(int(encoded[i + 1 : i + 3], 16))
        except ValueError:
            return None
        i += 3
    return out.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class UnitState:
    """What systemd says about one unit.

    Attributes:
        name: the unit's name (``nginx.service``).
        load_state: ``loaded``, ``not-found``, ``masked``, ``error``...
        active_state: ``active``, ``reloading``, ``inactive``, ``failed``, ``activating``,
            ``deactivating``.
        sub_state: the type's finer state (``running``, ``dead``, ``auto-restart``...).
        result: why it last stopped (``success``, ``exit-code``, ``signal``...); empty for
            unit types without one (targets, slices, devices).
        n_restarts: automatic restarts since the last manual start (services only).
        main_pid: the main process (services only; 0 when none).
        state_change: CLOCK_MONOTONIC seconds of the last active-state change (0: never).
    """

    name: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    result: str = ""
    n_restarts: int | None = None
    main_pid: int | None = None
    state_change: float = 0.0

    @property
    def active(self) -> bool:
        """Running or reloading."""
        return self.active_state in {"active", "reloading"}

    @property
    def failed(self) -> bool:
        """systemd put it in the ``failed`` state."""
        return self.active_state == "failed"

    def describe(self) -> str:
        """``active/running``, with the result when it is not ``success``."""
        text = f"{self.active_state}/{self.sub_state}"
        if self.result and self.result != "success":
            text += f" ({self.result})"
        return text

    def merged(self, properties: Mapping[str, Any]) -> UnitState:
        """This state with changed D-Bus properties (unpacked) applied."""
        changes: dict[str, Any] = {}
        for prop, attr in _PROPERTY_FIELDS.items():
            if prop in properties:
                changes[attr] = properties[prop]
        if "StateChangeTimestampMonotonic" in properties:
            changes["state_change"] = properties["StateChangeTimestampMonotonic"] / 1e6
        return replace(self, **changes) if changes else self


_PROPERTY_FIELDS = {
    "LoadState": "load_state",
    "ActiveState": "active_state",
    "SubState": "sub_state",
    "Result": "result",
    "NRestarts": "n_restarts",
    "MainPID": "main_pid",
}
WATCHED_PROPERTIES = frozenset([*_PROPERTY_FIELDS, "StateChangeTimestampMonotonic"])
"""The properties :class:`UnitState` is made of: a change to another one is no news."""


@dataclass(frozen=True, slots=True)
class UnitChange:
    """One signal from systemd about a unit.

    Attributes:
        kind: ``properties`` (PropertiesChanged), ``new`` (UnitNew, loaded), ``removed``
            (UnitRemoved, unloaded), ``job`` (JobRemoved: a job finished) or ``resync``
            (signals were dropped or systemd reloaded: read everything again).
        unit: the unit's name (empty for ``resync``).
        properties: for ``properties``, the changed values, unpacked.
        invalidated: for ``properties``, names whose new value must be read.
        received: CLOCK_MONOTONIC seconds when the signal was read off the socket.
    """

    kind: Literal["properties", "new", "removed", "job", "resync"]
    unit: str
    properties: Mapping[str, Any] = field(default_factory=dict)
    invalidated: tuple[str, ...] = ()
    received: float = 0.0


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a job systemd queued ended.

    Attributes:
        unit: the unit it was for.
        job: its object path.
        result: ``done``, ``canceled``, ``timeout``, ``failed``, ``dependency``, ``skipped``.
    """

    unit: str
    job: str
    result: str

    @property
    def ok(self) -> bool:
        """The job did what it was queued for."""
        return self.result == "done"
