"""The HTTP API as a client sees it, against a real server on a loopback port."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from agent.api import MAX_BODY_BYTES, ApiServer
from agent.model import (
    Condition,
    ConditionState,
    MqttLinkState,
    MqttStatus,
    ProbeStatus,
    Sample,
    Severity,
    labelset,
)

from .fake_view import BROKEN_VIEW_MESSAGE, NODE, T0, FakeAgentView, make_event

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
PROBE_EVENT = "io.nodemedic.probe.failed"


@dataclass(frozen=True)
class Reply:
    """A JSON answer."""

    status: int
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Api:
    """A running server over ``view`` and a client session aimed at it."""

    view: FakeAgentView
    server: ApiServer
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        """Send a request; every answer must be strict JSON with the JSON content type."""
        async with self.session.request(method, path, **kwargs) as response:
            text = await response.text()
            assert response.headers["Content-Type"] == JSON_CONTENT_TYPE, text
            return Reply(response.status, dict(response.headers), strict_json(text))

    async def get(self, path: str, **kwargs: Any) -> Reply:
        """GET ``path`` as JSON."""
        return await self.call("GET", path, **kwargs)


def strict_json(text: str) -> Any:
    """Parse JSON as a browser would: NaN and Infinity are errors."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def condition(
    rule: str, state: ConditionState, value: float | None = 1.0, **labels: str
) -> Condition:
    """A condition of ``rule`` in ``state``."""
    return Condition(rule, labelset(labels), state, Severity.WARNING, value, T0, description=rule)


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    """A server on 127.0.0.1, an ephemeral port, over a view a test can change."""
    view = FakeAgentView()
    server = ApiServer(view)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(
            base_url=server.url, timeout=aiohttp.ClientTimeout(total=10)
        ) as session:
            yield Api(view, server, session)
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_server_binds_a_free_port_and_reports_its_url(api: Api) -> None:
    assert api.server.port > 0
    assert api.server.url == f"http://127.0.0.1:{api.server.port}"


@pytest.mark.asyncio
async def test_healthz_says_alive_with_a_neutral_server_header(api: Api) -> None:
    reply = await api.get("/healthz")

    assert reply.status == 200
    assert reply.body == {"status": "alive"}
    assert reply.headers["Server"] == "nodemedic"


@pytest.mark.asyncio
async def test_readyz_is_503_with_the_reason_until_ready(api: Api) -> None:
    api.view.ready = False
    api.view.not_ready_reason = "waiting for the first sample of probe cpu"

    not_ready = await api.get("/readyz")
    api.view.ready = True
    ready = await api.get("/readyz")

    assert not_ready.status == 503
    assert not_ready.body == {
        "ready": False,
        "reason": "waiting for the first sample of probe cpu",
    }
    assert ready.status == 200
    assert ready.body == {"ready": True}


@pytest.mark.asyncio
async def test_readyz_shows_the_mqtt_link_ready_but_degraded_or_misconfigured(api: Api) -> None:
    api.view.mqtt = MqttStatus(
        state=MqttLinkState.DISCONNECTED,
        broker="mqtt://broker:1883",
        reason="cannot reach mqtt://broker:1883: [Errno 111] Connection refused",
        outbox_depth=5,
        outbox_oldest_age=3.0,
    )
    degraded = await api.get("/readyz")
    api.view.ready = False
    api.view.not_ready_reason = "mqtt: broker mqtt://broker:1883 refused the credentials"
    api.view.mqtt = MqttStatus(state=MqttLinkState.MISCONFIGURED, reason="refused")
    refused = await api.get("/readyz")

    assert degraded.status == 200
    assert degraded.body["ready"] is True
    assert degraded.body["mqtt"]["state"] == "disconnected"
    assert degraded.body["mqtt"]["reason"].startswith("cannot reach mqtt://broker:1883")
    assert degraded.body["mqtt"]["outbox"]["depth"] == 5
    assert refused.status == 503
    assert refused.body["reason"].startswith("mqtt: broker mqtt://broker:1883 refused")
    assert refused.body["mqtt"]["state"] == "misconfigured"


