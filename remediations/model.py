"""Playbooks: what to do about a condition, and how carefully.

A :class:`Playbook` is YAML validated into frozen pydantic models (``extra="forbid"``)
in exactly the shape the remediation issue documents. Strings in ``target`` and in step
``params`` may hold placeholders, rendered per run by :func:`render`: ``{labels.NAME}``
(the triggering condition's label) and, in params, ``{target}`` (the rendered target).
Nothing else is substituted, so a playbook can never reach into the agent's objects.
"""

from __future__ import annotations

__all__ = [
    "Breaker",
    "LoopGuard",
    "Mode",
    "Playbook",
    "Precondition",
    "RenderError",
    "RunLimit",
    "RunState",
    "Safety",
    "Step",
    "Trigger",
    "Verify",
    "placeholders",
    "render",
    "render_params",
]

import enum
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.config import Duration
from agent.errors import AgentError

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RenderError(AgentError):
    """Raised when a template names a label the triggering condition does not carry."""


class Mode(enum.StrEnum):
    """How far a playbook may go: record only, rehearse, or act."""

    OBSERVE = "observe"
    """Evaluate every gate and emit ``would_run`` with the exact steps; touch nothing."""
    DRY_RUN = "dry_run"
    """Run the steps with ``dry_run`` set: each action reports what it would do."""
    ENFORCE = "enforce"
    """Act."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def placeholders(template: str) -> list[str]:
    """The placeholder names in ``template`` (``target``, ``labels.unit``).

    Raises:
        ValueError: on a stray brace or a placeholder other than ``{target}`` and
            ``{labels.NAME}``, naming it and what is allowed.
    """
    names = _PLACEHOLDER.findall(template)
    if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
        raise ValueError(f"unbalanced brace in {template!r}; placeholders look like {{target}}")
    for name in names:
        if name == "target":
            continue
        label = name.removeprefix("labels.")
        if name.startswith("labels.") and _LABEL_NAME.fullmatch(label):
            continue
        raise ValueError(
            f"unknown placeholder {{{name}}} in {template!r}; "
            "only {target} and {labels.NAME} are substituted"
        )
    return names


def render(template: str, *, labels: Mapping[str, str], target: str | None = None) -> str:
    """Substitute ``{labels.NAME}`` and ``{target}`` in ``template``.

    Raises:
        RenderError: if a label is missing or ``{target}`` is used where there is none.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "target":
            if target is None:
                raise RenderError(f"{template!r}: {{target}} is not available here")
            return target
        label = name.removeprefix("labels.")
        if label not in labels:
            have = ", ".join(sorted(labels)) or "none"
            raise RenderError(
                f"{template!r}: the condition has no label {label!r} (its labels: {have})"
            )
        return labels[label]

    return _PLACEHOLDER.sub(value, template)


def render_params(params: Any, *, labels: Mapping[str, str], target: str) -> Any:
    """Render every string inside ``params`` (nested mappings and lists included)."""
    if isinstance(params, str):
        return render(params, labels=labels, target=target)
    if isinstance(params, Mapping):
        return {
            key: render_params(item, labels=labels, target=target) for key, item in params.items()
        }
    if isinstance(params, list | tuple):
        return [render_params(item, labels=labels, target=target) for item in params]
    return params


