"""Playbooks: the built-ins load, templates render only what they may, bad files are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.config import AgentSettings
from remediations.actions.registry import ACTIONS as REGISTRY
from remediations.library import BUILTIN_DIR, PlaybookError, load_playbooks
from remediations.model import Mode, RenderError, placeholders, render, render_params
from remediations.service import load_library
from remediations.steps import params_problem
from tests import remediation_actions

BAD = Path(__file__).resolve().parents[2] / "fixtures" / "bad-playbooks"
RULES = [rule.name for rule in AgentSettings().rules]
ACTIONS = remediation_actions.ACTIONS


def _corpus() -> list[Path]:
    return sorted(BAD.glob("*.yaml"))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_each_malformed_playbook_is_refused_naming_file_and_field(
    path: Path, tmp_path: Path
) -> None:
    expected = path.read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect: ")
    shutil.copy(path, tmp_path / path.name)
    with pytest.raises(PlaybookError) as caught:
        load_playbooks(tmp_path, actions=ACTIONS, rules=RULES, builtin_dir=None)
    message = str(caught.value)
    assert str(tmp_path / path.name) in message
    assert expected in message


def test_the_corpus_covers_many_mistakes() -> None:
    assert len(_corpus()) >= 15


def test_builtins_ship_in_observe_mode_and_wait_for_their_rules_and_actions() -> None:
    library = load_playbooks(None, actions=ACTIONS, rules=RULES)
    names = set(library.playbooks) | set(library.dormant)
    assert names == {
        "drain-on-hardware-error",
        "restart-failed-unit",
        "restart-unit-failing-check",
        "clean-full-filesystem",
        "stop-runaway-process-group",
    }
    for path in BUILTIN_DIR.glob("*.yaml"):
        assert "mode: observe" in path.read_text(encoding="utf-8")
    # Without the systemd action and the unit rule, the restart playbook cannot trigger.
    assert "restart-failed-unit" in library.dormant


def test_an_operator_playbook_replaces_the_builtin_of_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "name: clean-full-filesystem\nmode: enforce\ntarget: '{labels.mountpoint}'\n"
        "trigger: {conditions: [filesystem-almost-full]}\n"
        "steps: [{action: test.record, params: {log: /tmp/x}}]\n",
        encoding="utf-8",
    )
    library = load_playbooks(tmp_path, actions=ACTIONS, rules=RULES)
    playbook = library.playbooks["clean-full-filesystem"]
    assert playbook.mode is Mode.ENFORCE
    assert library.triggered_by("filesystem-almost-full") == [playbook]
    assert library.sources["clean-full-filesystem"] == str(tmp_path / "mine.yaml")


def test_a_new_playbook_defaults_to_observe(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text(
        "name: p\ntarget: '{labels.mountpoint}'\ntrigger: {conditions: [filesystem-full]}\n"
        "steps: [{action: test.record, params: {log: /tmp/x}}]\n",
        encoding="utf-8",
    )
    library = load_playbooks(tmp_path, actions=ACTIONS, rules=RULES, builtin_dir=None)
    assert library.playbooks["p"].mode is Mode.OBSERVE


def test_duplicate_names_in_the_directory_are_refused(tmp_path: Path) -> None:
    body = (
        "name: twin\ntarget: '{labels.mountpoint}'\ntrigger: {conditions: [filesystem-full]}\n"
        "steps: [{action: test.record, params: {log: /tmp/x}}]\n"
    )
    (tmp_path / "a.yaml").write_text(body, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(body, encoding="utf-8")
    with pytest.raises(PlaybookError, match=r"b\.yaml: name: playbook 'twin' is also defined"):
        load_playbooks(tmp_path, actions=ACTIONS, rules=RULES, builtin_dir=None)


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError, match="playbook directory does not exist"):
        load_playbooks(tmp_path / "nope", actions=ACTIONS, rules=RULES)


def test_render_substitutes_labels_and_target_only() -> None:
    labels = {"unit": "web.service"}
    assert render("{labels.unit}", labels=labels) == "web.service"
    assert render_params(
        {"unit": "{target}", "args": ["--unit={labels.unit}", 3]}, labels=labels, target="t"
    ) == {"unit": "t", "args": ["--unit=web.service", 3]}
    with pytest.raises(RenderError, match="no label 'mountpoint'"):
        render("{labels.mountpoint}", labels=labels)
    with pytest.raises(ValueError, match=r"unknown placeholder \{labels\.unit\.__class__\}"):
        placeholders("{labels.unit.__class__}")
    with pytest.raises(ValueError, match="unbalanced brace"):
        placeholders("{labels.unit")


def test_every_builtin_validates_against_the_real_actions_and_default_rules() -> None:
    """On a default configuration every built-in can trigger: none is dormant."""
    settings = AgentSettings()
    actions, library = load_library(settings)
    assert library.dormant == {}
    assert set(library.playbooks) == {
        "drain-on-hardware-error",
        "restart-failed-unit",
        "restart-unit-failing-check",
        "clean-full-filesystem",
        "stop-runaway-process-group",
    }
    rules = {rule.name for rule in settings.rules}
    for playbook in library.playbooks.values():
        assert playbook.mode is Mode.OBSERVE
        assert set(playbook.trigger.conditions) <= rules
        # Every step renders and validates for a plausible target of its rule.
        target = {
            "drain-on-hardware-error": "node",
            "restart-failed-unit": "nginx.service",
            "restart-unit-failing-check": "nginx.service",
            "clean-full-filesystem": "/var",
            "stop-runaway-process-group": "web",
        }[playbook.name]
        assert params_problem(actions, playbook, target, {}) is None, playbook.name


def test_templated_params_are_checked_per_run_and_the_rest_at_load(tmp_path: Path) -> None:
    body = (
        "name: p\ntarget: '{labels.unit}'\ntrigger: {conditions: [unit-failed]}\n"
        "steps: [{action: systemd.restart_unit, params: {unit: %s}}]\n"
    )
    (tmp_path / "p.yaml").write_text(body % "'{target}'", encoding="utf-8")
    library = load_playbooks(tmp_path, actions=REGISTRY, rules=RULES, builtin_dir=None)
    assert "p" in library.playbooks
    (tmp_path / "p.yaml").write_text(body % "'nginx'", encoding="utf-8")
    with pytest.raises(PlaybookError, match=r"p\.yaml: steps\[0\]\.params\.unit: invalid unit"):
        load_playbooks(tmp_path, actions=REGISTRY, rules=RULES, builtin_dir=None)
