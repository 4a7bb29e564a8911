"""A playbook's steps rendered for one target: can they run, are they disruptive, idempotent.

A step's params may hold placeholders, so what a step *is* depends on the run: an
``exec`` step says in its params whether it is disruptive or idempotent, and a check
named ``api-health`` renders ``systemd.restart_unit {unit: api-health}``, which is no unit.
These answers come from the rendered, validated params through
:func:`remediations.actions.registry.is_disruptive` and
:func:`~remediations.actions.registry.is_idempotent`, never from the class alone.
"""

from __future__ import annotations

__all__ = [
    "on_failure_idempotent",
    "params_problem",
    "playbook_disruptive",
    "step_idempotent",
    "step_params",
]

from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from remediations.actions.base import Action
from remediations.actions.registry import is_disruptive, is_idempotent
from remediations.model import Playbook, RenderError, Step, render_params


def step_params(
    actions: Mapping[str, type[Action]], step: Step, target: str, labels: Mapping[str, str]
) -> tuple[type[Action], BaseModel] | None:
    """A step's action and its params rendered for ``target``; None if the action is gone.

    Raises:
        RenderError: a placeholder names a label the condition does not carry.
        ValidationError: the rendered params do not validate.
    """
    action = actions.get(step.action)
    if action is None:
        return None
    rendered = render_params(step.params, labels=labels, target=target)
    return action, action.Params.model_validate(rendered)


def params_problem(
    actions: Mapping[str, type[Action]],
    playbook: Playbook,
    target: str,
    labels: Mapping[str, str],
) -> str | None:
    """Why the playbook's steps cannot be rendered for ``target``, or None if they can."""
    for where, steps in (("steps", playbook.steps), ("on_failure", playbook.on_failure)):
        for index, step in enumerate(steps):
            try:
                step_params(actions, step, target, labels)
            except RenderError as err:
                return f"{where}[{index}] {step.action}: {err}"
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(part) for part in e['loc']) or 'params'}: "
                    f"{str(e['msg']).removeprefix('Value error, ')}"
                    for e in err.errors()
                )
                return f"{where}[{index}] {step.action} params for {target!r}: {problems}"
    return None


def playbook_disruptive(
    actions: Mapping[str, type[Action]],
    playbook: Playbook,
    target: str,
    labels: Mapping[str, str],
) -> bool:
    """The playbook says so, or one of its steps is disruptive with its rendered params.

    A step whose params cannot be rendered counts as disruptive: in doubt, the stricter
    gates apply.
    """
    if playbook.disruptive:
        return True
    for step in playbook.steps:
        try:
            found = step_params(actions, step, target, labels)
        except (RenderError, ValidationError):
            return True
        if found is not None and is_disruptive(*found):
            return True
    return False


def step_idempotent(
    actions: Mapping[str, type[Action]],
    playbook: Playbook,
    index: int,
    target: str,
    labels: Mapping[str, str],
) -> bool:
    """Whether step ``index`` may run again after a crash, with its rendered params.

    False when there is no such step, its action is gone or its params no longer render.
    """
    if not 0 <= index < len(playbook.steps):
        return False
    try:
        found = step_params(actions, playbook.steps[index], target, labels)
    except (RenderError, ValidationError):
        return False
    return found is not None and is_idempotent(*found)


def on_failure_idempotent(
    actions: Mapping[str, type[Action]],
    playbook: Playbook,
    target: str,
    labels: Mapping[str, str],
) -> bool:
    """Whether the playbook has ``on_failure`` steps and each may run without knowing the state.

    Such steps (``undrain.node``, ``event.escalate``) are what a run abandoned mid-way
    (the agent crashed or stopped) runs before it is marked interrupted: how far the run
    got is unknown, so only steps that are safe to run twice, or for nothing, qualify.
    """
    if not playbook.on_failure:
        return False
    for step in playbook.on_failure:
        try:
            found = step_params(actions, step, target, labels)
        except (RenderError, ValidationError):
            return False
        if found is None or not is_idempotent(*found):
            return False
    return True