@pytest.mark.asyncio
async def test_metrics_serves_the_prometheus_text_format(api: Api) -> None:
    api.view.samples = [Sample.of("nodemedic_load1", 0.5)]
    api.view.statuses = [ProbeStatus("load", 10.0, last_run=T0, duration=0.001, runs=1)]

    async with api.session.get("/metrics", headers={"Accept-Encoding": "identity"}) as response:
        text = await response.text()
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert "Content-Encoding" not in response.headers
        assert response.headers["Server"] == "nodemedic"

    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["nodemedic_load1"] == 0.5
    assert samples["nodemedic_probe_runs_total"] == 1


@pytest.mark.asyncio
async def test_metrics_are_gzipped_for_scrapers_that_accept_it(api: Api) -> None:
    api.view.samples = [Sample.of("nodemedic_load5", 2.0)]

    async with api.session.get("/metrics", headers={"Accept-Encoding": "gzip"}) as response:
        text = await response.text()  # the client decompresses
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"

    assert "nodemedic_load5 2.0" in text.splitlines()


@pytest.mark.asyncio
async def test_conditions_lists_every_condition(api: Api) -> None:
    api.view.tracked = [
        condition("disk_full", ConditionState.FIRING, 0.97, mountpoint="/"),
        condition("cpu_hot", ConditionState.OK, 0.1),
    ]

    reply = await api.get("/v1/conditions")

    assert reply.status == 200
    assert reply.body == {"node": NODE, "conditions": [c.to_json() for c in api.view.tracked]}


@pytest.mark.asyncio
async def test_conditions_filtered_by_state(api: Api) -> None:
    firing = condition("disk_full", ConditionState.FIRING, mountpoint="/")
    api.view.tracked = [
        condition("cpu_hot", ConditionState.PENDING),
        firing,
        condition("disk_full", ConditionState.RESOLVED, mountpoint="/var"),
    ]

    reply = await api.get("/v1/conditions", params={"state": "firing"})
    none_ok = await api.get("/v1/conditions", params={"state": "ok"})

    assert reply.body["conditions"] == [firing.to_json()]
    assert none_ok.body == {"node": NODE, "conditions": []}


@pytest.mark.asyncio
async def test_a_value_that_is_not_a_number_is_null_not_invalid_json(api: Api) -> None:
    api.view.tracked = [condition("clock_drift", ConditionState.FIRING, math.nan)]

    reply = await api.get("/v1/conditions")

    assert reply.status == 200
    assert reply.body["conditions"][0]["value"] is None


@pytest.mark.asyncio
async def test_events_default_to_the_newest_hundred_newest_last(api: Api) -> None:
    api.view.stored_events = [make_event(sequence) for sequence in range(1, 151)]

    reply = await api.get("/v1/events")

    assert reply.status == 200
    assert reply.body["node"] == NODE
    sequences = [event["sequence"] for event in reply.body["events"]]
    assert sequences == list(range(51, 151))
    assert reply.body["next"] == 150
    assert reply.body["events"][-1] == make_event(150).to_cloudevent()


@pytest.mark.asyncio
async def test_events_page_forward_from_a_cursor(api: Api) -> None:
    api.view.stored_events = [make_event(sequence) for sequence in range(1, 31)]

    first = await api.get("/v1/events", params={"since": "0", "limit": "20"})
    second = await api.get("/v1/events", params={"since": str(first.body["next"]), "limit": "20"})
    caught_up = await api.get("/v1/events", params={"since": str(second.body["next"])})

    assert [e["sequence"] for e in first.body["events"]] == list(range(1, 21))
    assert [e["sequence"] for e in second.body["events"]] == list(range(21, 31))
    assert caught_up.body["events"] == []
    assert caught_up.body["next"] == 30, "an empty page keeps the cursor"


@pytest.mark.asyncio
async def test_no_events_yet_gives_a_cursor_from_the_start(api: Api) -> None:
    reply = await api.get("/v1/events")

    assert reply.body == {"node": NODE, "events": [], "next": 0}


@pytest.mark.asyncio
async def test_events_filtered_by_exact_type(api: Api) -> None:
    api.view.stored_events = [
        make_event(1),
        make_event(2, PROBE_EVENT),
        make_event(3, "io.nodemedic.condition.resolved"),
    ]

    reply = await api.get("/v1/events", params={"type": PROBE_EVENT})

    assert [e["sequence"] for e in reply.body["events"]] == [2]
    assert api.view.event_queries == [(PROBE_EVENT, None, 100)]


