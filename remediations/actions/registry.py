"""Every action kind by the name playbooks use.

Each action module exports a tuple ``ACTIONS`` of its classes; adding a module is one
line in ``_MODULES``. Names must be unique: a clash fails at import, not at run time.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "UnknownActionError", "get_action", "is_disruptive", "is_idempotent"]

from collections.abc import Mapping
from types import MappingProxyType

from pydantic import BaseModel

from remediations.actions import (
    disk,
    drain,
    event,
    haproxy,
    journald,
    kubernetes,
    process,
    systemd,
)
from remediations.actions import exec as exec_action
from remediations.actions.base import Action, ActionError

_MODULES = (disk, drain, event, exec_action, haproxy, journald, kubernetes, process, systemd)


def _collect() -> Mapping[str, type[Action]]:
    found: dict[str, type[Action]] = {}
    for module in _MODULES:
        for cls in module.ACTIONS:
            if cls.name in found:
                raise RuntimeError(
                    f"action name {cls.name!r} is used by {found[cls.name].__qualname__} "
                    f"and {cls.__qualname__}"
                )
            found[cls.name] = cls
    return MappingProxyType(dict(sorted(found.items())))


ACTIONS: Mapping[str, type[Action]] = _collect()
"""Action classes by name, sorted by name."""


class UnknownActionError(ActionError):
    """Raised when a playbook names an action that does not exist."""


def get_action(name: str) -> type[Action]:
    """The action class called ``name``.

    Raises:
        UnknownActionError: naming the unknown action and listing the known ones.
    """
    try:
        return ACTIONS[name]
    except KeyError:
        raise UnknownActionError(
            f"unknown action {name!r}; known actions: {', '.join(ACTIONS)}"
        ) from None


def is_disruptive(action: type[Action], params: BaseModel) -> bool:
    """Whether this step is disruptive: its ``disruptive`` param if it has one (``exec``)."""
    value = getattr(params, "disruptive", action.disruptive)
    return bool(value)


def is_idempotent(action: type[Action], params: BaseModel) -> bool:
    """Whether this step may be repeated: its ``idempotent`` param if it has one (``exec``)."""
    value = getattr(params, "idempotent", action.idempotent)
    return bool(value)
