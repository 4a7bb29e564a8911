"""KmsgProbe: live updates, heartbeats, a bounded flood, errors, and the real /dev/kmsg.

Most tests feed the probe through a FIFO standing in for /dev/kmsg (same record format,
written by the test); the ``root`` tests write to the real device and watch the probe
report it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import KmsgProbeConfig, ProbesConfig
from agent.errors import ProbeError
from agent.model import Sample
from agent.probes import build_probes
from agent.probes.base import ProbeUpdate, sample_once
from agent.probes.kmsg import KmsgProbe
from agent.probes.kmsg_match import KernelPattern

from .fakes import Closing, assert_catalog_conformant

WAIT = 20.0
"""Seconds to wait for an expected update: generous, the machine is shared."""


def _patterns(extra: list[dict[str, Any]] | None = None) -> list[KernelPattern]:
    config = KmsgProbeConfig.model_validate({"patterns": extra or []})
    return [KernelPattern.from_config(p) for p in config.effective_patterns]


def _value(update: ProbeUpdate, metric: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return next(s.value for s in update.samples if s.metric == metric and s.labels == want)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A FIFO standing in for /dev/kmsg."""
    path = tmp_path / "kmsg"
    os.mkfifo(path)
    return path


@pytest.fixture
def writer(fifo: Path) -> Iterator[int]:
    """A blocking write end of the FIFO (the probe holds it open read-write)."""
    fd = os.open(fifo, os.O_RDWR)
    yield fd
    os.close(fd)


async def _next(updates: AsyncIterator[ProbeUpdate]) -> ProbeUpdate:
    async with asyncio.timeout(WAIT):
        return await anext(updates)


async def _until(
    updates: AsyncIterator[ProbeUpdate], metric: str, value: float, **labels: str
) -> ProbeUpdate:
    async with asyncio.timeout(WAIT):
        async for update in updates:
            if _value(update, metric, **labels) == value:
                return update
    raise AssertionError("watch ended")


@pytest.mark.asyncio
async def test_a_kernel_oom_kill_is_reported_with_its_victim(fifo: Path, writer: int) -> None:
    probe = KmsgProbe(patterns=_patterns(), path=fifo, interval=30)
    updates = probe.watch()

    first = await _next(updates)
    assert_catalog_conformant("kmsg", first.samples)
    assert _value(first, "nodemedic_kernel_pattern_matches", pattern="oom-kill") == 0
    os.write(
        writer,
        b"6,100,5000,-;oom-kill:constraint=CONSTRAINT_NONE,task=stress-ng-vm,pid=3121,uid=0\n"
        b"3,101,5001,-;Out of memory: Killed process 3121 (stress-ng-vm) total-vm:8184852kB, "
        b"anon-rss:7760876kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:15260kB\n",
    )
    update = await _until(updates, "nodemedic_kernel_pattern_matches", 1, pattern="oom-kill")
    await updates.aclose()  # type: ignore[attr-defined]

    assert [(e.type, e.subject, e.data["pid"]) for e in update.events] == [
        ("io.nodemedic.kernel.oom_kill", "stress-ng-vm", 3121)
    ]
    assert _value(update, "nodemedic_kernel_log_lines_total") == 2
    assert_catalog_conformant("kmsg", update.samples)


@pytest.mark.asyncio
async def test_a_quiet_log_still_sends_heartbeats_and_a_condition_times_out(
    fifo: Path, writer: int
) -> None:
    condition = {"name": "stuck", "kind": "condition", "regex": "mydrv: stuck", "timeout": "300ms"}
    probe = KmsgProbe(patterns=_patterns([condition]), path=fifo, interval=0.2)
    updates = probe.watch()
    await _next(updates)
    await _next(updates)  # a heartbeat: nothing was written

    os.write(writer, b"4,1,10,-;mydrv: stuck on queue 3\n")
    set_ = await _until(updates, "nodemedic_kernel_condition", 1, pattern="stuck")
    cleared = await _until(updates, "nodemedic_kernel_condition", 0, pattern="stuck")
    await updates.aclose()  # type: ignore[attr-defined]

    assert [e.type for e in set_.events] == ["io.nodemedic.kernel.stuck"]
    assert _value(cleared, "nodemedic_kernel_pattern_matches", pattern="stuck") == 1


