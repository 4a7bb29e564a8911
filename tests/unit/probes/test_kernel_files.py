"""KernelFiles: system-wide kernel files kept open, read afresh on every read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.probes.proc_files import KernelFiles


@pytest.fixture
def files() -> Iterator[KernelFiles]:
    held = KernelFiles()
    yield held
    held.close()


def _fds_on(path: Path) -> int:
    """How many of this process's descriptors are open on ``path``.

    Counted by target, not in total: an earlier test's unclosed file may be finalised
    by the garbage collector at any point and change the total.
    """
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += fd.readlink() == path
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return count


def test_every_read_is_the_kernels_current_content(files: KernelFiles) -> None:
    uptime = Path("/proc/uptime")
    before = _fds_on(uptime)
    first = float(files.read(uptime).split()[0])
    assert _fds_on(uptime) == before + 1
    deadline = time.monotonic() + 30
    while (later := float(files.read(uptime).split()[0])) <= first:
        assert time.monotonic() < deadline, "uptime never moved"
        time.sleep(0.05)

    assert later > first
    assert _fds_on(uptime) == before + 1  # the same held file, not one per read


def test_a_file_larger_than_one_read_comes_whole(tmp_path: Path, files: KernelFiles) -> None:
    # A seq_file returns at most its buffer per read; the rest takes further reads.
    path = tmp_path / "diskstats"
    whole = "".join(f"   8 {n} sd{n} 1 2 3 4 5 6 7 8 9 10 11\n" for n in range(10000))
    path.write_text(whole, encoding="utf-8")

    assert files.read(path) == whole
    assert files.read(path) == whole


def test_rewritten_in_place_is_seen_and_close_releases(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_text("one\n", encoding="utf-8")
    files = KernelFiles()
    assert _fds_on(path) == 0
    assert files.read(path) == "one\n"
    path.write_text("two and more\n", encoding="utf-8")

    assert files.read(path) == "two and more\n"
    assert _fds_on(path) == 1
    files.close()
    assert _fds_on(path) == 0


def test_a_missing_file_raises_with_its_path_and_is_tried_again(
    tmp_path: Path, files: KernelFiles
) -> None:
    path = tmp_path / "pressure" / "cpu"

    with pytest.raises(FileNotFoundError) as raised:
        files.read(path)
    assert raised.value.filename == str(path)
    path.parent.mkdir()
    path.write_text("some avg10=0.00\n", encoding="utf-8")
    assert files.read(path) == "some avg10=0.00\n"


def test_a_read_that_fails_names_the_path_and_reopens(tmp_path: Path, files: KernelFiles) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()

    with pytest.raises(IsADirectoryError) as raised:
        files.read(directory)  # open succeeds, pread fails with EISDIR
    assert raised.value.filename == str(directory)
    directory.rmdir()
    directory.write_text("now a file\n", encoding="utf-8")
    assert files.read(directory) == "now a file\n"
