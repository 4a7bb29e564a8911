"""BlockingProbe: the worker thread, the timeout, hung runs, error translation, inline runs."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from pathlib import Path

import psutil
import pytest

from agent.config import ProbesConfig
from agent.errors import ProbeError, ProbeTimeoutError
from agent.model import Sample
from agent.probes import build_probes
from agent.probes.base import INLINE_LIMIT, INLINE_STRIKES, BlockingProbe, next_beat, read_text
from agent.probes.cpu import CpuProbe

from .fakes import Closing, ManualClock, NewProbeThreads


class _ScriptedProbe(BlockingProbe):
    """Raises ``error`` from collect, or returns one sample when it is None."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__(name="fds", interval=1.0, timeout=5.0)
        self.error = error
        self.threads: list[str] = []

    def collect(self) -> list[Sample]:
        self.threads.append(threading.current_thread().name)
        if self.error is not None:
            raise self.error
        return [Sample.of("nodemedic_fds_allocated", 7)]


class _HangingProbe(BlockingProbe):
    """Blocks in collect until ``release`` is set, like statvfs on a dead NFS server."""

    def __init__(self, *, timeout: float, clock: ManualClock) -> None:
        super().__init__(name="filesystem", interval=1.0, timeout=timeout, clock=clock)
        self.release = threading.Event()
        self.calls = 0

    def collect(self) -> list[Sample]:
        self.calls += 1
        # Bounded, so a failing test cannot leave the thread behind forever.
        self.release.wait(timeout=30)
        return [
            Sample.of("nodemedic_filesystem_readonly", 0, mountpoint="/", device="d", fstype="x")
        ]


@pytest.mark.asyncio
async def test_collect_runs_in_the_probes_own_named_thread(closing: Closing) -> None:
    probe = closing(_ScriptedProbe(None))

    samples = await probe.sample()
    await probe.sample()

    assert samples == [Sample.of("nodemedic_fds_allocated", 7)]
    assert probe.threads[0].startswith("probe-fds_")
    assert probe.threads[0] != threading.current_thread().name
    assert probe.threads == [probe.threads[0]] * 2, "one worker thread, reused"


@pytest.mark.asyncio
async def test_missing_file_becomes_probe_error_naming_probe_and_path(
    tmp_path: Path, closing: Closing
) -> None:
    probe = closing(CpuProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=r"^probe cpu: cannot read .*/stat: No such file") as info:
        await probe.sample()

    assert str(tmp_path / "stat") in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert not isinstance(info.value, ProbeTimeoutError)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/proc/sys/fs/file-nr"),
            "probe fds: cannot read /proc/sys/fs/file-nr: Permission denied",
        ),
        (ValueError("cannot parse /proc/x: bad line"), "probe fds: cannot parse /proc/x: bad line"),
        (psutil.AccessDenied(pid=1, name="init"), "probe fds: psutil: "),
    ],
    ids=["oserror", "valueerror", "psutil"],
)
@pytest.mark.asyncio
async def test_collect_failures_become_probe_error(
    error: Exception, message: str, closing: Closing
) -> None:
    probe = closing(_ScriptedProbe(error))

    with pytest.raises(ProbeError) as info:
        await probe.sample()

    assert str(info.value).startswith(message)
    assert info.value.__cause__ is error


@pytest.mark.asyncio
async def test_a_bug_in_collect_is_not_disguised_as_a_probe_error(closing: Closing) -> None:
    probe = closing(_ScriptedProbe(KeyError("MemTotal")))

    with pytest.raises(KeyError):
        await probe.sample()


@pytest.mark.asyncio
async def test_probe_recovers_after_a_failed_run(closing: Closing) -> None:
    probe = closing(_ScriptedProbe(OSError(errno.EIO, "Input/output error", "/proc/x")))
    with pytest.raises(ProbeError):
        await probe.sample()

    probe.error = None

    assert await probe.sample() == [Sample.of("nodemedic_fds_allocated", 7)]


