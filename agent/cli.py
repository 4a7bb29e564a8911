"""The ``nodemedic`` command: run, check, validate, events tail, status, fleet..."""

from __future__ import annotations

__all__ = ["EX_CONFIG", "EX_SOFTWARE", "main"]

import argparse
import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli_remote import add_key_parsers, add_remote_parsers, run_keys, run_remote
from agent.cli_status import add_view_parsers, run_view
from agent.cli_why import check_playbooks, why
from agent.config import AgentSettings, LogConfig, load_settings
from agent.errors import ConfigError, ProbeError, StoreError
from agent.logs import configure_logging
from agent.model import Condition, Sample
from agent.probes.base import sample_once
from agent.probes.catalog import CATALOG, metrics_of

log = logging.getLogger("nodemedic")

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the configuration is invalid (systemd: RestartPreventExitStatus=78)."""
EX_SOFTWARE = 70
"""sysexits.h EX_SOFTWARE: the agent failed at run time."""
EX_CANTCREAT = 73
"""sysexits.h EX_CANTCREAT: the state directory or database cannot be used."""
EX_UNAVAILABLE = 69
"""sysexits.h EX_UNAVAILABLE: no broker accepted the connection."""

DEFAULT_CONFIG = Path("/etc/nodemedic/nodemedic.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nodemedic`` console script."""
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "keys":
        return run_keys(args)
    config_path = _config_path(args.config)
    try:
        settings = load_settings(config_path)
    except ConfigError as err:
        count = len(err.issues)
        print(
            f"nodemedic: invalid configuration ({count} problem{'s' * (count != 1)}):",
            file=sys.stderr,
        )
        for issue in err.issues:
            print(f"  {issue}", file=sys.stderr)
        return EX_CONFIG
    if command == "why":
        return why(settings, args.run_id)
    playbooks = ""
    if command in ("validate", "run") and settings.remediation.enabled:
        loaded = check_playbooks(settings)
        if loaded is None:
            return EX_CONFIG
        playbooks = f"; {loaded}"
    if command == "validate":
        print(
            f"{config_path or 'defaults'}: valid ({len(settings.rules)} rules, "
            f"{len(settings.probes.enabled())} probes enabled){playbooks}"
        )
        return 0
    if command == "check":
        return asyncio.run(_check(settings))
    if command == "events":
        return _tail(settings, node=args.node, event_type=args.type, count=args.count)
    if command in ("trigger", "approve", "pause", "resume"):
        return run_remote(args, settings)
    if command in ("status", "fleet"):
        return run_view(args, settings)
    return _run(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodemedic", description="Node-level health agent with safe remediation."
    )
    parser.add_argument("--version", action="version", version=f"nodemedic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    help_config = (
        "YAML configuration file (default: $NODEMEDIC_CONFIG, else /etc/nodemedic/nodemedic.yaml)"
    )
    for name, text in (
        ("run", "run the agent in the foreground"),
        ("check", "sample every probe once and print the readings and each rule's state"),
        ("validate", "check a configuration and its rules; exit 78 when invalid"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", "-c", type=Path, help=help_config)
    text = "print a remediation run's decision record: every gate's answer and every step"
    why_cmd = sub.add_parser("why", help=text, description=text)
    why_cmd.add_argument("run_id", metavar="RUN_ID", help="the run's id (from events or /v1/runs)")
    why_cmd.add_argument("--config", "-c", type=Path, help=help_config)
    events = sub.add_parser("events", help="follow events on the MQTT broker")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    text = "subscribe to live events on the broker of mqtt.url and print one line per event"
    tail = events_sub.add_parser("tail", help=text, description=text)
    tail.add_argument("--config", "-c", type=Path, help=help_config)
    tail.add_argument("--node", "-n", help="only this node's events (default: every node)")
    tail.add_argument(
        "--type", "-t", help="only this event type, or a prefix such as io.nodemedic.condition.*"
    )
    tail.add_argument("--count", type=int, help="exit after this many events")
    add_key_parsers(sub)
    add_remote_parsers(sub, help_config)
    add_view_parsers(sub, help_config)
    return parser


def _config_path(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    env = os.environ.get("NODEMEDIC_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


# -- run -----------------------------------------------------------------------------


def _run(settings: AgentSettings) -> int:
    configure_logging(settings.log)
    _cap_malloc_arenas()
    try:
        code = asyncio.run(_serve(settings))
    except StoreError as err:
        log.error("cannot use the state directory: %s", err)
        code = EX_CANTCREAT
    except OSError as err:  # e.g. the API port is taken
        log.error("cannot start: %s", err)
        code = EX_SOFTWARE
    except KeyboardInterrupt:  # SIGINT before the handlers were installed: still a clean stop
        log.info("interrupted while starting; stopped")
        code = 0
    _exit_past_hung_threads(code)
    return code


async def _serve(settings: AgentSettings) -> int:
    from agent.runtime import Agent

    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            log.info("received %s; stopping (send it again to exit at once)", sig.name)
            agent.request_stop()
        else:
            log.warning("received %s again; exiting now", sig.name)
            logging.shutdown()
            os._exit(128 + sig.value)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    trim = loop.call_later(STARTUP_SETTLED, _trim_heap)
    try:
        await agent.run()
    finally:
        trim.cancel()
    return 0


MALLOC_ARENAS = 2
"""glibc malloc arenas for the whole agent (glibc's default: 8 per core)."""

STARTUP_SETTLED = 30.0
"""Seconds after start when the start's garbage is freed and the heap is trimmed once."""

_M_ARENA_MAX = -8  # mallopt(3), <malloc.h>


def _glibc_function(name: str) -> Any | None:
    """A glibc malloc tuning function, or None under another C library (musl)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


def _cap_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before any thread starts, as MALLOC_ARENA_MAX=2 would.

    Each probe's worker thread could otherwise get an arena of its own (up to 8 per core)
    and keep its free pages resident: a default run here has 7 arenas without the cap, 2
    with it, and 0.1-0.2 MiB less RSS; more on hosts with more cores and threads. Two
    arenas hardly contend for a few allocations a second. A MALLOC_ARENA_MAX in the
    environment wins.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _trim_heap() -> None:
    """Hand the heap pages the start freed (configuration, playbooks, first runs) back.

    glibc keeps freed pages in the middle of its heap resident; malloc_trim(3) releases
    them: about 0.5 MiB once the agent has settled.
    """
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim.argtypes = (ctypes.c_size_t,)
        malloc_trim(0)


def _exit_past_hung_threads(code: int) -> None:
    """Exit now if a probe thread is stuck in a syscall: joining it would hang the stop."""
    deadline = time.monotonic() + 0.5
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("thread %s is still busy (a hung probe); exiting without it", thread.name)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(code)


# -- events tail ---------------------------------------------------------------------


def _tail(
    settings: AgentSettings, *, node: str | None, event_type: str | None, count: int | None
) -> int:
    if not settings.mqtt.enabled:
        print(
            "nodemedic: mqtt.url is not set in the configuration; nothing to tail", file=sys.stderr
        )
        return EX_CONFIG
    configure_logging(LogConfig(level="warning", format="text"))
    try:
        return asyncio.run(_tail_events(settings, node=node, event_type=event_type, count=count))
    except KeyboardInterrupt:
        return 0
    except ConnectionError as err:
        print(f"nodemedic: cannot subscribe: {err}", file=sys.stderr)
        return EX_UNAVAILABLE


async def _tail_events(
    settings: AgentSettings, *, node: str | None, event_type: str | None, count: int | None
) -> int:
    from agent.mqtt import tail_events
    from agent.topics import format_event_line

    seen = 0
    events = tail_events(settings.mqtt, node=node, event_type=event_type)
    async with contextlib.aclosing(events):
        async for event in events:
            print(format_event_line(event), flush=True)
            seen += 1
            if count is not None and seen >= count:
                break
    return 0


# -- check ---------------------------------------------------------------------------


async def _check(settings: AgentSettings) -> int:
    from agent.probes import build_probes
    from agent.rules import ConditionTracker

    configure_logging(LogConfig(level="warning", format="text"))
    probes = build_probes(settings.probes)
    tracker = ConditionTracker(
        settings.rules,
        flap_window=settings.conditions.flap_window.total_seconds(),
        flap_limit=settings.conditions.flap_limit,
    )
    rows: list[tuple[str, str, str, str]] = []
    failures: list[tuple[str, str]] = []
    disabled: list[tuple[str, str]] = []
    now = time.time()
    up: list[Sample] = []
    try:
        for probe in probes:
            try:
                # Scheduled checks: every one of them, not the first to finish.
                run_each = getattr(probe, "run_each_once", None)
                samples = await (run_each() if run_each is not None else sample_once(probe))
            except ProbeError as err:
                failures.append((probe.name, str(err)))
                up.append(Sample.of("nodemedic_probe_up", 0, probe=probe.name))
                continue
            # A probe whose source is absent on this host (the GPU probe without a driver)
            # says why instead of showing an empty, healthy-looking reading.
            reason = getattr(probe, "disabled_reason", None)
            if isinstance(reason, str):
                disabled.append((probe.name, reason))
                continue
            up.append(Sample.of("nodemedic_probe_up", 1, probe=probe.name))
            tracker.observe({spec.name for spec in metrics_of(probe.name)}, samples, now)
            rows.extend(
                (
                    s.metric,
                    ",".join(f'{k}="{v}"' for k, v in s.labels),
                    _fmt_value(s.value),
                    CATALOG[s.metric].unit if s.metric in CATALOG else "",
                )
                for s in samples
            )
    finally:
        for probe in probes:
            probe.close()
    tracker.observe({"nodemedic_probe_up"}, up, now)
    rows.extend(
        ("nodemedic_probe_up", f'probe="{s.label_dict["probe"]}"', _fmt_value(s.value), "bool")
        for s in up
    )
    _print_table(("METRIC", "LABELS", "VALUE", "UNIT"), rows)
    for name, reason in disabled:
        print(f"\nprobe {name} disabled: {reason}")
    for name, error in failures:
        print(f"\nprobe {name} FAILED: {error}")
    print()
    _print_rules(settings, tracker.conditions())
    return 0


def _print_rules(settings: AgentSettings, conditions: Sequence[Condition]) -> None:
    rows: list[tuple[str, str, str, str, str]] = []
    for rule in settings.rules:
        test = f"{rule.op} {_fmt_value(rule.threshold)}"
        if rule.for_:
            test += f" for {int(rule.for_.total_seconds())}s"
        matching = [c for c in conditions if c.rule == rule.name]
        if not matching:
            rows.append((rule.name, "-", "no data", test, rule.severity.value))
        for cond in matching:
            state = cond.state.value
            if cond.state.value == "pending":
                state = "pending (breaching; would fire after the hold time)"
            labels = ",".join(f'{k}="{v}"' for k, v in cond.labels) or "-"
            value = _fmt_value(cond.value) if cond.value is not None else "-"
            rows.append((rule.name, labels, f"{state} (value {value})", test, rule.severity.value))
    _print_table(("RULE", "SERIES", "STATE", "CONDITION", "SEVERITY"), rows)


def _fmt_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.4g}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
