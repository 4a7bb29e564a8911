"""Endpoint checks against real local servers: an aiohttp app on an ephemeral loopback
port (plain and TLS with a throwaway CA), a TCP listener and a closed port."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from agent.config import EndpointsProbeConfig
from agent.probes.base import ProbeEvent, ProbeUpdate, sample_once
from agent.probes.endpoints import EndpointCheck, EndpointsProbe
from tests.brokers import TestPKI

from .fakes import assert_catalog_conformant
from .watching import has, value, watch_until

UP = "nodemedic_endpoint_up"
FAILURE = "nodemedic_endpoint_failure"


@dataclass
class Site:
    """The test server: ``url(path)`` for plain HTTP, ``tls_url(path)`` for HTTPS."""

    port: int
    tls_port: int
    release: asyncio.Event

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def tls_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.tls_port}{path}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    return TestPKI.create(tmp_path_factory.mktemp("endpoint-pki"))


@pytest_asyncio.fixture
async def site(pki: TestPKI) -> AsyncIterator[Site]:
    """A real aiohttp server on loopback with healthy, failing and hanging routes."""
    release = asyncio.Event()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="status: ok")

    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def degraded(_: web.Request) -> web.Response:
        return web.Response(text="status: degraded " + "x" * 200_000)

    async def hang(_: web.Request) -> web.Response:
        async with asyncio.timeout(30):  # bounded: the fixture releases it at teardown
            await release.wait()
        return web.Response(text="late")

    async def loop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    for path, handler in (
        ("/ok", ok),
        ("/fail", fail),
        ("/degraded", degraded),
        ("/hang", hang),
        ("/loop", loop),
        ("/moved", moved),
    ):
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert, pki.server_key)
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    secure = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await plain.start()
    await secure.start()
    ports = [site._server.sockets[0].getsockname()[1] for site in (plain, secure)]  # type: ignore[union-attr]
    try:
        yield Site(ports[0], ports[1], release)
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on loopback; yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def http(name: str, url: str, **options: object) -> EndpointCheck:
    return EndpointCheck(name=name, interval=0.2, timeout=2.0, url=url, **options)  # type: ignore[arg-type]


async def first_results(*checks: EndpointCheck) -> tuple[ProbeUpdate, dict[str, ProbeEvent]]:
    """The first update in which every check has a result, and the events until then."""
    probe = EndpointsProbe(checks, interval=5.0, timeout=5.0)
    updates = await watch_until(
        probe,
        lambda got: all(value(got[-1], UP, check=c.name) is not None for c in checks),
    )
    assert_catalog_conformant("endpoints", updates[-1].samples)
    events = {e.subject or "": e for u in updates for e in u.events}
    return updates[-1], events


@pytest.mark.asyncio
async def test_healthy_failing_and_wrong_body_endpoints_each_report_their_own_state(
    site: Site,
) -> None:
    update, events = await first_results(
        http("ok", site.url("/ok"), body_regex=re.compile(r"status: ok")),
        http("fail", site.url("/fail")),
        http("body", site.url("/degraded"), body_regex=re.compile(r"status: ok"), max_body=4096),
        http("any5xx", site.url("/fail"), expect_status=((500, 599),)),
    )

    assert value(update, UP, check="ok") == 1
    assert value(update, "nodemedic_endpoint_http_status", check="ok") == 200
    assert (value(update, "nodemedic_endpoint_latency_seconds", check="ok") or 0) > 0
    assert value(update, FAILURE, check="ok", reason="status") is None
    assert value(update, UP, check="fail") == 0
    assert value(update, FAILURE, check="fail", reason="status") == 1
    assert value(update, "nodemedic_endpoint_http_status", check="fail") == 500
    assert value(update, UP, check="body") == 0
    assert value(update, FAILURE, check="body", reason="body") == 1
    assert value(update, UP, check="any5xx") == 1
    down = events
    assert down["fail"].type == "io.nodemedic.endpoint.down"
    assert down["fail"].data["reason"] == "HTTP 500, expected 200"
    assert "first 4096 bytes read" in down["body"].data["reason"]
    assert "ok" not in down, "a healthy first result is not an event"


@pytest.mark.asyncio
async def test_hanging_endpoint_times_out_while_the_healthy_one_keeps_its_cadence(
    site: Site,
) -> None:
    hang = EndpointCheck(name="hang", interval=0.2, timeout=1.0, url=site.url("/hang"))
    ok = http("ok", site.url("/ok"))
    probe = EndpointsProbe([hang, ok], interval=5.0, timeout=1.0)

    updates = await watch_until(probe, has(FAILURE, 1, check="hang", reason="timeout"))

    # Every update before the hanging check's first result came from the healthy one,
    # which went on every 200 ms while the other waited out its whole second.
    ok_runs_while_hanging = sum(1 for u in updates if value(u, UP, check="hang") is None)
    assert ok_runs_while_hanging >= 3
    assert value(updates[-1], UP, check="ok") == 1
    assert value(updates[-1], UP, check="hang") == 0
    event = next(e for u in updates for e in u.events if e.subject == "hang")
    assert event.data["reason"] == "no answer within 1s"


@pytest.mark.asyncio
async def test_tcp_listener_is_up_and_a_closed_port_is_down_with_connect_reason(
    listener: int,
) -> None:
    port = closed_port()
    update, events = await first_results(
        EndpointCheck(name="open", interval=0.2, timeout=2.0, tcp=("127.0.0.1", listener)),
        EndpointCheck(name="closed", interval=0.2, timeout=2.0, tcp=("127.0.0.1", port)),
    )

    assert value(update, UP, check="open") == 1
    assert value(update, "nodemedic_endpoint_http_status", check="open") is None
    assert value(update, UP, check="closed") == 0
    assert value(update, FAILURE, check="closed", reason="connect") == 1
    event = events["closed"]
    assert event.data["target"] == f"tcp://127.0.0.1:{port}"
    assert "Connection refused" in event.data["reason"]


@pytest.mark.asyncio
async def test_https_with_our_ca_is_up_and_with_the_system_cas_is_a_tls_failure(
    site: Site, pki: TestPKI
) -> None:
    update, events = await first_results(
        http("ours", site.tls_url("/ok"), ca_file=pki.ca_cert),
        http("system", site.tls_url("/ok")),
        http("foreign", site.tls_url("/ok"), ca_file=pki.foreign_ca_cert),
        http("noverify", site.tls_url("/ok"), verify=False),
        http("missing-ca", site.tls_url("/ok"), ca_file=Path("/nonexistent/ca.pem")),
    )

    assert value(update, UP, check="ours") == 1
    assert value(update, UP, check="noverify") == 1
    for name in ("system", "foreign", "missing-ca"):
        assert value(update, FAILURE, check=name, reason="tls") == 1, name
    reasons = {name: e.data["reason"] for name, e in events.items()}
    assert "certificate verify failed" in reasons["system"]
    assert "cannot load tls.ca_file /nonexistent/ca.pem" in reasons["missing-ca"]


@pytest.mark.asyncio
async def test_redirects_are_followed_up_to_the_cap_and_a_loop_is_a_failure(site: Site) -> None:
    update, events = await first_results(
        http("moved", site.url("/moved")),
        http("loop", site.url("/loop"), max_redirects=2),
        http("no-follow", site.url("/moved"), max_redirects=0, expect_status=((302, 302),)),
    )

    assert value(update, UP, check="moved") == 1
    assert value(update, FAILURE, check="loop", reason="redirects") == 1
    assert events["loop"].data["reason"] == "more than 2 redirects"
    assert value(update, UP, check="no-follow") == 1
    assert value(update, "nodemedic_endpoint_http_status", check="no-follow") == 302


@pytest.mark.asyncio
async def test_recovery_is_an_up_event_and_the_failure_series_goes_away(
    listener: int,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        check = EndpointCheck(name="svc", interval=0.2, timeout=1.0, tcp=("127.0.0.1", port))
        probe = EndpointsProbe([check], interval=5.0, timeout=1.0)
        watch = probe.watch()
        try:
            async with asyncio.timeout(30):
                async for update in watch:
                    if value(update, UP, check="svc") == 0:
                        break
                sock.listen(4)
                events: list[ProbeEvent] = []
                async for update in watch:
                    events += update.events
                    if value(update, UP, check="svc") == 1:
                        break
        finally:
            await watch.aclose()  # type: ignore[attr-defined]

    assert value(update, FAILURE, check="svc", reason="connect") is None
    assert [(e.type, e.data["previous"]) for e in events] == [("io.nodemedic.endpoint.up", "down")]


@pytest.mark.asyncio
async def test_no_checks_still_yields_an_empty_snapshot_every_interval() -> None:
    probe = EndpointsProbe([], interval=0.2, timeout=1.0)

    assert await sample_once(probe) == []


@pytest.mark.asyncio
async def test_with_no_checks_the_first_snapshot_does_not_wait_for_the_interval() -> None:
    # The probe's "up" and its empty reading used to wait a whole interval for nothing.
    probe = EndpointsProbe([], interval=3600.0, timeout=1.0)

    async with asyncio.timeout(30):
        assert await sample_once(probe) == []


@pytest.mark.asyncio
async def test_built_from_config_with_default_timing_and_statuses(site: Site) -> None:
    config = EndpointsProbeConfig.model_validate(
        {
            "interval": "300ms",
            "checks": [
                {"name": "a", "url": site.url("/fail"), "expect_status": ["5xx", 200]},
                {"name": "b", "tcp": f"127.0.0.1:{site.port}", "interval": "1s", "timeout": "2s"},
            ],
        }
    )
    probe = EndpointsProbe.from_config(config)

    assert [(c.name, c.interval, c.timeout) for c in probe.checks] == [
        ("a", 0.3, 0.3),
        ("b", 1.0, 2.0),
    ]
    assert probe.checks[0].expect_status == ((500, 599), (200, 200))
    assert (probe.interval, probe.timeout) == (0.3, 2.0)
    update = await watch_until(
        probe, lambda got: value(got[-1], UP, check="a") == 1 and value(got[-1], UP, check="b") == 1
    )
    assert value(update[-1], "nodemedic_endpoint_http_status", check="a") == 500