@pytest.mark.asyncio
@pytest.mark.parametrize("prefix", ["io.nodemedic.condition.*", "io.nodemedic.condition."])
async def test_events_filtered_by_type_prefix(api: Api, prefix: str) -> None:
    api.view.stored_events = [
        make_event(1),
        make_event(2, PROBE_EVENT),
        make_event(3, "io.nodemedic.condition.resolved"),
    ]

    reply = await api.get("/v1/events", params={"type": prefix, "limit": "5"})

    assert [e["type"] for e in reply.body["events"]] == [
        "io.nodemedic.condition.firing",
        "io.nodemedic.condition.resolved",
    ]
    assert api.view.event_queries == [("io.nodemedic.condition.", None, 5)]


@pytest.mark.asyncio
async def test_probes_lists_every_probe_status(api: Api) -> None:
    api.view.statuses = [
        ProbeStatus("cpu", 10.0, last_run=T0, duration=0.01, runs=5, samples=4),
        ProbeStatus("sensors", 30.0, last_run=T0, error="no hwmon", runs=5, failures=5),
    ]

    reply = await api.get("/v1/probes")

    assert reply.status == 200
    assert reply.body == {"node": NODE, "probes": [s.to_json() for s in api.view.statuses]}
    assert [p["up"] for p in reply.body["probes"]] == [True, False]


BAD_PARAMETERS = [
    ("/v1/events?limit=abc", "limit must be an integer between 1 and 1000, got 'abc'"),
    ("/v1/events?limit=0", "limit must be an integer between 1 and 1000, got '0'"),
    ("/v1/events?limit=1001", "limit must be an integer between 1 and 1000, got '1001'"),
    ("/v1/events?limit=-5", "limit must be an integer between 1 and 1000, got '-5'"),
    ("/v1/events?limit=2.5", "limit must be an integer between 1 and 1000, got '2.5'"),
    ("/v1/events?limit=", "limit must be an integer between 1 and 1000, got ''"),
    ("/v1/events?since=abc", "since must be a non-negative integer"),
    ("/v1/events?since=-1", "since must be a non-negative integer"),
    ("/v1/events?since=1e3", "since must be a non-negative integer"),
    ("/v1/events?since=99999999999999999999", "since must be a non-negative integer"),
    ("/v1/events?type=", "type must be an event type"),
    ("/v1/events?type=*", "type must be an event type"),
    ("/v1/events?type=io%20nodemedic", "type must be an event type"),
    ("/v1/events?type=io.nodemedic.**", "type must be an event type"),
    ("/v1/events?limit=1&limit=2", "limit was given 2 times; give it at most once"),
    (
        "/v1/events?bogus=1",
        "unknown query parameter 'bogus'; /v1/events accepts type, since, limit",
    ),
    (
        "/v1/conditions?state=burning",
        "state must be one of ok, pending, firing, resolved, got 'burning'",
    ),
    (
        "/v1/conditions?State=firing",
        "unknown query parameter 'State'; /v1/conditions accepts state",
    ),
    ("/v1/probes?verbose=1", "unknown query parameter 'verbose'"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "detail"), BAD_PARAMETERS)
async def test_bad_parameters_are_400_naming_the_parameter(
    api: Api, path: str, detail: str
) -> None:
    reply = await api.get(path)

    assert reply.status == 400
    assert set(reply.body) == {"error", "detail"}
    assert "query parameter" in reply.body["error"]
    assert reply.body["detail"].startswith(detail), reply.body["detail"]
    assert api.view.event_queries == [], "a refused request never reaches the agent"


@pytest.mark.asyncio
async def test_a_long_bad_value_is_not_echoed_in_full(api: Api) -> None:
    reply = await api.get("/v1/events", params={"type": "x" * 5000 + " "})

    assert reply.status == 400
    assert len(reply.body["detail"]) < 400


@pytest.mark.asyncio
async def test_unknown_path_is_404_json_listing_the_resources(api: Api) -> None:
    reply = await api.get("/v1/nope")

    assert reply.status == 404
    assert reply.body["error"] == "not found"
    assert "/v1/nope" in reply.body["detail"]
    assert "/v1/events" in reply.body["detail"]


