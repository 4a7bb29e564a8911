"""``disk.cleanup``: delete old files beneath a root until enough space is free.

``disk.cleanup`` lists the regular files beneath ``root`` whose path matches one of
``globs`` and that are older than ``min_age``, and deletes them oldest first until the
root's filesystem has ``free_target`` available, within ``max_files`` and ``max_bytes``
per run. It never follows a symlink and never leaves its root or its filesystem (see
:mod:`remediations.actions.confined`), never deletes a directory or a special file, and
skips hard-linked files (deleting one name frees nothing). In dry run it lists exactly
the files, and the bytes, it would delete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Annotated, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from agent.config_types import Duration
from remediations.actions.base import ActionContext, ActionError, ActionResult
from remediations.actions.confined import (
    ConfinedFile,
    FileListing,
    glob_regex,
    list_files,
    open_root,
    unlink_file,
)
from remediations.actions.fields import absolute_path, params_as

__all__ = [
    "ACTIONS",
    "CleanupPlan",
    "DiskCleanupAction",
    "DiskCleanupParams",
    "FreeTarget",
]

log = logging.getLogger(__name__)

_FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev", "/run")
_BYTES = TypeAdapter(ByteSize)


@dataclass(frozen=True, slots=True)
class FreeTarget:
    """Free space to reach: a byte count or a ratio of the filesystem's size."""

    bytes: int | None = None
    ratio: float | None = None

    def wanted(self, total: int) -> int:
        """Bytes that must be available on a filesystem of ``total`` bytes."""
        return self.bytes if self.bytes is not None else int(total * (self.ratio or 0.0))

    def __str__(self) -> str:
        return f"{self.bytes} bytes" if self.bytes is not None else f"{self.ratio:.0%}"


def _free_target(value: object) -> FreeTarget:
    if isinstance(value, FreeTarget):
        return value
    if isinstance(value, float) or (isinstance(value, str) and value.strip().endswith("%")):
        ratio = float(value) if isinstance(value, float) else float(value.strip()[:-1]) / 100
        if not 0 < ratio < 1:
            raise ValueError(f"a ratio of free space must be between 0 and 1 (0%-100%): {value!r}")
        return FreeTarget(ratio=ratio)
    if isinstance(value, int | str) and not isinstance(value, bool):
        size = int(_BYTES.validate_python(value))
        if size <= 0:
            raise ValueError("a free-space target in bytes must be positive")
        return FreeTarget(bytes=size)
    raise ValueError(f"use bytes (1073741824, '1GiB') or a ratio (0.2, '20%'), not {value!r}")


class DiskCleanupParams(BaseModel):
    """Params of ``disk.cleanup``.

    Attributes:
        root: the directory to clean (absolute; no symlink in it; not /, /proc, /sys,
            /dev, /run).
        globs: patterns relative to ``root`` (``*.gz``, ``cache/*``, ``**/*.log``): ``*``
            stays within a directory, ``**`` spans any number of them.
        min_age: only files last modified at least this long ago.
        free_target: available space to reach, bytes (``2GiB``) or a ratio of the
            filesystem (``0.2``, ``20%``).
        max_files: at most this many files per run.
        max_bytes: at most this many bytes (file sizes) per run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str
    globs: tuple[str, ...] = Field(min_length=1)
    min_age: Duration = timedelta(hours=1)
    free_target: Annotated[FreeTarget, BeforeValidator(_free_target)]
    max_files: int = Field(default=1000, ge=1, le=1_000_000)
    max_bytes: ByteSize | None = None

    @field_validator("root")
    @classmethod
    def _safe_root(cls, value: str) -> str:
        absolute_path(value)
        path = PurePosixPath(os.path.normpath(value))
        if ".." in PurePosixPath(value).parts:
            raise ValueError(f"{value!r}: '..' is not allowed")
        if path == PurePosixPath("/") or any(
            path.is_relative_to(forbidden) for forbidden in _FORBIDDEN_ROOTS
        ):
            raise ValueError(f"{value!r} may not be cleaned (/, {', '.join(_FORBIDDEN_ROOTS)})")
        return str(path)

    @field_validator("globs")
    @classmethod
    def _valid_globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            glob_regex(pattern)
        return value

    @model_validator(mode="after")
    def _age_not_negative(self) -> DiskCleanupParams:
        if self.min_age < timedelta(0):
            raise ValueError("min_age must not be negative")
        return self


@dataclass(frozen=True, slots=True)
class CleanupPlan:
    """The files a cleanup would delete, oldest first, and why others are left alone."""

    root: str
    free: int
    wanted: int
    candidates: tuple[ConfinedFile, ...]
    """Every deletable file, oldest first; ``apply`` goes on down it if a file is skipped."""
    chosen: tuple[ConfinedFile, ...]
    """The prefix of ``candidates`` that reaches the target by the files' allocation."""
    passed_over: dict[str, str]


