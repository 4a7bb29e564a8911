"""``disk.cleanup`` on a real loop-mounted ext4: stops at the target, never leaves its root."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from remediations.actions.base import ActionError
from remediations.actions.disk import CleanupPlan, DiskCleanupAction, DiskCleanupParams
from tests.actions import step

pytestmark = [pytest.mark.root, pytest.mark.asyncio]

MIB = 1024 * 1024
DAY = 86400.0
NOW = time.time()


def _write(path: Path, mib: float, *, days_old: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(b"\x5a" * int(mib * MIB))
        f.flush()
        os.fsync(f.fileno())
    os.utime(path, (NOW - days_old * DAY, NOW - days_old * DAY))
    return path


def _free(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _params(root: Path, free_target: int | str, **extra: object) -> DiskCleanupParams:
    return DiskCleanupParams.model_validate(
        {"root": str(root), "globs": ["**/*.log"], "min_age": "1h", "free_target": free_target}
        | extra
    )


@pytest.fixture
def tree(scratch_fs: Path) -> Path:
    """Old logs under root/, decoys outside it, ballast so the disk is nearly full.

    Outside files are the oldest of all, so a walk that escaped would pick them first.
    """
    root = scratch_fs / "root"
    outside = scratch_fs / "outside"
    for day in range(1, 9):  # app.1.log is the newest, app.8.log the oldest
        _write(root / "logs" / f"app.{day}.log", 1, days_old=day)
    _write(root / "logs" / "fresh.log", 1, days_old=0)  # younger than min_age
    _write(root / "logs" / "keep.txt", 0.1, days_old=30)  # does not match the glob
    _write(outside / "secret.log", 0.5, days_old=100)
    _write(outside / "dir" / "old.log", 0.5, days_old=100)
    _write(outside / "hard.log", 0.2, days_old=100)
    (root / "logs" / "secret.log").symlink_to(outside / "secret.log")
    (root / "linked-dir").symlink_to(outside / "dir")
    os.link(outside / "hard.log", root / "logs" / "hard.log")
    os.mkfifo(root / "logs" / "pipe.log")
    (root / "logs" / "dir.log").mkdir()
    os.utime(root / "logs" / "dir.log", (NOW - 50 * DAY, NOW - 50 * DAY))
    ballast = scratch_fs / "ballast"
    _write(ballast, max(0, _free(scratch_fs) - 2 * MIB) / MIB, days_old=0)
    return root


def _outside_intact(scratch_fs: Path) -> None:
    outside = scratch_fs / "outside"
    assert _files(outside) == {"secret.log", "dir/old.log", "hard.log"}
    assert (outside / "secret.log").stat().st_size == MIB // 2
    assert (outside / "dir" / "old.log").stat().st_size == MIB // 2
    assert (outside / "hard.log").stat().st_size == MIB // 5


async def test_deletes_the_oldest_files_until_the_target_and_nothing_outside(
    tree: Path, scratch_fs: Path
) -> None:
    action = DiskCleanupAction()
    # 3.5 MiB more than now: three 1 MiB files are not enough, four are.
    params = _params(tree, _free(scratch_fs) + int(3.5 * MIB))
    before = _files(tree)

    await action.precheck(step(params))
    planned = await action.apply(step(params, dry_run=True))
    oldest = ["logs/app.8.log", "logs/app.7.log", "logs/app.6.log", "logs/app.5.log"]
    assert planned.ok
    assert planned.details["files"] == oldest
    assert planned.details["bytes"] == 4 * MIB
    assert planned.summary.startswith("would delete 4 files (4194304 bytes")
    assert _files(tree) == before  # a dry run deletes nothing
    passed_over = planned.details["passed_over"]
    assert passed_over["logs/secret.log"] == "a symlink"
    assert passed_over["logs/pipe.log"] == "not a regular file"
    assert passed_over["logs/hard.log"].startswith("2 hard links")
    assert passed_over["logs/fresh.log"].startswith("younger than")

    result = await action.apply(step(params))
    assert result.ok, result.summary
    assert result.details["files"] == oldest
    assert _files(tree) == before - set(oldest)
    assert (tree / "logs" / "dir.log").is_dir()
    assert (tree / "logs" / "pipe.log").exists()
    assert (tree / "linked-dir").is_symlink()
    _outside_intact(scratch_fs)
    assert (await action.verify(step(params))).ok

    # The target is met: another run deletes nothing.
    again = await action.apply(step(params))
    assert again.ok
    assert again.details["files"] == []


async def test_a_ratio_target_and_the_caps_stop_the_run(tree: Path, scratch_fs: Path) -> None:
    action = DiskCleanupAction()
    unreachable = _params(tree, "90%", max_files=2)
    result = await action.apply(step(unreachable))
    assert result.details["files"] == ["logs/app.8.log", "logs/app.7.log"]
    assert not result.ok
    assert not (await action.verify(step(unreachable))).ok

    capped = _params(tree, "90%", max_bytes="2.5MiB")
    result = await action.apply(step(capped))
    assert result.details["files"] == ["logs/app.6.log", "logs/app.5.log"]
    _outside_intact(scratch_fs)


async def test_a_root_reached_through_a_symlink_is_refused(tree: Path, scratch_fs: Path) -> None:
    (scratch_fs / "alias").symlink_to(tree)
    params = _params(scratch_fs / "alias" / "logs", _free(scratch_fs) + 10 * MIB)
    action = DiskCleanupAction()
    with pytest.raises(ActionError, match=r"alias: a symlink, not followed"):
        await action.precheck(step(params))
    with pytest.raises(ActionError, match="reached without symlinks"):
        await action.apply(step(params))
    assert len(_files(tree / "logs")) == 12


async def test_a_directory_swapped_for_a_symlink_after_listing_is_not_followed(
    tree: Path, scratch_fs: Path
) -> None:
    victim = scratch_fs / "outside" / "victim"
    for day in (9, 10):
        _write(tree / "logs" / "old" / f"app.{day}.log", 0.25, days_old=day)
        _write(victim / f"app.{day}.log", 0.25, days_old=day)
    swapped: list[CleanupPlan] = []

    def swap(plan: CleanupPlan) -> None:
        # Between listing and deleting: logs/old becomes a symlink to a directory outside
        # holding files of the same names, and app.8.log a symlink to a file outside.
        swapped.append(plan)
        (tree / "logs" / "old").rename(tree / "old-moved")
        (tree / "logs" / "old").symlink_to(victim)
        (tree / "logs" / "app.8.log").rename(tree / "app.8.moved")
        (tree / "logs" / "app.8.log").symlink_to(scratch_fs / "outside" / "secret.log")

    params = _params(tree, _free(scratch_fs) + int(2.5 * MIB))
    result = await DiskCleanupAction(on_planned=swap).apply(step(params))

    assert [f.path for f in swapped[0].chosen][:3] == [
        "logs/old/app.10.log",
        "logs/old/app.9.log",
        "logs/app.8.log",
    ]
    skipped = result.details["skipped"]
    assert skipped["logs/old/app.10.log"] == ("directory 'old' not opened: a symlink, not followed")
    assert skipped["logs/old/app.9.log"].startswith("directory 'old' not opened")
    assert skipped["logs/app.8.log"] == "replaced since it was listed"
    # It went on down the list to the next oldest files until the target.
    assert result.details["files"] == ["logs/app.7.log", "logs/app.6.log", "logs/app.5.log"]
    assert result.ok
    assert sorted(p.name for p in victim.iterdir()) == ["app.10.log", "app.9.log"]
    assert sorted(p.name for p in (tree / "old-moved").iterdir()) == ["app.10.log", "app.9.log"]
    assert (tree / "logs" / "app.8.log").is_symlink()
    assert (tree / "app.8.moved").stat().st_size == MIB
    assert _files(scratch_fs / "outside") == {
        "secret.log",
        "dir/old.log",
        "hard.log",
        "victim/app.9.log",
        "victim/app.10.log",
    }


async def test_a_step_out_of_time_stops_by_itself(tree: Path, scratch_fs: Path) -> None:
    """The work runs in a thread the engine cannot cancel, so it watches the step's timeout."""
    params = _params(tree, _free(scratch_fs) + 2 * MIB)
    before = _files(tree)
    result = await DiskCleanupAction().apply(step(params, timeout=0.0))
    assert not result.ok
    assert result.details["files"] == []
    assert result.details["passed_over"] == {".": "not walked: out of time"}
    assert _files(tree) == before