@pytest.mark.asyncio
async def test_wrong_method_is_405_json_with_allow(api: Api) -> None:
    reply = await api.call("DELETE", "/v1/conditions")

    assert reply.status == 405
    assert reply.body["error"] == "method not allowed"
    assert "DELETE" in reply.body["detail"]
    assert "GET" in reply.headers["Allow"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/readyz", "readiness"),
        ("/metrics", "latest_samples"),
        ("/v1/conditions", "conditions"),
        ("/v1/events", "events"),
        ("/v1/probes", "probe_statuses"),
    ],
)
async def test_a_failing_view_is_500_json_logged_and_the_server_carries_on(
    api: Api, caplog: pytest.LogCaptureFixture, path: str, method: str
) -> None:
    api.view.broken = {method}

    with caplog.at_level(logging.ERROR, logger="agent.api"):
        failed = await api.get(path)
    alive = await api.get("/healthz")
    api.view.broken = set()
    async with api.session.get(path) as recovered:
        recovered_status = recovered.status

    assert failed.status == 500
    assert failed.body["error"] == "internal server error"
    assert path in failed.body["detail"]
    assert BROKEN_VIEW_MESSAGE not in failed.body["detail"], "internals stay in the log"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert BROKEN_VIEW_MESSAGE in str(errors[0].exc_info[1])
    assert alive.status == 200
    assert recovered_status == 200


@pytest.mark.asyncio
async def test_an_oversized_body_is_413_json(api: Api) -> None:
    reply = await api.call("POST", "/v1/events", data=b"x" * (MAX_BODY_BYTES + 1))
    after = await api.get("/healthz")

    assert reply.status == 413
    assert reply.body["error"] == "request body too large"
    assert str(MAX_BODY_BYTES) in reply.body["detail"]
    assert after.status == 200


@pytest.mark.asyncio
async def test_an_oversized_chunked_body_is_413_json(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (MAX_BODY_BYTES // 4)

    reply = await api.get("/healthz", data=chunks())

    assert reply.status == 413
    assert reply.body["error"] == "request body too large"


@pytest.mark.asyncio
async def test_a_small_body_is_ignored(api: Api) -> None:
    reply = await api.get("/healthz", data=b"{}")

    assert reply.status == 200


@pytest.mark.asyncio
async def test_requests_are_logged_at_debug_not_info(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # A request's access line is written just after its response, so each check ends
    # with one more request on the same connection: by its answer, the line is out.
    with caplog.at_level(logging.INFO):
        await api.get("/v1/probes")
        await api.get("/v1/nope")
        await api.get("/healthz")
    at_info = [r.getMessage() for r in caplog.records]
    caplog.clear()
    # Whether to log is decided per connection, hence a new session.
    with caplog.at_level(logging.DEBUG, logger="agent.api.access"):
        async with aiohttp.ClientSession(base_url=api.server.url) as session:
            async with session.get("/v1/probes"):
                pass
            async with session.get("/healthz"):
                pass

    assert at_info == []
    assert any(
        "GET /v1/probes -> 200" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG
    )


@pytest.mark.asyncio
async def test_stop_closes_the_port() -> None:
    server = ApiServer(FakeAgentView())
    await server.start("127.0.0.1", 0)
    url = server.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200  # keeps an idle keep-alive connection open

        async with asyncio.timeout(10):
            await server.stop()
            await server.stop()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            async with fresh.get(f"{url}/healthz"):
                pass


@pytest.mark.asyncio
async def test_starting_twice_is_refused(api: Api) -> None:
    with pytest.raises(RuntimeError, match="already serving"):
        await api.server.start("127.0.0.1", 0)

    assert (await api.get("/healthz")).status == 200


@pytest.mark.asyncio
async def test_a_taken_port_fails_start_and_leaves_the_server_unstarted(api: Api) -> None:
    second = ApiServer(FakeAgentView())

    with pytest.raises(OSError, match="address already in use"):
        await second.start("127.0.0.1", api.server.port)

    with pytest.raises(RuntimeError, match="not started"):
        _ = second.port
