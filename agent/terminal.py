"""Terminal output of ``nodemedic status`` and ``nodemedic fleet``.

A :func:`console` colours only on a terminal (rich's own detection; ``NO_COLOR`` turns
colour off, ``FORCE_COLOR`` on) and, when piped, never folds a line, so ``grep`` and
``awk`` see one row per line. Colour only ever repeats what a word already says. Times
are shown in the local time zone with the zone's name.
"""

from __future__ import annotations

__all__ = [
    "STYLES",
    "console",
    "emit",
    "format_age",
    "format_time",
    "join",
    "parse_time",
    "styled",
    "table",
    "when",
]

import sys
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Final, TextIO

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

_PIPED_WIDTH: Final = 1000
"""Columns when not on a terminal: wide enough that no row is folded."""

STYLES: Final = {
    "critical": "bold red",
    "warning": "yellow",
    "info": "cyan",
    "firing": "bold red",
    "pending": "yellow",
    "bad": "bold red",
    "warn": "yellow",
    "good": "green",
    "dim": "dim",
}
"""Styles by meaning; each goes with a word that says the same."""


def console(file: TextIO | None = None, *, width: int | None = None) -> Console:
    """A rich Console on ``file`` (stdout): colour on a terminal only, no markup.

    Args:
        file: where to write.
        width: columns; by default the terminal's, or very wide when piped.
    """
    out = file if file is not None else sys.stdout
    is_tty = out.isatty()
    if width is None and not is_tty:
        width = _PIPED_WIDTH
    # Values from the agent and the broker may contain "[...]": never read them as markup.
    return Console(file=out, width=width, markup=False, highlight=False, emoji=False)


def emit(out: Console, *renderables: RenderableType) -> None:
    """Print ``renderables``; when piped, without the padding rich leaves at line ends."""
    if out.is_terminal:
        for renderable in renderables:
            out.print(renderable)
        return
    with out.capture() as captured:
        for renderable in renderables:
            out.print(renderable)
    lines = captured.get().splitlines()
    out.file.write("".join(line.rstrip() + "\n" for line in lines))


def table(*headers: str) -> Table:
    """A plain table like ``kubectl get``: upper-case headers, no borders."""
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        grid.add_column(header)
    return grid


def styled(text: str, meaning: str | None) -> Text:
    """``text`` in the style of ``meaning`` (see :data:`STYLES`); unstyled when unknown."""
    return Text(text, style=STYLES.get(meaning or "", ""))


def parse_time(value: object) -> float | None:
    """Epoch seconds of an RFC 3339 time (``2026-11-29T22:10:03.120Z``); None if not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # a time without a zone is ambiguous: not ours
    return parsed.timestamp()


def format_time(epoch: float, tz: tzinfo | None = None, *, today: float | None = None) -> str:
    """``2026-11-29 23:10:03 CET``: local time (or ``tz``) with the zone's name.

    Args:
        epoch: the moment.
        tz: the zone; the local one by default.
        today: when given, a moment on the same day as this one is shown as ``23:10:03 CET``.
    """
    moment = _at(epoch, tz)
    zone = moment.strftime("%Z") or moment.strftime("%z")
    if today is not None and _at(today, tz).date() == moment.date():
        return f"{moment:%H:%M:%S} {zone}"
    return f"{moment:%Y-%m-%d %H:%M:%S} {zone}"


def _at(epoch: float, tz: tzinfo | None) -> datetime:
    return datetime.fromtimestamp(epoch, tz) if tz is not None else _local(epoch)


def _local(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch).astimezone()


def format_age(seconds: float) -> str:
    """A short duration: ``45s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def when(epoch: float | None, now: float, tz: tzinfo | None = None) -> str:
    """``23:10:03 CET (5m12s ago)`` (with the date unless today), or ``-`` when unknown."""
    if epoch is None:
        return "-"
    return f"{format_time(epoch, tz, today=now)} ({format_age(now - epoch)} ago)"


def join(parts: Sequence[str]) -> str:
    """Comma-separated, ``-`` when empty."""
    return ", ".join(parts) if parts else "-"