class DiskCleanupAction:
    """Deletes old files beneath a root until enough space is free (module docstring).

    Args:
        clock: seconds since the epoch, for ``min_age``.
        on_planned: called with the plan between listing and deleting (a test seam
            for changes made to the tree in that window).
    """

    name: ClassVar[str] = "disk.cleanup"
    disruptive: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = DiskCleanupParams

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_planned: Callable[[CleanupPlan], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_planned = on_planned

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse a root that is missing, not a directory, or reached through a symlink."""
        params = params_as(ctx, DiskCleanupParams)
        fd = await asyncio.to_thread(_open_root, params.root)
        os.close(fd)

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Delete the planned files (or, in dry run, list them)."""
        params = params_as(ctx, DiskCleanupParams)
        # A thread cannot be cancelled: it stops by itself a little before the step's timeout.
        deadline = time.monotonic() + max(0.0, ctx.timeout * 0.9)
        return await asyncio.to_thread(self._apply, params, ctx.dry_run, deadline)

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Whether the root's filesystem now has the target available."""
        params = params_as(ctx, DiskCleanupParams)
        fd = await asyncio.to_thread(_open_root, params.root)
        try:
            free, wanted = _space(fd, params.free_target)
        finally:
            os.close(fd)
        return ActionResult(
            ok=free >= wanted,
            summary=f"{params.root}: {free} bytes available, target {wanted}",
            details={"root": params.root, "free": free, "wanted": wanted},
        )

    def _apply(self, params: DiskCleanupParams, dry_run: bool, deadline: float) -> ActionResult:
        fd = _open_root(params.root)
        try:
            plan = self._plan(fd, params, deadline)
            if dry_run:
                return _would_delete(plan)
            if self._on_planned is not None:
                self._on_planned(plan)
            return _delete(fd, plan, params, deadline)
        finally:
            os.close(fd)

    def _plan(self, fd: int, params: DiskCleanupParams, deadline: float) -> CleanupPlan:
        patterns = [glob_regex(g) for g in params.globs]
        listing: FileListing = list_files(fd, patterns, deadline=deadline)
        newest = self._clock() - params.min_age.total_seconds()
        passed_over = dict(listing.passed_over)
        candidates: list[ConfinedFile] = []
        for file in sorted(listing.files, key=lambda f: (f.mtime, f.path)):
            if file.mtime > newest:
                passed_over[file.path] = f"younger than {params.min_age}"
            elif file.nlink > 1:
                passed_over[file.path] = f"{file.nlink} hard links: deleting one frees nothing"
            else:
                candidates.append(file)
        free, wanted = _space(fd, params.free_target)
        chosen = _within_caps(candidates, params, wanted - free)
        return CleanupPlan(params.root, free, wanted, tuple(candidates), chosen, passed_over)


def _open_root(root: str) -> int:
    try:
        return open_root(root)
    except OSError as err:
        raise ActionError(
            f"disk.cleanup: root {root}: {err.filename}: {err.strerror} "
            "(the root must be a directory reached without symlinks)"
        ) from err


def _space(fd: int, target: FreeTarget) -> tuple[int, int]:
    fs = os.fstatvfs(fd)
    return fs.f_bavail * fs.f_frsize, target.wanted(fs.f_blocks * fs.f_frsize)


def _within_caps(
    candidates: Sequence[ConfinedFile], params: DiskCleanupParams, needed: int
) -> tuple[ConfinedFile, ...]:
    chosen: list[ConfinedFile] = []
    freed = size = 0
    for file in candidates:
        if freed >= needed or len(chosen) >= params.max_files:
            break
        if params.max_bytes is not None and size + file.size > params.max_bytes:
            break
        chosen.append(file)
        freed += file.allocated
        size += file.size
    return tuple(chosen)


def _would_delete(plan: CleanupPlan) -> ActionResult:
    size = sum(f.size for f in plan.chosen)
    freed = sum(f.allocated for f in plan.chosen)
    met = plan.free + freed >= plan.wanted
    return ActionResult(
        ok=True,
        summary=f"would delete {len(plan.chosen)} files ({size} bytes, freeing {freed}) "
        f"beneath {plan.root}: {plan.free} bytes available, target {plan.wanted}"
        + ("" if met else " (not reachable within the caps and the matching files)"),
        details={
            "root": plan.root,
            "free": plan.free,
            "wanted": plan.wanted,
            "files": [f.path for f in plan.chosen],
            "bytes": size,
            "freed": freed,
            "passed_over": plan.passed_over,
        },
    )


def _delete(fd: int, plan: CleanupPlan, params: DiskCleanupParams, deadline: float) -> ActionResult:
    deleted: list[str] = []
    skipped: dict[str, str] = {}
    size = 0
    free, wanted = plan.free, plan.wanted
    for file in plan.candidates:
        if free >= wanted or len(deleted) >= params.max_files or time.monotonic() > deadline:
            break
        if params.max_bytes is not None and size + file.size > params.max_bytes:
            break
        reason = unlink_file(fd, file)
        if reason is not None:
            skipped[file.path] = reason
            log.info("disk.cleanup %s: left %s: %s", plan.root, file.path, reason)
            continue
        deleted.append(file.path)
        size += file.size
        free, wanted = _space(fd, params.free_target)
    log.info(
        "disk.cleanup %s: deleted %d files (%d bytes); %d bytes available, target %d",
        plan.root,
        len(deleted),
        size,
        free,
        wanted,
    )
    return ActionResult(
        ok=free >= wanted,
        summary=f"deleted {len(deleted)} files ({size} bytes) beneath {plan.root}: "
        f"{free} bytes available, target {wanted}",
        details={
            "root": plan.root,
            "files": deleted,
            "bytes": size,
            "free": free,
            "wanted": wanted,
            "skipped": skipped,
            "passed_over": plan.passed_over,
        },
    )


ACTIONS = (DiskCleanupAction,)
