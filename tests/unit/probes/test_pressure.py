"""PressureProbe: PSI percentages as ratios; no PSI is no samples, not an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ProbeError
from agent.model import labelset
from agent.probes.pressure import PressureProbe

from .fakes import Closing, by_series, write_tree

# cpu has no "full" line, as on kernels before 5.13.
PSI = {
    "pressure/cpu": "some avg10=5.83 avg60=1.26 avg300=0.54 total=3516520\n",
    "pressure/memory": (
        "some avg10=0.36 avg60=0.18 avg300=0.35 total=2677228\n"
        "full avg10=0.18 avg60=0.14 avg300=0.32 total=2439367\n"
    ),
    "pressure/io": (
        "some avg10=12.50 avg60=2.00 avg300=0.00 total=0\n"
        "full avg10=100.00 avg60=0.00 avg300=0.00 total=0\n"
    ),
}


@pytest.mark.asyncio
async def test_psi_percentages_become_ratios(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, PSI)
    probe = closing(PressureProbe(proc=tmp_path))

    values = by_series(await probe.sample())

    def key(metric: str, resource: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (f"nodemedic_pressure_{metric}_ratio", labelset(resource=resource))

    assert values == {
        key("some_avg10", "cpu"): pytest.approx(0.0583),
        key("some_avg60", "cpu"): pytest.approx(0.0126),
        key("some_avg10", "memory"): pytest.approx(0.0036),
        key("some_avg60", "memory"): pytest.approx(0.0018),
        key("full_avg10", "memory"): pytest.approx(0.0018),
        key("full_avg60", "memory"): pytest.approx(0.0014),
        key("some_avg10", "io"): pytest.approx(0.125),
        key("some_avg60", "io"): pytest.approx(0.02),
        key("full_avg10", "io"): pytest.approx(1.0),
        key("full_avg60", "io"): 0.0,
    }


@pytest.mark.asyncio
async def test_kernel_without_psi_yields_no_samples(tmp_path: Path, closing: Closing) -> None:
    probe = closing(PressureProbe(proc=tmp_path))

    assert await probe.sample() == []


@pytest.mark.asyncio
async def test_malformed_psi_line_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"pressure/io": "some avg10=abc avg60=1 avg300=0 total=0\n"})
    probe = closing(PressureProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=r"^probe pressure: cannot parse .*/pressure/io: "):
        await probe.sample()