@pytest.mark.asyncio
async def test_hung_run_times_out_and_is_not_run_twice(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(start=100.0)
    started = NewProbeThreads("filesystem")
    probe = _HangingProbe(timeout=0.2, clock=clock)
    try:
        with pytest.raises(
            ProbeTimeoutError, match=r"^probe filesystem: run did not finish within 0\.2s$"
        ):
            await probe.sample()
        clock.advance(7.5)

        # Refused before the coroutine ever suspends: no waiting, no new thread, no queueing.
        refused = probe.sample()
        with pytest.raises(ProbeTimeoutError, match=r"previous run still hung after 7\.5s"):
            refused.send(None)

        assert probe.calls == 1
        assert len(started()) == 1
    finally:
        probe.release.set()
    with caplog.at_level(logging.INFO, logger="agent.probes.base"):
        samples = await _sample_once_released(probe)
    probe.close()
    for thread in started():
        thread.join(timeout=5)

    assert samples[0].metric == "nodemedic_filesystem_readonly"
    assert probe.calls == 2
    assert "probe filesystem: abandoned run returned after 7.5s" in caplog.messages
    assert not started()


async def _sample_once_released(probe: _HangingProbe) -> list[Sample]:
    """Sample as soon as the abandoned run has returned (it is released already)."""
    for _ in range(500):
        try:
            return list(await probe.sample())
        except ProbeTimeoutError as err:
            if "still hung" not in str(err):
                raise
            await asyncio.sleep(0.01)
    pytest.fail("the released run never returned")


@pytest.mark.asyncio
async def test_closed_probe_refuses_to_sample() -> None:
    probe = _ScriptedProbe(None)
    probe.close()

    with pytest.raises(ProbeError, match=r"^probe fds is closed$"):
        await probe.sample()


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_non_positive_interval_or_timeout_is_rejected(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        CpuProbe(interval=interval, timeout=timeout)


def test_read_text_keeps_undecodable_bytes_for_syscalls(tmp_path: Path) -> None:
    raw = b"/mnt/caf\xe9\n"
    (tmp_path / "mountinfo").write_bytes(raw)

    text = read_text(tmp_path / "mountinfo")

    assert text.encode("utf-8", "surrogateescape") == raw


class _InlineProbe(BlockingProbe):
    """An inline probe whose reading takes ``took`` seconds of the injected clock."""

    inline = True

    def __init__(self, clock: ManualClock, *, timeout: float = 5.0) -> None:
        super().__init__(name="load", interval=1.0, timeout=timeout, clock=clock)
        self.clock = clock
        self.took = 0.0
        self.threads: list[str] = []

    def collect(self) -> list[Sample]:
        self.threads.append(threading.current_thread().name)
        self.clock.advance(self.took)
        return [Sample.of("nodemedic_load1", 0.5)]


@pytest.mark.asyncio
async def test_an_inline_probe_reads_on_the_event_loop_without_a_thread(
    closing: Closing,
) -> None:
    started = NewProbeThreads("load")
    probe = closing(_InlineProbe(ManualClock()))

    samples = await probe.sample()
    await probe.sample()

    assert samples == [Sample.of("nodemedic_load1", 0.5)]
    assert probe.threads == [threading.current_thread().name] * 2
    assert probe.runs_inline
    assert not started()


def test_only_probes_reading_kernel_generated_counters_run_inline(tmp_path: Path) -> None:
    probes = {probe.name: probe for probe in build_probes(ProbesConfig(), proc=tmp_path)}
    try:
        inline = {name for name, probe in probes.items() if getattr(probe, "runs_inline", False)}
    finally:
        for probe in probes.values():
            probe.close()

    # filesystem (statvfs), sensors (hwmon), processes (per-process files), gpu (NVML)
    # and the push probes can block: they keep a thread. The processes probe without a
    # group reads nothing, so it runs inline too; network reads /proc/net/dev and asks
    # SIOCGIFFLAGS, both answered from memory.
    assert inline == {
        "cpu", "memory", "load", "pressure", "diskio", "fds", "clock", "processes", "network"
    }  # fmt: skip
    grouped = ProbesConfig.model_validate(
        {"processes": {"groups": [{"name": "sshd", "comm": "sshd"}]}}
    )
    watching = next(p for p in build_probes(grouped, proc=tmp_path) if p.name == "processes")
    try:
        assert not getattr(watching, "runs_inline", True), "reading processes needs its thread"
    finally:
        watching.close()


@pytest.mark.asyncio
async def test_a_slow_inline_probe_moves_to_its_thread_and_warns_once(
    caplog: pytest.LogCaptureFixture, closing: Closing
) -> None:
    probe = closing(_InlineProbe(ManualClock()))
    probe.took = INLINE_LIMIT * 2
    with caplog.at_level(logging.WARNING, logger="agent.probes.base"):
        for _ in range(INLINE_STRIKES - 1):
            await probe.sample()
        probe.took = 0.0
        await probe.sample()  # a fast run in between: one slow run alone is a busy host
        probe.took = INLINE_LIMIT * 2
        for _ in range(INLINE_STRIKES - 1):
            await probe.sample()
        assert probe.runs_inline, "moved before enough slow runs in a row"

        await probe.sample()
        await probe.sample()
        await probe.sample()

    loop_thread = threading.current_thread().name
    assert not probe.runs_inline
    assert probe.threads[: 2 * INLINE_STRIKES] == [loop_thread] * (2 * INLINE_STRIKES)
    assert probe.threads[-2:] == [probe.threads[-1]] * 2
    assert probe.threads[-1].startswith("probe-load_")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"probe load: {INLINE_STRIKES} readings in a row on the event loop took over 10 ms "
        "(the last 20.0 ms); reading it in its worker thread from now on"
    ]


@pytest.mark.asyncio
async def test_an_inline_run_over_the_timeout_moves_the_probe_at_once(
    caplog: pytest.LogCaptureFixture, closing: Closing
) -> None:
    probe = closing(_InlineProbe(ManualClock(), timeout=0.5))
    probe.took = 0.75

    with caplog.at_level(logging.WARNING, logger="agent.probes.base"):
        samples = await probe.sample()

    assert samples == [Sample.of("nodemedic_load1", 0.5)], "the reading itself is kept"
    assert not probe.runs_inline
    assert "probe load: 1 readings in a row" in caplog.text


@pytest.mark.asyncio
async def test_an_inline_probes_failure_becomes_a_probe_error(
    tmp_path: Path, closing: Closing
) -> None:
    clock = ManualClock()
    probe = closing(CpuProbe(proc=tmp_path, clock=clock))
    assert probe.runs_inline

    with pytest.raises(ProbeError, match=r"^probe cpu: cannot read .*/stat: No such file"):
        await probe.sample()

    assert probe.runs_inline, "a fast failure is no reason to leave the loop"


@pytest.mark.parametrize(
    ("now", "interval", "beat"),
    [(10.0, 1.0, 11.0), (10.99, 1.0, 11.0), (10.01, 1.0, 11.0), (7.0, 5.0, 10.0)],
)
def test_next_beat_is_the_next_multiple_of_the_interval_at_most_one_away(
    now: float, interval: float, beat: float
) -> None:
    assert next_beat(now, interval) == pytest.approx(beat)
    assert now < next_beat(now, interval) <= now + interval
