"""Logging: structured fields to the journal under systemd, plain lines to stderr otherwise."""

from __future__ import annotations

__all__ = ["configure_logging", "under_journald"]

import importlib
import logging
import os
import sys
from collections.abc import Mapping

from agent.config import LogConfig


def under_journald(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is connected to the journal (``JOURNAL_STREAM`` names it)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":", 1))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure_logging(config: LogConfig) -> None:
    """Install the root handler for the chosen format (``auto`` picks journal under systemd)."""
    level = getattr(logging, config.level.upper())
    handler: logging.Handler
    use_journal = config.format == "journal" or (config.format == "auto" and under_journald())
    journal_handler = _journal_handler() if use_journal else None
    if journal_handler is not None:
        handler = journal_handler
        # journald stamps every entry; our own timestamps would only repeat it.
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp logs every request at info; the API is scraped every few seconds.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _journal_handler() -> logging.Handler | None:
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="nodemedic")
    return handler
