"""Which actions playbooks may name: the shipped registry plus modules named in the config.

``remediation.action_modules`` lists extra modules (site-specific actions, or the
recording action the tests use); each must expose ``ACTIONS: Mapping[str, type[Action]]``
like :mod:`remediations.actions.registry`.
"""

from __future__ import annotations

__all__ = ["ActionCatalogError", "available_actions"]

import importlib
from collections.abc import Iterable, Mapping

from agent.errors import AgentError
from remediations.actions.base import Action

_REGISTRY = "remediations.actions.registry"


class ActionCatalogError(AgentError):
    """Raised when an action module cannot be imported or does not expose ``ACTIONS``."""


def available_actions(modules: Iterable[str] = ()) -> dict[str, type[Action]]:
    """Every action by name: the shipped registry's, then each extra module's.

    Raises:
        ActionCatalogError: naming the module and what is wrong with it; also when two
            modules define the same action name.
    """
    actions: dict[str, type[Action]] = {}
    try:
        actions.update(_actions_of(_REGISTRY))
    except ActionCatalogError as err:
        if not isinstance(err.__cause__, ModuleNotFoundError) or err.__cause__.name != _REGISTRY:
            raise
        # The shipped actions are not installed (a trimmed build): only extra modules count.
    for module in modules:
        for name, action in _actions_of(module).items():
            if name in actions and actions[name] is not action:
                raise ActionCatalogError(
                    f"action module {module}: action {name!r} is defined twice"
                )
            actions[name] = action
    return actions


def _actions_of(module_name: str) -> Mapping[str, type[Action]]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ActionCatalogError(f"cannot import action module {module_name}: {err}") from err
    found = getattr(module, "ACTIONS", None)
    if not isinstance(found, Mapping):
        raise ActionCatalogError(
            f"action module {module_name} has no ACTIONS mapping of action names to classes"
        )
    for name, action in found.items():
        if getattr(action, "name", None) != name:
            raise ActionCatalogError(
                f"action module {module_name}: ACTIONS[{name!r}] is not an action named {name!r}"
            )
    return found
