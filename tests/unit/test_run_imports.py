"""What a default ``nodemedic run`` keeps in memory: no CLI-only or optional module.

Every module imported stays resident for the agent's life (issue 9: RSS at most 60 MB),
so the modules only some paths need are imported on those paths. The agent runs for real,
with the default configuration, until it is ready and scraped once; its ``sys.modules`` is
read after it stops (nothing on the stop path imports these).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, http_get

from .probes.fake_nvml import nvidia_host

_RUN = textwrap.dedent(
    """
    import json, sys
    from agent.cli import main
    code = main(["run", "--config", sys.argv[1]])
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        json.dump(sorted(sys.modules), out)
    sys.exit(code)
    """
)

NOT_LOADED = {
    "rich": "the terminal views of `nodemedic status` and `fleet`",
    "agent.terminal": "the terminal views",
    "agent.status_view": "`nodemedic status`",
    "agent.fleet_view": "`nodemedic fleet`",
    "agent.config_doc": "the configuration reference generator",
    "cryptography": "signed remote commands (not configured)",
    "lightkube": "Kubernetes (off by default)",
    "agent.mqtt": "MQTT (no broker configured)",
    "aiomqtt": "MQTT (no broker configured)",
    "paho": "MQTT (no broker configured)",
    "systemd.daemon": "sd_notify (not started by systemd: no NOTIFY_SOCKET)",
    "difflib": "suggestions for a misspelt metric (the configuration is valid)",
}


def test_a_default_run_imports_no_cli_only_or_optional_module(
    agent_factory: Any, tmp_path: Path
) -> None:
    agent = agent_factory({"log": {"level": "info"}})
    modules_path = tmp_path / "modules.json"
    env_without_systemd = {"NOTIFY_SOCKET": "", "WATCHDOG_USEC": ""}
    with agent.log_path.open("ab") as log:
        agent.proc = subprocess.Popen(
            [sys.executable, "-c", _RUN, str(agent.config_path), str(modules_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **env_without_systemd},
        )
    agent.wait_ready(timeout=60.0)
    status, _ = http_get(agent.url + "/metrics", timeout=10.0)
    assert status == 200
    code, _ = agent.stop(timeout=30.0)

    assert code == 0, agent.log()
    loaded = set(json.loads(modules_path.read_text(encoding="utf-8")))
    expected = dict(NOT_LOADED)
    if not nvidia_host():
        expected["pynvml"] = "NVML: no NVIDIA GPU or library on this host"
    found = {
        name: why
        for name, why in expected.items()
        if name in loaded or any(module.startswith(name + ".") for module in loaded)
    }
    assert found == {}, "imported by a default run although only needed for: " + repr(found)
    assert "agent.runtime" in loaded, "the run path itself was imported"


@pytest.mark.parametrize("module", ["agent.cli", "agent.runtime"])
def test_importing_the_run_path_loads_none_of_them(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert {name for name in [*NOT_LOADED, "pynvml"] if name in loaded} == set()