def _check_templates(value: Any) -> None:
    if isinstance(value, str):
        placeholders(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_templates(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_templates(item)


class Trigger(_Frozen):
    """What starts a run: conditions going to firing, and whether remote commands may."""

    conditions: tuple[str, ...] = ()
    remote: bool = False


class Precondition(_Frozen):
    """A fact re-checked right before the steps run."""

    condition_firing: bool = Field(
        description="true: the triggering condition must still be firing; false: must not be"
    )


class Step(_Frozen):
    """One action with its params, a timeout and how often to retry it."""

    action: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=30)
    retries: int = Field(default=0, ge=0, le=5)

    @field_validator("params")
    @classmethod
    def _templates(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_templates(value)
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(milliseconds=10) <= value <= timedelta(hours=1):
            raise ValueError("timeout must be between 10ms and 1h")
        return value


class Verify(_Frozen):
    """How a run proves it worked."""

    condition_resolved_within: Duration | None = None


class RunLimit(_Frozen):
    """At most ``count`` runs of a playbook (all targets) per ``per``."""

    count: int = Field(ge=1)
    per: Duration


class Breaker(_Frozen):
    """``failures`` failed runs in a row open the breaker; it half-opens after ``reset_after``."""

    failures: int = Field(default=3, ge=1)
    reset_after: Duration = timedelta(hours=1)


class LoopGuard(_Frozen):
    """The condition back within ``within`` of a success, ``returns`` times, trips the breaker."""

    returns: int = Field(default=3, ge=1)
    within: Duration = timedelta(minutes=30)


class Safety(_Frozen):
    """Limits on how often a playbook acts."""

    cooldown: Duration = timedelta(minutes=5)
    max_runs: RunLimit = Field(default_factory=lambda: RunLimit(count=3, per=timedelta(hours=1)))
    breaker: Breaker = Field(default_factory=Breaker)
    loop_guard: LoopGuard = Field(default_factory=LoopGuard)
    approval: Literal["none", "required"] = "none"
    approval_timeout: Duration = timedelta(hours=1)


class Playbook(_Frozen):
    """A validated playbook; see the README's remediation section for every field."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    description: str = ""
    mode: Mode = Mode.OBSERVE
    trigger: Trigger = Field(default_factory=Trigger)
    target: str = Field(min_length=1)
    disruptive: bool = False
    preconditions: tuple[Precondition, ...] = ()
    steps: tuple[Step, ...] = Field(min_length=1)
    verify: Verify = Field(default_factory=Verify)
    on_failure: tuple[Step, ...] = ()
    leave_drained: bool = Field(
        default=False,
        description="a run that drains the node (a drain.* step) leaves it drained when it "
        "fails or is abandoned, for a human; otherwise on_failure must undrain it",
    )
    safety: Safety = Field(default_factory=Safety)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if "target" in placeholders(value):
            raise ValueError("target cannot refer to {target}; use {labels.NAME}")
        return value

    @model_validator(mode="after")
    def _triggered_somehow(self) -> Self:
        if not self.trigger.conditions and not self.trigger.remote:
            raise ValueError(
                "trigger: name at least one condition (trigger.conditions) or allow remote runs"
            )
        drains = any(step.action.startswith("drain.") for step in self.steps)
        undrains = any(step.action.startswith("undrain.") for step in self.on_failure)
        if drains and not undrains and not self.leave_drained:
            raise ValueError(
                "the steps drain the node but on_failure does not undrain it: add "
                "'- action: undrain.node' to on_failure so a failed or abandoned run puts the "
                "node back, or set leave_drained: true to leave it out for a human"
            )
        if self.leave_drained and undrains:
            raise ValueError("leave_drained is true but on_failure undrains the node; pick one")
        if not self.trigger.conditions and placeholders(self.target):
            raise ValueError(
                "target uses condition labels but trigger.conditions is empty; "
                "a remote-only playbook needs a fixed target"
            )
        return self

    @property
    def label_names(self) -> frozenset[str]:
        """The labels the target template needs."""
        return frozenset(name.removeprefix("labels.") for name in placeholders(self.target))

    def target_for(self, labels: Mapping[str, str]) -> str:
        """The target rendered from a condition's labels.

        Raises:
            RenderError: if a label the target needs is missing.
        """
        return render(self.target, labels=labels)


class RunState(enum.StrEnum):
    """Where a run stands in the journal."""

    REQUESTED = "requested"
    """Recorded; the gates have not answered yet."""
    GATED = "gated"
    """Passed the gates at trigger time; waiting to execute."""
    RUNNING = "running"
    """Executing step ``step`` (0-based)."""
    VERIFYING = "verifying"
    """Every step done; waiting for the condition to resolve."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    """A gate said no (or, in observe mode, the run was only recorded as would-run)."""
    INTERRUPTED = "interrupted"
    """The agent stopped mid-run and the run could not safely resume."""
    AWAITING_APPROVAL = "awaiting_approval"
    """Every gate but approval said yes; waiting for a signed approval until its deadline."""

    @property
    def active(self) -> bool:
        """True while the run holds its target (running or verifying)."""
        return self in (RunState.RUNNING, RunState.VERIFYING)

    @property
    def final(self) -> bool:
        """True once the run has ended."""
        return self in _FINAL


_FINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.SKIPPED, RunState.INTERRUPTED})
