"""Loading playbooks: built-ins shipped in the package, then ``remediation.playbooks_dir``.

Every problem becomes a :class:`PlaybookError` whose issues name the file, the field
and what would be valid. A file in the directory whose playbook has a built-in's name
replaces that built-in (that is how an operator turns one to ``enforce``).

A built-in whose trigger names a rule the configuration does not have is *dormant*:
it is listed but never triggered. In the operator's own playbooks an unknown rule is
an error.
"""

from __future__ import annotations

__all__ = ["BUILTIN_DIR", "PlaybookError", "PlaybookLibrary", "load_playbooks"]

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.errors import ConfigError, ConfigIssue
from remediations.actions.base import Action
from remediations.model import Playbook, placeholders

BUILTIN_DIR = Path(__file__).parent / "playbooks"


class PlaybookError(ConfigError):
    """Raised when a playbook file is unreadable, not YAML, or does not validate."""


@dataclass(frozen=True, slots=True)
class PlaybookLibrary:
    """The loaded playbooks.

    Attributes:
        playbooks: active playbooks by name.
        dormant: built-ins left inactive, with the reason (a rule not configured).
        sources: the file each playbook came from.
    """

    playbooks: Mapping[str, Playbook] = field(default_factory=dict)
    dormant: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    def triggered_by(self, rule: str) -> list[Playbook]:
        """Active playbooks a condition of ``rule`` triggers, by name."""
        return [p for _, p in sorted(self.playbooks.items()) if rule in p.trigger.conditions]


def load_playbooks(
    directory: Path | None,
    *,
    actions: Mapping[str, type[Action]],
    rules: Collection[str],
    builtin_dir: Path | None = BUILTIN_DIR,
) -> PlaybookLibrary:
    """Load and validate the built-ins and the operator's playbooks.

    Args:
        directory: ``remediation.playbooks_dir`` (``*.yaml`` and ``*.yml``), or None.
        actions: the action classes steps may name, by name.
        rules: the configured rule names triggers may refer to.
        builtin_dir: the shipped playbooks; None to leave them out.

    Raises:
        PlaybookError: listing every issue with its file and field.
    """
    issues: list[ConfigIssue] = []
    playbooks: dict[str, Playbook] = {}
    sources: dict[str, str] = {}
    dormant: dict[str, str] = {}
    if builtin_dir is not None:
        for path in _files(builtin_dir, issues):
            playbook = _load_file(path, issues)
            if playbook is None:
                continue
            absent = _check_steps(str(path), playbook, actions, issues, absent_ok=True)
            missing = [r for r in playbook.trigger.conditions if r not in rules]
            if absent:
                dormant[playbook.name] = f"action {', '.join(absent)} is not installed"
            elif missing:
                dormant[playbook.name] = f"rule {', '.join(missing)} is not configured"
            playbooks[playbook.name] = playbook
            sources[playbook.name] = str(path)
    if directory is not None:
        own: set[str] = set()
        for path in _files(directory, issues):
            playbook = _load_file(path, issues)
            if playbook is None or _check_steps(str(path), playbook, actions, issues):
                continue
            if playbook.name in own:
                issues.append(
                    ConfigIssue(
                        str(path),
                        "name",
                        f"playbook {playbook.name!r} is also defined in {sources[playbook.name]};"
                        " names must be unique",
                    )
                )
                continue
            for index, rule in enumerate(playbook.trigger.conditions):
                if rule not in rules:
                    known = ", ".join(sorted(rules)) or "none"
                    issues.append(
                        ConfigIssue(
                            str(path),
                            f"trigger.conditions[{index}]",
                            f"no rule named {rule!r} is configured (rules: {known})",
                        )
                    )
            own.add(playbook.name)
            dormant.pop(playbook.name, None)
            playbooks[playbook.name] = playbook
            sources[playbook.name] = str(path)
    if issues:
        raise PlaybookError(issues)
    active = {name: p for name, p in playbooks.items() if name not in dormant}
    return PlaybookLibrary(playbooks=active, dormant=dormant, sources=sources)


