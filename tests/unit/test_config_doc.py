"""docs/configuration.md is generated from the config models and must not go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from agent.config import AgentSettings
from agent.config_doc import CONFIG_REFERENCE, render
from tests.conftest import REPO


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every setting's dotted path (``mqtt.tls.ca_file``; ``rules[].name`` for list items)."""
    paths = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}" if prefix else (info.alias or name)
        annotation = info.annotation
        items = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_leaf_paths(annotation, path))
        elif len(items) == 1 and isinstance(items[0], type) and issubclass(items[0], BaseModel):
            paths.append(path)
            paths.extend(_leaf_paths(items[0], f"{path}[]"))
        else:
            paths.append(path)
    return paths


def _rows(text: str) -> dict[str, list[str]]:
    """key -> [type, default, description] from the reference's tables."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.replace("\\|", "/").split("|")]
            rows[cells[1].strip("`")] = cells[2:5]
    return rows


def test_configuration_reference_is_up_to_date() -> None:
    current = CONFIG_REFERENCE.read_text(encoding="utf-8") if CONFIG_REFERENCE.exists() else ""

    assert current == render(), "docs/configuration.md is stale: run `make docs` and commit it"


def test_reference_lists_every_setting_with_type_default_and_description() -> None:
    rows = _rows(render())

    paths = _leaf_paths(AgentSettings)
    assert "mqtt.outbox.max_bytes" in paths
    assert "rules[].for" in paths
    assert "remote.keys[].id" in paths
    for path in paths:
        # A model several entries share (every plain probe's options) is listed once.
        key = path if path in rows else "probes.<name>." + path.rsplit(".", 1)[1]
        assert key in rows, f"{path} is missing from the reference"
        type_text, default, description = rows[key]
        assert type_text, f"{path} has no type"
        assert default, f"{path} has no default"
        assert description, f"{path} has no description: give the field a docstring"


def test_reference_shows_defaults_as_they_are_written_in_yaml() -> None:
    text = render()

    assert "| `mqtt.session_expiry` | duration | `1h` |" in text
    assert "| `mqtt.outbox.max_bytes` | size | `64MiB` |" in text
    assert "| `probes.clock` | section | `interval: 1m` |" in text
    assert "| `log.level` | `debug` \\| `info` \\| `warning` \\| `error` | `info` |" in text
    # The hostname itself would make the file differ between machines.
    assert "| `node.name` | string | `gethostname()` at start |" in text


def test_check_mode_fails_on_a_stale_file_and_names_the_fix(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n", encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "agent.config_doc", "--check", "--output", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )

    assert result.returncode == 1
    assert "make docs" in result.stderr
