"""The malformed-command corpus against the verifier: a reason for every payload, no crash.

The same corpus is published to a real agent in tests/integration/test_remote_fuzz.py;
here each payload goes straight to :func:`agent.commands.verify_command`, so a payload
that escapes with anything but a :class:`CommandRejectedError` is found in seconds.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands import (
    Command,
    CommandRejectedError,
    KeyPolicy,
    Rejection,
    TrustedKey,
    sign_command,
    verify_command,
)
from tests.command_corpus import HUGE, malformed_commands

NOW = 1_800_000_000
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # the same corpus every run
KEYS = {"ops": TrustedKey("ops", KEY.public_key(), KeyPolicy(playbooks=("dry-*",)))}


def _valid() -> list[bytes]:
    base: dict[str, Any] = {
        "key_id": "ops",
        "issuer": "fuzz",
        "selector": {"nodes": ["web-1"], "labels": {"rack": "a"}},
        "issued_at": NOW,
        "expires_at": NOW + 60,
    }
    commands: list[dict[str, Any]] = [
        {"kind": "run", "playbook": "dry-check", "target": "demo.service", "params": {"n": 1}},
        {"kind": "approve", "run_id": "01ABCDEF"},
        {"kind": "pause"},
        {"kind": "status"},
    ]
    return [
        sign_command(Command.model_validate({**base, **c, "nonce": f"corpus-nonce-{i:04d}"}), KEY)
        for i, c in enumerate(commands)
    ]


def _rejection(payload: bytes) -> CommandRejectedError:
    try:
        verify_command(
            payload,
            keys=KEYS,
            node="web-1",
            labels={"rack": "a"},
            now=NOW,
            max_skew=30,
            max_lifetime=600,
        )
    except CommandRejectedError as err:
        return err
    raise AssertionError(f"accepted a mutated payload: {payload[:300]!r}")


def test_every_malformed_payload_is_rejected_with_a_reason() -> None:
    reasons: Counter[Rejection] = Counter()
    sizes = []
    for payload in malformed_commands(_valid(), 10_000, seed=7):
        sizes.append(len(payload))
        rejection = _rejection(payload)
        assert rejection.detail
        reasons[rejection.reason] += 1

    assert sum(reasons.values()) == 10_000
    assert max(sizes) == HUGE
    for reason in (
        Rejection.TOO_LARGE,
        Rejection.MALFORMED,
        Rejection.BAD_SIGNATURE,
        Rejection.UNKNOWN_KEY,
    ):
        assert reasons[reason] > 0, reasons