def _files(directory: Path, issues: list[ConfigIssue]) -> list[Path]:
    if not directory.is_dir():
        issues.append(ConfigIssue(str(directory), "", "playbook directory does not exist"))
        return []
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def _load_file(path: Path, issues: list[ConfigIssue]) -> Playbook | None:
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        issues.append(ConfigIssue(source, "", f"cannot read: {err.strerror}"))
        return None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        issues.append(ConfigIssue(source, "", f"invalid YAML: {where}{problem}"))
        return None
    if not isinstance(data, dict):
        kind = "nothing" if data is None else type(data).__name__
        issues.append(ConfigIssue(source, "", f"expected a playbook mapping, got {kind}"))
        return None
    try:
        return Playbook.model_validate(data)
    except ValidationError as err:
        issues.extend(_issue(source, error) for error in err.errors())
        return None


def _check_steps(
    source: str,
    playbook: Playbook,
    actions: Mapping[str, type[Action]],
    issues: list[ConfigIssue],
    *,
    absent_ok: bool = False,
) -> list[str]:
    """Check every step's action and params; returns the names of absent actions.

    An absent action is an issue unless ``absent_ok``; either way the result is truthy
    when the playbook cannot be used.
    """
    before = len(issues)
    absent: list[str] = []
    for where, steps in (("steps", playbook.steps), ("on_failure", playbook.on_failure)):
        for index, step in enumerate(steps):
            action = actions.get(step.action)
            if action is None:
                absent.append(step.action)
                if not absent_ok:
                    known = ", ".join(sorted(actions)) or "none installed"
                    issues.append(
                        ConfigIssue(
                            source,
                            f"{where}[{index}].action",
                            f"unknown action {step.action!r} (known: {known})",
                        )
                    )
                continue
            try:
                action.Params.model_validate(step.params)
            except ValidationError as err:
                prefix = f"{where}[{index}].params"
                templated = _templated_paths(step.params)
                issues.extend(
                    _issue(source, error, prefix=prefix, model=action.Params)
                    for error in err.errors()
                    if not _within(tuple(error["loc"]), templated)
                )
    if len(issues) > before and not absent:
        absent.append("(invalid params)")
    return absent


def _templated_paths(value: Any, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where ``value`` holds strings with placeholders (``{target}``, ``{labels.NAME}``).

    Such a value is only known per run, so it is validated when the run renders it; an
    error on it at load time (``'{target}'`` is not a unit name) says nothing.
    """
    if isinstance(value, str):
        return [at] if placeholders(value) else []
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in _templated_paths(item, (*at, key))]
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _templated_paths(item, (*at, i))]
    return []


def _within(loc: tuple[str | int, ...], templated: list[tuple[str | int, ...]]) -> bool:
    # So is an error of a nested model holding one (``match`` when ``match.group`` is
    # templated); the params' own model-level checks still run at load.
    return any(loc[: len(path)] == path or (loc and path[: len(loc)] == loc) for path in templated)


def _issue(source: str, error: Any, *, prefix: str = "", model: Any = Playbook) -> ConfigIssue:
    path = prefix
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key; {_valid_keys(model, error['loc'])}"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif (
        "input" in error
        and not isinstance(error["input"], dict | list)
        and (repr(error["input"]) not in message)
    ):
        message = f"{message} (got {error['input']!r})"
    return ConfigIssue(source, path, message)


def _valid_keys(model: Any, loc: Any) -> str:
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return "see the README for a playbook's fields"
        args = getattr(info.annotation, "__args__", None) or (info.annotation,)
        model = next((a for a in args if hasattr(a, "model_fields")), None)
    fields = getattr(model, "model_fields", None)
    if not fields:
        return "see the README for a playbook's fields"
    return "valid keys: " + ", ".join(fields)
