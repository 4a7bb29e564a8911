"""Endpoint checks: HTTP(S) GET with an expected status and body, or a TCP connect.

Every check runs on its own interval (see :class:`~agent.probes.checks.ScheduledChecks`).
HTTP checks share one aiohttp client session whose connections are never reused (each
run measures a fresh connect, as a client of the service would), follow at most
``max_redirects`` redirects, and read at most ``max_body`` bytes of the body, only when a
``body_regex`` needs it. No proxy from the environment is used and no cookie is kept.

When a check is down, ``nodemedic_endpoint_failure{check,reason}`` says why in one word
and the ``io.nodemedic.endpoint.down`` event and the log say it in a sentence.
"""

from __future__ import annotations

__all__ = ["EndpointCheck", "EndpointsProbe"]

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from agent import __version__
from agent.model import Sample
from agent.probes.base import Clock
from agent.probes.checks import CheckOutcome, ScheduledChecks

if TYPE_CHECKING:
    from agent.config import EndpointsProbeConfig

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 1.0
"""Seconds a TCP check waits for its connection to close after connecting."""


@dataclass(frozen=True, slots=True)
class EndpointCheck:
    """One endpoint check, ready to run.

    Attributes:
        name: the ``check`` label.
        interval: seconds between runs.
        timeout: seconds one run may take (connect, TLS, headers and body together).
        url: the URL to GET, or None for a TCP check.
        tcp: (host, port) to connect to, or None for an HTTP check.
        expect_status: accepted statuses as inclusive (low, high) ranges.
        body_regex: searched in the (capped) body; None reads no body.
        max_redirects: redirects followed at most; 0 reports the 3xx itself.
        max_body: bytes of the body read at most.
        verify: verify the server's certificate and name (https).
        ca_file: trust this CA instead of the system's (https).
    """

    name: str
    interval: float
    timeout: float
    url: str | None = None
    tcp: tuple[str, int] | None = None
    expect_status: tuple[tuple[int, int], ...] = ((200, 200),)
    body_regex: re.Pattern[str] | None = None
    max_redirects: int = 3
    max_body: int = 64 * 1024
    verify: bool = True
    ca_file: Path | None = None

    @property
    def target(self) -> str:
        """What is checked, for humans: the URL without credentials, or ``tcp://host:port``."""
        if self.url is not None:
            return str(URL(self.url).with_user(None))
        assert self.tcp is not None  # noqa: S101 - one of url and tcp is set by construction
        host, port = self.tcp
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"

    def expects(self, status: int) -> bool:
        """True when ``status`` is one of the expected ones."""
        return any(low <= status <= high for low, high in self.expect_status)