@pytest.mark.asyncio
async def test_a_flood_is_capped_and_every_skipped_line_is_counted(fifo: Path) -> None:
    flood = 4000
    marker = {"name": "marker", "kind": "event", "regex": "^end of flood$"}
    probe = KmsgProbe(
        patterns=_patterns([marker]), path=fifo, interval=30, max_lines_per_second=200
    )
    updates = probe.watch()
    await _next(updates)
    started = time.monotonic()
    lines = b"".join(
        b"6,%d,%d,-;eth0: rx error on queue %d, resetting\n" % (n, n, n) for n in range(flood)
    )

    def write_flood() -> None:
        fd = os.open(fifo, os.O_WRONLY)
        try:
            os.write(fd, lines)  # blocks while the pipe is full
        finally:
            os.close(fd)

    thread = threading.Thread(target=write_flood, name="flood-writer")
    thread.start()
    await asyncio.to_thread(thread.join, WAIT)
    assert not thread.is_alive()
    await asyncio.sleep(0.5)  # past any pause, so the last line is read, not skipped
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, b"6,%d,1,-;end of flood\n" % flood)
    os.close(fd)
    update = await _until(updates, "nodemedic_kernel_pattern_matches", 1, pattern="marker")
    elapsed = time.monotonic() - started
    await updates.aclose()  # type: ignore[attr-defined]

    processed = _value(update, "nodemedic_kernel_log_lines_total")
    skipped = _value(update, "nodemedic_kernel_log_dropped_total", reason="rate-limit")
    assert processed + skipped == flood + 1  # every line is either matched or counted
    assert skipped > 0
    assert processed <= 20 + 200 * elapsed  # the bucket: a 0.1 s burst plus the rate
    assert _value(update, "nodemedic_kernel_log_dropped_total", reason="malformed") == 0
    assert _value(update, "nodemedic_kernel_log_dropped_total", reason="overwritten") == 0


@pytest.mark.asyncio
async def test_garbage_is_counted_as_malformed_and_matching_goes_on(
    fifo: Path, writer: int
) -> None:
    probe = KmsgProbe(patterns=_patterns(), path=fifo, interval=30)
    updates = probe.watch()
    await _next(updates)

    os.write(writer, b"this is not a kmsg record\n6,1,2,-;nginx[7]: segfault at 0 ip 0 sp 0\n")
    update = await _until(updates, "nodemedic_kernel_pattern_matches", 1, pattern="segfault")
    await updates.aclose()  # type: ignore[attr-defined]

    assert _value(update, "nodemedic_kernel_log_dropped_total", reason="malformed") == 1


@pytest.mark.asyncio
async def test_records_lost_before_they_were_read_are_counted_as_overwritten(
    fifo: Path, writer: int
) -> None:
    probe = KmsgProbe(patterns=_patterns(), path=fifo, interval=30)
    updates = probe.watch()
    await _next(updates)

    # The kernel's ring buffer wrapped between two reads: sequence 501-899 are gone.
    os.write(writer, b"6,500,1,-;eth0: link up\n6,900,2,-;eth0: link down\n")
    update = await _until(updates, "nodemedic_kernel_log_lines_total", 2)
    await updates.aclose()  # type: ignore[attr-defined]

    assert _value(update, "nodemedic_kernel_log_dropped_total", reason="overwritten") == 399
    assert _value(update, "nodemedic_kernel_log_dropped_total", reason="rate-limit") == 0


