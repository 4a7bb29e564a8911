"""The ``remote`` section: who may send commands, and what each may do.

Keys sign commands that arrive over MQTT or HTTP; API tokens authorise HTTP writes.
Both carry the same policy fields. A token is stored as the SHA-256 of its value:
tokens are 256-bit random strings (``nodemedic keys token``), for which a plain hash
is as strong as a slow one, and the config file never holds a usable secret.
"""

from __future__ import annotations

__all__ = ["ApiTokenConfig", "PolicyConfig", "RemoteConfig", "RemoteKeyConfig", "hash_token"]

import hashlib
import hmac
from collections.abc import Sequence
from datetime import timedelta
from typing import Self

from pydantic import Field, field_validator, model_validator

from agent.commands import KeyPolicy, TrustedKey, load_public_key
from agent.config_types import Duration, FrozenModel

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


def hash_token(token: str) -> str:
    """The hex SHA-256 a token is stored as."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class PolicyConfig(FrozenModel):
    """What a key or token may do.

    Attributes:
        playbooks: playbook names or globs it may run and reset the breaker of.
        params: parameter names it may set on a run.
        approve: it may approve waiting runs.
        pause: it may pause and resume remediation.
    """

    playbooks: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    approve: bool = False
    pause: bool = False

    def policy(self) -> KeyPolicy:
        """The policy as the verifier uses it."""
        return KeyPolicy(
            playbooks=self.playbooks,
            params=frozenset(self.params),
            approve=self.approve,
            pause=self.pause,
        )


class RemoteKeyConfig(PolicyConfig):
    """A trusted Ed25519 public key and its policy.

    Attributes:
        id: the key id commands name.
        public_key: the raw 32-byte key in base64, as ``nodemedic keys generate`` writes
            it to ``NAME.pub``.
    """

    id: str = Field(pattern=_ID)
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _valid_key(cls, value: str) -> str:
        try:
            load_public_key(value)
        except ValueError as err:
            raise ValueError(f"not an Ed25519 public key: {err}") from None
        return value.strip()

    def trusted(self) -> TrustedKey:
        """The key as the verifier uses it."""
        return TrustedKey(
            id=self.id, public_key=load_public_key(self.public_key), policy=self.policy()
        )


class ApiTokenConfig(PolicyConfig):
    """A bearer token for HTTP writes, stored hashed.

    Attributes:
        name: who holds it, recorded with every write it authorises.
        sha256: the hex SHA-256 of the token (``nodemedic keys token`` prints both).
    """

    name: str = Field(pattern=_ID)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def matches(self, token: str) -> bool:
        """True when ``token`` hashes to this one (compared in constant time)."""
        return hmac.compare_digest(hash_token(token), self.sha256)


class RemoteConfig(FrozenModel):
    """Remote commands over MQTT and HTTP writes.

    Attributes:
        keys: trusted command-signing keys; with none, every command is refused.
        api_tokens: bearer tokens for HTTP writes; with none, HTTP writes are refused.
        max_clock_skew: how far in the future a command may be dated.
        max_command_lifetime: the longest a command may stay valid (expires - issued).
        max_pause: the longest a retained fleet pause may hold before it lapses.
    """

    keys: tuple[RemoteKeyConfig, ...] = ()
    api_tokens: tuple[ApiTokenConfig, ...] = ()
    max_clock_skew: Duration = timedelta(seconds=30)
    max_command_lifetime: Duration = timedelta(minutes=10)
    max_pause: Duration = timedelta(days=7)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _refuse_duplicates("keys", [key.id for key in self.keys])
        _refuse_duplicates("api_tokens", [token.name for token in self.api_tokens])
        return self

    def trusted_keys(self) -> dict[str, TrustedKey]:
        """The keys by id, as the verifier uses them."""
        return {key.id: key.trusted() for key in self.keys}

    def token_for(self, token: str) -> ApiTokenConfig | None:
        """The configured token ``token`` is, or None. Every entry is compared."""
        found = None
        for entry in self.api_tokens:
            # No early exit: the time taken does not tell which entry matched.
            if entry.matches(token):
                found = entry
        return found


def _refuse_duplicates(field: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{field}: {name!r} appears twice; each must be unique")
        seen.add(name)
