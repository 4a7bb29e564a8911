"""FdsProbe: /proc/sys/fs/file-nr."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ProbeError
from agent.probes.fds import FdsProbe

from .fakes import Closing, by_metric, write_tree


@pytest.mark.asyncio
async def test_file_handles_and_ratio(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"sys/fs/file-nr": "1234\t0\t100000\n"})
    probe = closing(FdsProbe(proc=tmp_path))

    values = by_metric(await probe.sample())

    assert values == {
        "nodemedic_fds_allocated": 1234,
        "nodemedic_fds_max": 100_000,
        "nodemedic_fds_used_ratio": pytest.approx(0.01234),
    }


@pytest.mark.asyncio
async def test_malformed_file_nr_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"sys/fs/file-nr": "1234 0\n"})
    probe = closing(FdsProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=r"^probe fds: cannot parse .*/sys/fs/file-nr: "):
        await probe.sample()
