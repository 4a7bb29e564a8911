"""System-wide file handles from ``/proc/sys/fs/file-nr``."""

from __future__ import annotations

__all__ = ["FdsProbe"]

from pathlib import Path

from agent.model import Sample
from agent.probes.base import ProcfsProbe, parse_error, read_text


class FdsProbe(ProcfsProbe):
    """Emits allocated file handles, the limit, and their ratio."""

    NAME = "fds"

    @property
    def _file_nr(self) -> Path:
        return self.proc / "sys" / "fs" / "file-nr"

    def collect(self) -> list[Sample]:
        """Read ``allocated unused max``."""
        text = read_text(self._file_nr)
        try:
            allocated, _unused, limit = (int(field) for field in text.split())
        except ValueError:
            raise parse_error(
                self._file_nr, f"expected 'allocated unused max', got {text!r}"
            ) from None
        if limit <= 0:
            raise parse_error(self._file_nr, f"file handle limit is {limit}")
        return [
            Sample.of("nodemedic_fds_allocated", allocated),
            Sample.of("nodemedic_fds_max", limit),
            Sample.of("nodemedic_fds_used_ratio", allocated / limit),
        ]
