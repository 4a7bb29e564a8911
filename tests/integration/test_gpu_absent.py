"""The GPU probe on this machine, which has no NVIDIA driver, as an operator meets it.

The real ``pynvml`` (the ``gpu`` extra, installed with ``dev``) finds no
``libnvidia-ml.so.1`` here, so the probe disables itself: ``nodemedic check`` says so in one
line, and a running agent logs it once, exports no GPU series and fires nothing for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import FAST_PROBES, REPO, AgentProcess, http_get, http_json, run_cli
from tests.unit.probes.fake_nvml import nvidia_host

BUNDLED = REPO / "config" / "nodemedic.yaml"
DISABLED = (
    "probe gpu disabled: no NVIDIA GPU or driver on this host (NVML: NVML Shared Library Not Found)"
)


pytestmark = pytest.mark.skipif(nvidia_host(), reason="this host has an NVIDIA GPU or driver")


def test_check_says_the_gpu_probe_is_disabled_and_why() -> None:
    result = run_cli("check", "--config", str(BUNDLED))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert DISABLED in lines
    assert not [line for line in lines if line.startswith("nodemedic_gpu_")]
    assert not [line for line in lines if 'probe="gpu"' in line]
    assert "probe gpu FAILED" not in result.stdout
    rules = {line.split()[0]: line for line in lines if line.startswith("gpu-")}
    assert set(rules) == {"gpu-too-hot", "gpu-uncorrected-ecc-errors", "gpu-xid-errors", "gpu-lost"}
    assert all("no data" in line for line in rules.values())


def test_a_running_agent_logs_it_once_and_exports_no_gpu_series(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory({"probes": FAST_PROBES})
    agent.start()
    agent.wait_ready()
    # Let the 200 ms GPU probe run many times: the line must still appear only once.
    deadline = time.monotonic() + 30
    runs = 0.0
    while time.monotonic() < deadline and runs < 10:
        status, text = http_get(agent.url + "/metrics")
        assert status == 200
        runs = next(
            (
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('nodemedic_probe_runs_total{probe="gpu"}')
            ),
            0.0,
        )
        time.sleep(0.2)
    assert runs >= 10, text

    assert 'nodemedic_probe_up{probe="gpu"} 1.0' in text
    assert "nodemedic_gpu_" not in text
    conditions = http_json(agent.url + "/v1/conditions?state=firing")["conditions"]
    assert not [c for c in conditions if c["labels"].get("probe") == "gpu"]
    code, _ = agent.stop()
    assert code == 0
    log = agent.log()
    assert log.count("probe gpu: disabled: no NVIDIA GPU or driver on this host") == 1, log
