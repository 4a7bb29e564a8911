"""``nodemedic status`` and ``nodemedic fleet``: one node's and the fleet's state at a glance.

``status`` reads one agent's HTTP API; ``fleet`` reads every node's retained status and
conditions from the broker. Both print a table for people (colour only on a terminal,
never the only signal) or, with ``--json``, one JSON document for scripts.

Exit codes: 0 shown; 2 bad arguments; 64 a bad ``--api`` URL; 65 the agent answered
something that is not what it serves (bad JSON); 69 the agent (``status``) or every
broker (``fleet``) could not be reached; 76 the agent answered with an HTTP error;
78 a bad configuration (or, for ``fleet``, no ``mqtt.url``).
"""

from __future__ import annotations

__all__ = [
    "EX_DATAERR",
    "EX_PROTOCOL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "FLEET_QUIET",
    "add_view_parsers",
    "run_view",
]

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, Final

from yarl import URL

from agent.config import AgentSettings, LogConfig
from agent.logs import configure_logging

EX_USAGE: Final = 64
EX_DATAERR: Final = 65
EX_UNAVAILABLE: Final = 69
EX_PROTOCOL: Final = 76
EX_CONFIG: Final = 78
FLEET_QUIET: Final = 0.5
"""Seconds without a new message after which the broker has sent all it retains."""

_READ_EXIT: Final = {"unreachable": EX_UNAVAILABLE, "http": EX_PROTOCOL, "data": EX_DATAERR}
_MAX_EVENTS: Final = 1000


def add_view_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], help_config: str
) -> None:
    """``status`` and ``fleet``."""
    text = "show this node's agent at a glance: readiness, conditions, remediation, events"
    status = sub.add_parser("status", help=text, description=text)
    status.add_argument("--config", "-c", type=Path, help=help_config)
    status.add_argument(
        "--api",
        help="the agent's API, e.g. http://127.0.0.1:9464 "
        "(default: api.listen of the configuration)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument(
        "--events", type=_event_count, default=10, help="newest events shown (0-1000, default 10)"
    )
    status.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds each request may take (default 5)"
    )
    text = "list every node's status and firing conditions from the broker's retained messages"
    fleet = sub.add_parser("fleet", help=text, description=text)
    fleet.add_argument("--config", "-c", type=Path, help=help_config)
    fleet.add_argument("--json", action="store_true", help="print one JSON document")
    fleet.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        help="seconds to collect retained messages at most (default 5)",
    )


def run_view(args: argparse.Namespace, settings: AgentSettings) -> int:
    """Carry out ``status`` or ``fleet``."""
    try:
        if args.command == "status":
            return _status(args, settings)
        return _fleet(args, settings)
    except KeyboardInterrupt:
        return 130


# -- status -----------------------------------------------------------------------------


def _status(args: argparse.Namespace, settings: AgentSettings) -> int:
    # rich and the views load only for these commands, not for every `nodemedic run`.
    from agent.node_status import StatusReadError, read_status
    from agent.status_view import render_status
    from agent.terminal import console

    api = args.api or _default_api(settings)
    if api is None:
        return EX_CONFIG
    try:
        url = URL(api)
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        print(f"nodemedic: --api {api!r} is not an http:// or https:// URL", file=sys.stderr)
        return EX_USAGE
    try:
        status = asyncio.run(read_status(str(url), events=args.events, limit=args.timeout))
    except StatusReadError as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return _READ_EXIT[err.kind]
    if args.json:
        _print_json(status.to_json())
    else:
        render_status(status, console())
    return 0


def _default_api(settings: AgentSettings) -> str | None:
    """``http://`` + the configured listen address, a wildcard address replaced by loopback."""
    if not settings.api.enabled:
        print(
            "nodemedic: the configuration turns the HTTP API off (api.enabled: false); "
            "give --api URL of an agent that serves it",
            file=sys.stderr,
        )
        return None
    host, port = settings.api.host, settings.api.port
    if port == 0:
        print(
            "nodemedic: api.listen has port 0 (the agent picks a free port at start); "
            "give --api URL",
            file=sys.stderr,
        )
        return None
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# -- fleet ------------------------------------------------------------------------------


def _fleet(args: argparse.Namespace, settings: AgentSettings) -> int:
    import ssl

    from agent.fleet_view import fleet_json, fleet_nodes, render_fleet
    from agent.mqtt import read_retained
    from agent.terminal import console

    if not settings.mqtt.enabled:
        print(
            "nodemedic: mqtt.url is not set in the configuration; no broker to read",
            file=sys.stderr,
        )
        return EX_CONFIG
    configure_logging(LogConfig(level="warning", format="text"))
    prefix = settings.mqtt.topic_prefix
    filters = [f"{prefix}/nodes/+/status", f"{prefix}/nodes/+/conditions"]
    try:
        messages, complete = asyncio.run(
            read_retained(settings.mqtt, filters, quiet=FLEET_QUIET, limit=args.timeout)
        )
    except ConnectionError as err:
        print(f"nodemedic: cannot read the fleet from the broker: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    except (OSError, ssl.SSLError) as err:  # the CA or client certificate files
        print(
            f"nodemedic: cannot set up TLS for the broker: {err}; check mqtt.tls", file=sys.stderr
        )
        return EX_CONFIG
    now = time.time()
    nodes = fleet_nodes(messages, prefix)
    if args.json:
        _print_json(fleet_json(nodes, prefix=prefix, read_at=now, complete=complete))
    else:
        render_fleet(nodes, console(), prefix=prefix, now=now, complete=complete)
    return 0


# -- shared -----------------------------------------------------------------------------


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, allow_nan=False, default=str))


def _event_count(raw: str) -> int:
    if not raw.isdigit() or int(raw) > _MAX_EVENTS:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {_MAX_EVENTS}, got {raw!r}")
    return int(raw)


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:  # also false for NaN
        raise argparse.ArgumentTypeError(f"must be seconds between 0 and 3600, got {raw!r}")
    return value