class _Down(Exception):  # noqa: N818 - a result, not an error: the endpoint is down
    """Raised inside a run to end it as down with a reason word and a sentence."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


class EndpointsProbe(ScheduledChecks[EndpointCheck]):
    """The ``endpoints`` probe: HTTP(S) and TCP checks, each on its own interval.

    Args:
        checks: the checks.
        interval: the longest gap between two updates (the checks' default interval).
        timeout: the longest a check may take.
        clock: monotonic seconds, for latencies.
    """

    EVENT_PREFIX = "io.nodemedic.endpoint"

    def __init__(
        self,
        checks: Sequence[EndpointCheck],
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        clock: Clock = time.perf_counter,
    ) -> None:
        super().__init__(
            name="endpoints", interval=interval, timeout=timeout, checks=checks, clock=clock
        )
        self._session: aiohttp.ClientSession | None = None
        self._tls: dict[str, ssl.SSLContext | bool] = {}

    @classmethod
    def from_config(cls, config: EndpointsProbeConfig) -> EndpointsProbe:
        """The probe for the ``probes.endpoints`` section."""
        default = config.interval.total_seconds()
        checks = []
        for entry in config.checks:
            interval, timeout = entry.seconds(default)
            tcp = None
            if entry.tcp is not None:
                host, _, port = entry.tcp.rpartition(":")
                tcp = (host.strip("[]"), int(port))
            checks.append(
                EndpointCheck(
                    name=entry.name,
                    interval=interval,
                    timeout=timeout,
                    url=entry.url,
                    tcp=tcp,
                    expect_status=entry.expect_status,
                    body_regex=re.compile(entry.body_regex) if entry.body_regex else None,
                    max_redirects=entry.max_redirects,
                    max_body=int(entry.max_body),
                    verify=entry.tls.verify,
                    ca_file=entry.tls.ca_file,
                )
            )
        longest = max((check.timeout for check in checks), default=config.effective_timeout)
        return cls(checks, interval=default, timeout=longest)

    @contextlib.asynccontextmanager
    async def resources(self) -> AsyncIterator[None]:
        """One client session for every HTTP check of a watch."""
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": f"nodemedic/{__version__}"},
            timeout=aiohttp.ClientTimeout(total=None),
        ) as session:
            self._session = session
            try:
                yield
            finally:
                self._session = None

    async def run_check(self, check: EndpointCheck) -> CheckOutcome:
        """Run one HTTP or TCP check and turn its result into samples."""
        started = self._clock()
        status: int | None = None
        try:
            async with asyncio.timeout(check.timeout):
                if check.url is not None:
                    status = await self._get(check)
                else:
                    await self._connect(check)
        except TimeoutError:
            return self._down(check, "timeout", f"no answer within {check.timeout:g}s", started)
        except _Down as down:
            return self._down(check, down.reason, down.detail, started, down.status)
        latency = self._clock() - started
        samples = [_sample("up", check, 1), _sample("latency_seconds", check, latency)]
        if status is not None:
            samples.append(_sample("http_status", check, status))
        data = {"target": check.target, "latency": round(latency, 6), "http_status": status}
        return CheckOutcome(samples, "up", healthy=True, data=data)

    def overstayed(self, check: EndpointCheck, detail: str, elapsed: float) -> CheckOutcome:
        """Down with reason ``timeout`` (it overstayed) or ``error`` (a bug)."""
        reason = "timeout" if detail.startswith("did not finish") else "error"
        return self._outcome_down(check, reason, detail, elapsed, None)

    # -- one run --------------------------------------------------------------------

    async def _get(self, check: EndpointCheck) -> int:
        session = self._session
        if session is None:
            raise _Down("error", "the probe is not watching (no HTTP session)")
        url = str(check.url)
        try:
            async with session.get(
                url,
                allow_redirects=check.max_redirects > 0,
                max_redirects=max(check.max_redirects, 1),
                ssl=await self._tls_for(check),
            ) as response:
                status = response.status
                if not check.expects(status):
                    raise _Down("status", f"HTTP {status}, expected {_fmt_expected(check)}", status)
                if check.body_regex is not None:
                    body = await _read_capped(response.content, check.max_body)
                    text = body.decode(response.charset or "utf-8", errors="replace")
                    if check.body_regex.search(text) is None:
                        raise _Down(
                            "body",
                            f"HTTP {status} but the body does not match "
                            f"{check.body_regex.pattern!r} (first {len(body)} bytes read)",
                            status,
                        )
                return status
        except aiohttp.TooManyRedirects as err:
            last = err.status or None
            raise _Down("redirects", f"more than {check.max_redirects} redirects", last) from err
        except aiohttp.ClientSSLError as err:
            raise _Down("tls", f"TLS: {_ssl_reason(err)}") from err
        except aiohttp.ClientConnectorDNSError as err:
            raise _Down("dns", f"cannot resolve {err.host}: {_os_reason(err)}") from err
        except aiohttp.ClientConnectorError as err:
            raise _Down("connect", f"connect to {err.host}:{err.port}: {_os_reason(err)}") from err
        except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as err:
            raise _Down("protocol", f"bad HTTP response: {err}") from err
        except aiohttp.ServerDisconnectedError as err:
            raise _Down("protocol", "the server closed the connection without an answer") from err
        except (aiohttp.ClientError, OSError) as err:
            raise _Down("error", f"{type(err).__name__}: {err}") from err

    async def _connect(self, check: EndpointCheck) -> None:
        assert check.tcp is not None  # noqa: S101 - run_check sends only TCP checks here
        host, port = check.tcp
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError as err:
            reason = "dns" if isinstance(err, socket.gaierror) else "connect"
            raise _Down(reason, f"connect to {check.target}: {_os_reason(err)}") from err
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await writer.wait_closed()

    async def _tls_for(self, check: EndpointCheck) -> ssl.SSLContext | bool:
        context = self._tls.get(check.name)
        if context is not None:
            return context
        if not check.verify:
            context = False
        elif check.ca_file is None:
            context = True
        else:
            try:
                # Reading the CA is file I/O: off the loop, once per check.
                context = await asyncio.to_thread(ssl.create_default_context, cafile=check.ca_file)
            except (OSError, ssl.SSLError) as err:
                raise _Down("tls", f"cannot load tls.ca_file {check.ca_file}: {err}") from err
        self._tls[check.name] = context
        return context

    def _down(
        self,
        check: EndpointCheck,
        reason: str,
        detail: str,
        started: float,
        status: int | None = None,
    ) -> CheckOutcome:
        return self._outcome_down(check, reason, detail, self._clock() - started, status)

    @staticmethod
    def _outcome_down(
        check: EndpointCheck, reason: str, detail: str, latency: float, status: int | None
    ) -> CheckOutcome:
        samples = [
            _sample("up", check, 0),
            _sample("latency_seconds", check, latency),
            Sample.of("nodemedic_endpoint_failure", 1, check=check.name, reason=reason),
        ]
        if status is not None:
            samples.append(_sample("http_status", check, status))
        data: dict[str, Any] = {"target": check.target, "failure": reason, "http_status": status}
        return CheckOutcome(samples, "down", healthy=False, reason=detail, data=data)


def _sample(suffix: str, check: EndpointCheck, value: float) -> Sample:
    return Sample.of(f"nodemedic_endpoint_{suffix}", value, check=check.name)


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while len(body) < limit:
        chunk = await content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _fmt_expected(check: EndpointCheck) -> str:
    parts = [f"{low}" if low == high else f"{low}-{high}" for low, high in check.expect_status]
    return " or ".join(parts)


def _os_reason(err: BaseException) -> str:
    os_error = getattr(err, "os_error", err)
    if (
        isinstance(os_error, OSError)
        and os_error.errno
        and not isinstance(os_error, socket.gaierror)
    ):
        return os.strerror(os_error.errno)  # asyncio's own strerror is "Connect call failed"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    return str(os_error) or type(os_error).__name__


def _ssl_reason(err: aiohttp.ClientSSLError) -> str:
    cause = getattr(err, "certificate_error", None) or getattr(err, "os_error", None) or err
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return str(cause.reason).lower().replace("_", " ")
    return str(cause)
