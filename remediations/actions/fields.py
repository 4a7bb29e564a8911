"""Pieces the actions' params models share: path checks and the typed params accessor."""

from __future__ import annotations

__all__ = ["absolute_path", "executable", "params_as", "positive"]

import os
import stat
from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel

from remediations.actions.base import ActionContext, ActionError

P = TypeVar("P", bound=BaseModel)


def absolute_path(value: str) -> str:
    """Accept an absolute path without NUL bytes.

    Raises:
        ValueError: naming what is wrong (pydantic reports it under the field).
    """
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    if "\0" in value:
        raise ValueError("a path must not contain NUL")
    return value


def positive(value: timedelta) -> timedelta:
    """Accept a duration longer than zero.

    Raises:
        ValueError: when it is zero or negative.
    """
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


def params_as(ctx: ActionContext, model: type[P]) -> P:
    """The step's params as ``model``, which the engine validated them with.

    Raises:
        ActionError: when the engine passed another model (a wiring bug).
    """
    if not isinstance(ctx.params, model):
        raise ActionError(f"params are {type(ctx.params).__name__}, expected {model.__name__}")
    return ctx.params


def executable(path: str) -> bool:
    """Whether ``path`` is a regular file this process may execute (blocking)."""
    try:
        mode = os.stat(path).st_mode  # noqa: PTH116 - one syscall, no Path object
    except OSError:
        return False
    return stat.S_ISREG(mode) and os.access(path, os.X_OK)
