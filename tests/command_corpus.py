"""A deterministic corpus of malformed and oversized command payloads.

Every payload is derived from valid signed commands by one mutation: truncation, bit
flips, a field of the wrong type, a huge string, deep nesting, a reshaped envelope,
a re-encoding, a tampered field under a kept signature, or a payload far over the size
limit (up to 1 MiB). The same seed gives the same corpus, so a failure can be replayed.
"""

from __future__ import annotations

__all__ = ["HUGE", "malformed_commands"]

import base64
import json
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

HUGE = 1 << 20
"""The largest payload in the corpus: 1 MiB, far over the command limit, within the broker's."""

_FIELDS = (
    "version",
    "key_id",
    "issuer",
    "selector",
    "kind",
    "playbook",
    "target",
    "params",
    "issued_at",
    "expires_at",
    "nonce",
)


_REQUIRED = ("key_id", "issuer", "selector", "kind", "issued_at", "expires_at", "nonce")
_DEFAULTS: dict[str, Any] = {"playbook": None, "target": None, "run_id": None, "params": {}}
"""Values that are a field's default: setting them may leave the signed command as it was."""


def _wrong_value(rng: random.Random) -> Any:
    choices: list[Any] = [
        None,
        True,
        -1,
        2**70,
        1.5,
        float("1e308"),
        "",
        "x" * rng.randint(1, 600),
        [],
        [1, "a", None],
        {},
        {"nested": {"deeper": [1, 2, 3]}},
        "\u0000\ud7ff\u202e",
        "../../etc/passwd",
        "web-*",
    ]
    return rng.choice(choices)


def _nested(depth: int, rng: random.Random) -> str:
    opener, closer = rng.choice((("[", "]"), ('{"a":', "}")))
    return opener * depth + "1" + closer * depth


class _Mutator:
    def __init__(self, valid: Sequence[bytes], rng: random.Random) -> None:
        self.valid = valid
        self.rng = rng

    def base(self) -> bytes:
        return self.rng.choice(self.valid)

    def body(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.base())
        return decoded

    def truncate(self) -> bytes:
        payload = self.base()
        return payload[: self.rng.randrange(len(payload))]

    def flip_bits(self) -> bytes:
        payload = bytearray(self.base())
        for _ in range(self.rng.randint(1, 8)):
            payload[self.rng.randrange(len(payload))] ^= 1 << self.rng.randrange(8)
        return bytes(payload)

    def wrong_type(self) -> bytes:
        body = self.body()
        field = self.rng.choice(_FIELDS)
        value = _wrong_value(self.rng)
        while field in _DEFAULTS and value == _DEFAULTS[field]:
            value = _wrong_value(self.rng)
        body["command"][field] = value
        return json.dumps(body).encode()

    def missing_field(self) -> bytes:
        body = self.body()
        del body["command"][self.rng.choice(_REQUIRED)]
        return json.dumps(body).encode()

    def extra_field(self) -> bytes:
        body = self.body()
        target = body if self.rng.random() < 0.5 else body["command"]
        target[f"x{self.rng.randrange(100)}"] = _wrong_value(self.rng)
        return json.dumps(body).encode()

    def huge_string(self) -> bytes:
        body = self.body()
        size = self.rng.choice((4_000, 15_000, 17_000, 100_000))
        body["command"][self.rng.choice(("issuer", "target", "nonce", "key_id"))] = "A" * size
        return json.dumps(body).encode()

    def deep_nesting(self) -> bytes:
        depth = self.rng.choice((50, 500, 999, 1_000, 3_000, 7_000))
        nested = _nested(depth, self.rng)
        where = self.rng.random()
        if where < 0.3:
            return nested.encode()
        body = json.dumps(self.body())
        field = self.rng.choice(("params", "selector", "signature"))
        if field == "signature":
            return body.replace('"signature":', f'"signature":{nested},"s":', 1).encode()
        return body.replace(f'"{field}":', f'"{field}":{nested},"{field}_":', 1).encode()

    def reshaped(self) -> bytes:
        body = self.body()
        shapes: list[Callable[[], Any]] = [
            lambda: [body],
            lambda: body["command"],
            lambda: {"command": json.dumps(body["command"]), "signature": body["signature"]},
            lambda: {"command": body["command"], "signature": None},
            lambda: {"command": body["command"], "signature": "!!not base64!!"},
            lambda: {"command": body["command"], "signature": base64.b64encode(b"x").decode()},
            lambda: {"command": body["command"]},
            lambda: {**body, "signature": [body["signature"]]},
            lambda: 42,
            lambda: "command",
            lambda: None,
        ]
        return json.dumps(self.rng.choice(shapes)()).encode()

    def encoding(self) -> bytes:
        payload = self.base()
        # Not UTF-16 or a BOM: json.loads decodes those, and the same signed command in
        # another encoding is still that command (its nonce refuses a second copy).
        tricks: list[Callable[[], bytes]] = [
            lambda: payload.decode().encode("utf-32-be")[:-4],
            lambda: b"\xef\xbb" + payload,
            lambda: payload + b"\x00",
            lambda: payload.replace(b'"', b"'"),
            lambda: bytes(self.rng.randrange(256) for _ in range(self.rng.randint(0, 300))),
            lambda: b"",
            lambda: b"{}" * 10,
            lambda: b"NaN",
            lambda: payload[:20] + b"\xff\xfe\xfd" + payload[20:],
        ]
        return self.rng.choice(tricks)()

    def tampered(self) -> bytes:
        body = self.body()
        command = body["command"]
        field = self.rng.choice(("issued_at", "expires_at", "playbook", "target", "selector"))
        if field in ("issued_at", "expires_at"):
            command[field] += self.rng.choice((-3600, -1, 1, 3600))
        elif field == "selector":
            command[field] = {"nodes": ["*"]}
        else:
            command[field] = "other-" + str(command.get(field, "x"))
        return json.dumps(body).encode()

    def oversized(self) -> bytes:
        size = self.rng.choice((16 * 1024 + 1, 64 * 1024, 256 * 1024, HUGE))
        payload = self.base()
        return (payload + b" " * size)[:size]


def malformed_commands(valid: Sequence[bytes], count: int, *, seed: int) -> Iterator[bytes]:
    """``count`` payloads mutated from the ``valid`` signed commands.

    About one in two hundred is oversized (a quarter of those 1 MiB), so the corpus
    stays quick to send while every mutation kind is well represented.
    """
    rng = random.Random(seed)  # noqa: S311 - a replayable corpus, not a secret
    mutator = _Mutator(valid, rng)
    kinds = [
        mutator.truncate,
        mutator.flip_bits,
        mutator.wrong_type,
        mutator.missing_field,
        mutator.extra_field,
        mutator.huge_string,
        mutator.deep_nesting,
        mutator.reshaped,
        mutator.encoding,
        mutator.tampered,
    ]
    for _ in range(count):
        if rng.random() < 0.005:
            yield mutator.oversized()
        else:
            yield rng.choice(kinds)()
