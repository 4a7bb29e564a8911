"""A small etcd v3 client over etcd's JSON gateway, through aiohttp.

etcd serves its gRPC API as JSON over HTTP (the grpc-gateway): ``POST /v3/kv/range``,
``/v3/kv/txn``, ``/v3/lease/grant``, ``/v3/lease/keepalive``, ``/v3/lease/revoke`` and
``/v3/auth/authenticate``, and the streaming ``POST /v3/watch`` (one JSON object a
line), with keys and values base64-encoded and 64-bit integers as
JSON strings. etcd 3.4 and later serve these ``/v3/`` paths (3.4 also ``/v3beta/``).

Why the gateway and not a client library: the Python etcd v3 clients are either
unmaintained (``etcd3``, last released in 2020, pinned to an old ``grpcio`` and
``protobuf``) or synchronous (``etcd3gw``, on ``requests``). aiohttp is already a
dependency of the agent, the gateway is part of every etcd server, and the few calls a
lease-based semaphore needs are small JSON bodies; no gRPC stack is shipped.

Endpoints are tried in order; the one that answered last is tried first next time.
Every request has a timeout. Errors are one :class:`EtcdError` naming the endpoint and
what failed; the caller decides what that means (the fleet budget fails safe).
"""

from __future__ import annotations

__all__ = [
    "EtcdClient",
    "EtcdError",
    "KeyValue",
    "TxnResult",
    "b64",
    "delete_op",
    "mod_equals",
    "prefix_end",
    "put_op",
    "range_op",
]

import asyncio
import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import AgentError

_UNAUTHENTICATED = 16
"""gRPC status of an expired or invalid auth token: authenticate again, once."""
_UNAVAILABLE = 14
"""gRPC status of a member that cannot serve (no leader, its gateway's dial failed)."""


