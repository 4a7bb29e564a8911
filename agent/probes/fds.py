"""System-wide file handles from ``/proc/sys/fs/file-nr``."""

from __future__ import annotations

__all__ = ["FdsProbe"]

import time
from pathlib import Path

from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock, parse_error, read_text


class FdsProbe(BlockingProbe):
    """Emits allocated file handles, the limit, and their ratio.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        proc: where procfs is mounted.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        interval: float = 30.0,
        timeout: float = 10.0,
        proc: Path = Path("/proc"),
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="fds", interval=interval, timeout=timeout, clock=clock)
        self._path = proc / "sys" / "fs" / "file-nr"

    def collect(self) -> list[Sample]:
        """Read ``allocated unused max``."""
        text = read_text(self._path)
        try:
            allocated, _unused, limit = (int(field) for field in text.split())
        except ValueError:
            raise parse_error(
                self._path, f"expected 'allocated unused max', got {text!r}"
            ) from None
        if limit <= 0:
            raise parse_error(self._path, f"file handle limit is {limit}")
        return [
            Sample.of("nodemedic_fds_allocated", allocated),
            Sample.of("nodemedic_fds_max", limit),
            Sample.of("nodemedic_fds_used_ratio", allocated / limit),
        ]
