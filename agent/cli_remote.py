"""The operator's side of remote commands: keys, trigger, approve, pause and resume.

Commands are signed here with the operator's private key and sent over MQTT (to one
node's command topic, or to ``fleet/commands`` with a selector) or, with ``--api``, to
one agent's HTTP API. ``--wait`` prints each node's reply as it arrives.
"""

from __future__ import annotations

__all__ = ["add_key_parsers", "add_remote_parsers", "run_keys", "run_remote"]

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from agent.commands import (
    Command,
    Selector,
    command_params,
    generate_keypair,
    load_private_key,
    new_nonce,
    sign_command,
)
from agent.config import AgentSettings
from agent.config_remote import hash_token
from agent.config_types import parse_duration
from agent.topics import Topics

EX_USAGE = 64
EX_UNAVAILABLE = 69


def add_key_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``nodemedic keys generate`` and ``nodemedic keys token``."""
    keys = sub.add_parser("keys", help="make command-signing keys and API tokens")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    text = "write an Ed25519 key pair: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub"
    generate = keys_sub.add_parser("generate", help=text, description=text)
    generate.add_argument("--out", type=Path, required=True, help="directory to write to")
    generate.add_argument("--name", required=True, help="key name, also the default key id")
    text = "print a new API token and the sha256 to put in remote.api_tokens"
    keys_sub.add_parser("token", help=text, description=text)


def run_keys(args: argparse.Namespace) -> int:
    """Carry out a ``keys`` subcommand."""
    if args.keys_command == "token":
        token = secrets.token_urlsafe(32)
        print(f"token:  {token}")
        print(f"sha256: {hash_token(token)}")
        return 0
    try:
        key_path, pub_path = generate_keypair(args.out, args.name)
    except (OSError, ValueError) as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return 73  # EX_CANTCREAT
    print(f"private key: {key_path} (keep it secret; mode 0600)")
    print(f"public key:  {pub_path}: {pub_path.read_text().strip()}")
    print(f"trust it with remote.keys: [{{id: {args.name}, public_key: <the line above>, ...}}]")
    return 0


def add_remote_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], help_config: str
) -> None:
    """``trigger``, ``approve``, ``pause`` and ``resume``."""
    specs = {
        "trigger": "sign and send a command that runs a playbook",
        "approve": "sign and send the approval of a waiting run",
        "pause": "pause remediation on the selected nodes (or the whole fleet with --fleet)",
        "resume": "resume remediation on the selected nodes (or the whole fleet with --fleet)",
    }
    for name, text in specs.items():
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", "-c", type=Path, help=help_config)
        cmd.add_argument("--key", type=Path, required=True, help="private key file (NAME.key)")
        cmd.add_argument("--key-id", help="key id the agents trust (default: the key's name)")
        cmd.add_argument("--issuer", help="who is asking (default: $USER@host)")
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("--node", help="one node by name")
        where.add_argument(
            "--selector",
            help="nodes by name globs and labels, comma separated: 'web-*,rack=a'",
        )
        if name in ("pause", "resume"):
            where.add_argument(
                "--fleet", action="store_true", help="every node, as the retained fleet pause"
            )
        cmd.add_argument(
            "--ttl",
            help="how long the command stays valid (default 60s; a --fleet pause holds 1h)",
        )
        cmd.add_argument("--api", help="send to one agent's HTTP API instead of MQTT")
        cmd.add_argument(
            "--wait",
            type=float,
            nargs="?",
            const=10.0,
            default=0.0,
            help="seconds to wait for replies",
        )
        if name == "trigger":
            cmd.add_argument("playbook")
            cmd.add_argument("--target", help="what the playbook acts on")
            cmd.add_argument("--param", action="append", default=[], help="NAME=VALUE")
        if name == "approve":
            cmd.add_argument("run_id")


def run_remote(args: argparse.Namespace, settings: AgentSettings) -> int:
    """Sign the command ``args`` describe and send it; print the replies."""
    try:
        command = _command(args)
        payload = sign_command(command, load_private_key(args.key))
    except (OSError, ValueError) as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EX_USAGE
    if args.api:
        return asyncio.run(_send_http(args.api, payload))
    if not settings.mqtt.enabled:
        print(
            "nodemedic: mqtt.url is not set; use --api URL or a config with mqtt.url",
            file=sys.stderr,
        )
        return EX_USAGE
    topics = Topics(settings.mqtt.topic_prefix, args.node or "-")
    fleet = bool(getattr(args, "fleet", False))
    topic = topics.fleet_pause if fleet else topics.commands if args.node else topics.fleet_commands
    try:
        return asyncio.run(
            _send_mqtt(
                settings,
                topic,
                payload,
                command,
                retain=fleet,
                wait=args.wait,
                single=bool(args.node),
            )
        )
    except (ConnectionError, ValueError) as err:
        print(f"nodemedic: cannot send the command: {err}", file=sys.stderr)
        return EX_UNAVAILABLE


def _command(args: argparse.Namespace) -> Command:
    now = int(time.time())
    fleet = bool(getattr(args, "fleet", False))
    default_ttl = "1h" if fleet and args.command == "pause" else "60s"
    ttl = int(parse_duration(args.ttl or default_ttl).total_seconds())
    if fleet:
        selector = Selector()
    elif args.node:
        selector = Selector(nodes=(args.node,))
    else:
        selector = _selector(args.selector)
    fields: dict[str, Any] = {
        "key_id": args.key_id or args.key.stem,
        "issuer": args.issuer or _default_issuer(),
        "selector": selector,
        "kind": {"trigger": "run"}.get(args.command, args.command),
        "issued_at": now,
        "expires_at": now + max(1, ttl),
        "nonce": new_nonce(),
    }
    if args.command == "trigger":
        fields |= {
            "playbook": args.playbook,
            "target": args.target,
            "params": command_params(args.param),
        }
    if args.command == "approve":
        fields["run_id"] = args.run_id
    return Command.model_validate({k: v for k, v in fields.items() if v is not None})


def _selector(expr: str) -> Selector:
    nodes: list[str] = []
    labels: dict[str, str] = {}
    for term in filter(None, (part.strip() for part in expr.split(","))):
        name, sep, value = term.partition("=")
        if sep:
            labels[name] = value
        else:
            nodes.append(term)
    if not nodes and not labels:
        raise ValueError(f"selector {expr!r} names no node and no label")
    return Selector(nodes=tuple(nodes), labels=labels)


def _default_issuer() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


async def _send_mqtt(
    settings: AgentSettings,
    topic: str,
    payload: bytes,
    command: Command,
    *,
    retain: bool,
    wait: float,
    single: bool,
) -> int:
    from agent.mqtt import send_command

    replies = send_command(
        settings.mqtt,
        topic=topic,
        payload=payload,
        expiry=command.expires_at - command.issued_at,
        retain=retain,
        wait=wait,
    )
    seen = failed = 0
    async with contextlib.aclosing(replies):
        async for reply in replies:
            seen += 1
            failed += not reply.get("ok")
            _print_reply(reply)
            if single:
                break  # one named node: its reply is all there is
    if wait > 0 and not retain and seen == 0:
        print(f"nodemedic: no reply within {wait:g}s", file=sys.stderr)
        return 1
    print(f"sent to {topic}" + (f"; {seen} replies" if wait > 0 else ""), file=sys.stderr)
    return 1 if failed else 0


async def _send_http(url: str, payload: bytes) -> int:
    endpoint = url.rstrip("/") + "/v1/commands"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(endpoint, data=payload, headers={"Content-Type": "application/json"}) as resp,
        ):
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        print(f"nodemedic: cannot send the command to {endpoint}: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    if isinstance(body, dict):
        _print_reply(body)
        return 0 if body.get("ok") else 1
    print(f"nodemedic: unexpected answer from {endpoint}: {body!r}", file=sys.stderr)
    return 1


def _print_reply(reply: dict[str, Any]) -> None:
    state = "ok" if reply.get("ok") else "REFUSED"
    run = f" run={reply['run_id']}" if reply.get("run_id") else ""
    node, reason, detail = (reply.get(k, "?") for k in ("node", "reason", "detail"))
    print(f"{node}: {state} {reason}{run}: {detail}")