class EtcdError(AgentError):
    """Raised when no etcd endpoint answers in time, or etcd refuses a request.

    Attributes:
        code: etcd's gRPC status code when etcd refused, else None.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def b64(text: str) -> str:
    """``text`` as the gateway spells bytes: base64 of its UTF-8."""
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def prefix_end(prefix: str) -> str:
    """The ``range_end`` selecting every key that starts with ``prefix`` (ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as a range returns it.

    Attributes:
        key: the key.
        value: its value (UTF-8).
        create_revision: revision that created it.
        mod_revision: revision of its last change.
        lease: the lease it is attached to, 0 for none.
    """

    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyValue:
        """Decode a gateway ``kv`` object (zero fields are left out by the gateway)."""
        return cls(
            key=_unb64(str(data["key"])),
            value=_unb64(str(data.get("value", ""))),
            create_revision=int(data.get("create_revision", 0)),
            mod_revision=int(data.get("mod_revision", 0)),
            lease=int(data.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome.

    Attributes:
        succeeded: every compare held (the success branch ran).
        revision: the store's revision after the transaction.
        responses: the branch's responses, as the gateway sent them.
    """

    succeeded: bool
    revision: int
    responses: Sequence[Mapping[str, Any]]

    def kvs(self, index: int) -> list[KeyValue]:
        """The keys of the ``index``-th response, which must be a range."""
        found = self.responses[index].get("response_range", {})
        return [KeyValue.from_json(kv) for kv in found.get("kvs", ())]

    def count(self, index: int) -> int:
        """The count of the ``index``-th response, which must be a range."""
        return int(self.responses[index].get("response_range", {}).get("count", 0))


class EtcdClient:
    """Calls etcd's JSON gateway on the first endpoint that answers.

    Args:
        endpoints: client URLs (``http://127.0.0.1:2379``), tried in order.
        timeout: seconds for one request to one endpoint.
        username: authenticate as this user (etcd auth enabled), or None.
        password: the user's password.
        ca_file: CA bundle for https endpoints (None: the system's).
        cert_file: client certificate for https endpoints.
        key_file: its private key.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self._endpoints = [url.rstrip("/") for url in endpoints]
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._credentials = (username, password or "") if username is not None else None
        self._token: str | None = None
        self._tls_files = (ca_file, cert_file, key_file)
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def aclose(self) -> None:
        """Close the HTTP session; later calls fail with :class:`EtcdError`."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _tls(self) -> ssl.SSLContext:
        """The TLS context for https endpoints, made on first use from the configured files.

        A missing or unreadable file fails each call (the agent keeps running) rather
        than the start.
        """
        if self._ssl is None:
            ca_file, cert_file, key_file = self._tls_files
            try:
                context = ssl.create_default_context(
                    cafile=str(ca_file) if ca_file is not None else None
                )
                if cert_file is not None:
                    context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
            except (OSError, ssl.SSLError) as err:
                names = ("ca_file", "cert_file", "key_file")
                files = ", ".join(
                    f"{name} {path}"
                    for name, path in zip(names, self._tls_files, strict=True)
                    if path is not None
                )
                raise EtcdError(
                    f"cannot load the TLS files for etcd ({files or 'system CAs'}): {err}"
                ) from err
            self._ssl = context
        return self._ssl

    # -- calls -------------------------------------------------------------------------

    async def range_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key under ``prefix`` (linearizable read)."""
        body = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        reply = await self.call("/v3/kv/range", body)
        return [KeyValue.from_json(kv) for kv in reply.get("kvs", ())]

    async def txn(
        self,
        compare: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
    ) -> TxnResult:
        """One transaction: if every ``compare`` holds, ``success`` runs, else ``failure``."""
        reply = await self.call(
            "/v3/kv/txn",
            {"compare": list(compare), "success": list(success), "failure": list(failure)},
        )
        return TxnResult(
            succeeded=bool(reply.get("succeeded", False)),
            revision=int(reply.get("header", {}).get("revision", 0)),
            responses=list(reply.get("responses", ())),
        )

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        reply = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise EtcdError(f"etcd refused a lease: {reply['error']}")
        return int(reply["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL, 0 when it no longer exists (expired, revoked)."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = reply.get("result", reply)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease``, deleting its keys; a lease that is already gone is fine."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as err:
            if "lease not found" not in str(err):
                raise

    async def wait_deleted(self, key: str, *, prefix: bool, after: int, within: float) -> bool:
        """Wait up to ``within`` seconds for ``key`` (or a key under it) to be deleted.

        A watch from revision ``after + 1`` with puts filtered out, so a delete between
        the caller's read at ``after`` and the watch's start is not missed. Returns True
        when a delete was seen (or etcd ended the watch, e.g. history compacted: the
        caller reads again either way), False when the time ran out.

        Raises:
            EtcdError: the endpoint did not answer or refused the watch.
        """
        request: dict[str, Any] = {
            "key": b64(key),
            "start_revision": str(after + 1),
            "filters": ["NOPUT"],
        }
        if prefix:
            request["range_end"] = b64(prefix_end(key))
        endpoint = self._endpoints[0]
        try:
            if self._credentials is not None and self._token is None:
                await self._authenticate(endpoint)
            return await self._watch(endpoint, {"create_request": request}, within)
        except _UnreachableError as err:
            raise EtcdError(f"etcd watch at {endpoint}: {err}") from err

    async def _watch(self, endpoint: str, body: Mapping[str, Any], within: float) -> bool:
        session, tls, headers = self._request_parts(endpoint)
        stream = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total)
        try:
            async with asyncio.timeout(within):
                async with session.post(
                    endpoint + "/v3/watch", json=body, headers=headers, ssl=tls, timeout=stream
                ) as resp:
                    if resp.status != 200:
                        text = await resp.text()
                        raise EtcdError(
                            f"etcd at {endpoint} refused a watch (HTTP {resp.status}): "
                            f"{text[:200]!r}"
                        )
                    async for line in resp.content:
                        reply = json.loads(line) if line.strip() else {}
                        if reply.get("error"):
                            raise EtcdError(f"etcd at {endpoint} ended a watch: {reply['error']}")
                        result = reply.get("result", {})
                        if result.get("events") or result.get("canceled"):
                            return True
                        if int(result.get("compact_revision", 0)):
                            return True
        except TimeoutError:
            return False
        except (aiohttp.ClientError, OSError, ValueError) as err:
            raise EtcdError(f"etcd watch at {endpoint}: {_describe(err)}") from err
        return True  # the stream ended: read again

    # -- transport ---------------------------------------------------------------------

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers.

        Raises:
            EtcdError: no endpoint answered, or etcd refused the request.
        """
        failures: list[str] = []
        for _ in range(len(self._endpoints)):
            endpoint = self._endpoints[0]
            try:
                return await self._call_once(endpoint, path, body)
            except _UnreachableError as err:
                failures.append(f"{endpoint}: {err}")
                self._endpoints.append(self._endpoints.pop(0))
        raise EtcdError("no etcd endpoint answered (" + "; ".join(failures) + ")")

    async def _call_once(self, endpoint: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._credentials is not None and self._token is None:
            await self._authenticate(endpoint)
        try:
            return await self._post(endpoint, path, body)
        except EtcdError as err:
            if self._credentials is None or err.code != _UNAUTHENTICATED:
                raise
        self._token = None  # expired: a fresh one, once
        await self._authenticate(endpoint)
        return await self._post(endpoint, path, body)

    async def _authenticate(self, endpoint: str) -> None:
        name, password = self._credentials or ("", "")
        reply = await self._post(
            endpoint, "/v3/auth/authenticate", {"name": name, "password": password}
        )
        token = reply.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdError(f"etcd at {endpoint} gave no auth token for user {name!r}")
        self._token = token

    def _request_parts(
        self, endpoint: str
    ) -> tuple[aiohttp.ClientSession, ssl.SSLContext | bool, dict[str, str]]:
        """The session (opened on first use), TLS setting and headers of a request."""
        if self._closed:
            raise EtcdError("the etcd client is closed (the agent is stopping)")
        tls = self._tls() if endpoint.startswith("https:") else True
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": self._token} if self._token else {}
        return self._session, tls, headers

    async def _post(self, endpoint: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        session, tls, headers = self._request_parts(endpoint)
        try:
            async with session.post(endpoint + path, json=body, headers=headers, ssl=tls) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise _UnreachableError(_describe(err)) from err
        try:
            reply = json.loads(text.splitlines()[0]) if text.strip() else {}
        except ValueError:
            if status >= 500:
                raise _UnreachableError(f"HTTP {status}: {text[:200]!r}") from None
            raise EtcdError(
                f"etcd at {endpoint} sent no JSON (HTTP {status}): {text[:200]!r}"
            ) from None
        if not isinstance(reply, dict):
            raise EtcdError(f"etcd at {endpoint} sent {type(reply).__name__}, not an object")
        error = reply.get("error")
        if status != 200 or error:
            message = error.get("message") if isinstance(error, dict) else reply.get("message")
            code = error.get("code") if isinstance(error, dict) else reply.get("code")
            if code == _UNAVAILABLE:
                raise _UnreachableError(f"unavailable: {message or error}")
            raise EtcdError(
                f"etcd at {endpoint} refused {path}: {message or error or status}",
                code=code if isinstance(code, int) else None,
            )
        return reply


def range_op(
    key: str, *, prefix: bool = False, count_only: bool = False, by_creation: bool = False
) -> dict[str, Any]:
    """A transaction's range request for ``key`` (every key under it with ``prefix``).

    ``by_creation`` returns keys only (no values), oldest ``create_revision`` first.
    """
    body: dict[str, Any] = {"key": b64(key)}
    if prefix:
        body["range_end"] = b64(prefix_end(key))
    if count_only:
        body["count_only"] = True
    if by_creation:
        body.update(keys_only=True, sort_order="ASCEND", sort_target="CREATE")
    return {"request_range": body}


def delete_op(encoded_key: str) -> dict[str, Any]:
    """A transaction's delete of a base64 key."""
    return {"request_delete_range": {"key": encoded_key}}


def put_op(encoded_key: str, value: str, lease: int) -> dict[str, Any]:
    """A transaction's put of ``value`` at a base64 key, on ``lease`` (0: none)."""
    body: dict[str, Any] = {"key": encoded_key, "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def mod_equals(key: str, revision: int) -> dict[str, Any]:
    """A compare: the base64 key's ``mod_revision`` is ``revision`` (0: it does not exist)."""
    return {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


class _UnreachableError(Exception):
    """One endpoint did not answer; the next one is tried."""


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__