@pytest.mark.asyncio
async def test_an_unreadable_source_is_a_probe_error_naming_it(tmp_path: Path) -> None:
    missing = KmsgProbe(patterns=_patterns(), path=tmp_path / "nope", interval=1)
    regular = tmp_path / "file.txt"
    regular.write_text("6,1,1,-;x\n", encoding="utf-8")
    not_a_device = KmsgProbe(patterns=_patterns(), path=regular, interval=1)

    with pytest.raises(ProbeError, match=r"cannot open .*nope: No such file or directory"):
        await sample_once(missing)
    with pytest.raises(ProbeError, match=r"file\.txt: not a character device or FIFO"):
        await sample_once(not_a_device)


def test_build_probes_wires_the_configured_patterns_and_cap(
    tmp_path: Path, closing: Closing
) -> None:
    config = ProbesConfig.model_validate(
        {
            "kmsg": {
                "path": str(tmp_path / "k"),
                "interval": "5s",
                "max_lines_per_second": 50,
                "disabled_patterns": ["segfault"],
            }
        }
    )

    (probe,) = [p for p in build_probes(config) if p.name == "kmsg"]
    closing(probe)

    assert isinstance(probe, KmsgProbe)
    assert (probe.path, probe.interval, probe.max_lines_per_second) == (tmp_path / "k", 5.0, 50)
    assert "segfault" not in {p.name for p in probe._matcher.patterns}


# -- the real /dev/kmsg ----------------------------------------------------------------


def _kmsg_writable() -> bool:
    try:
        os.close(os.open("/dev/kmsg", os.O_WRONLY))
    except OSError:
        return False
    return True


live = pytest.mark.skipif(
    not _kmsg_writable(), reason="/dev/kmsg is not writable here (not root, or no such device)"
)


@pytest.mark.root
@live
@pytest.mark.asyncio
async def test_a_line_written_to_the_real_kmsg_is_reported() -> None:
    tag = f"nodemedic-live-{uuid.uuid4().hex[:12]}"
    mine = {"name": "live", "kind": "event", "regex": f"{tag} (?P<n>\\d+)", "source": "any"}
    probe = KmsgProbe(patterns=_patterns([mine]), interval=30)
    updates = probe.watch()
    first = await _next(updates)
    assert_catalog_conformant("kmsg", first.samples)

    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        # From userspace: facility user. The fake OOM kill must not count (source: kernel).
        os.write(fd, f"<3>Out of memory: Killed process 1 (init) total-vm:1kB {tag}\n".encode())
        os.write(fd, f"<3>{tag} 42\n".encode())
    finally:
        os.close(fd)
    update = await _until(updates, "nodemedic_kernel_pattern_matches", 1, pattern="live")
    await updates.aclose()  # type: ignore[attr-defined]

    (event,) = update.events
    assert (event.type, event.data["n"], event.data["facility"]) == (
        "io.nodemedic.kernel.live",
        42,
        1,
    )
    assert _value(update, "nodemedic_kernel_pattern_matches", pattern="oom-kill") == 0


@pytest.mark.root
@live
@pytest.mark.asyncio
async def test_the_real_kmsg_is_read_from_its_end_not_its_history() -> None:
    tag = f"nodemedic-history-{uuid.uuid4().hex[:12]}"
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, f"<6>{tag}\n".encode())
    finally:
        os.close(fd)
    mine = {"name": "history", "kind": "event", "regex": tag, "source": "any"}
    probe = KmsgProbe(patterns=_patterns([mine]), interval=0.3)
    updates = probe.watch()

    seen: list[Sample] = []
    for _ in range(3):  # the first update and two heartbeats
        seen += (await _next(updates)).samples
    await updates.aclose()  # type: ignore[attr-defined]

    counts = {
        s.value
        for s in seen
        if s.metric == "nodemedic_kernel_pattern_matches" and s.labels == (("pattern", "history"),)
    }
    assert counts == {0}
