"""``GET /v1/stream`` as an EventSource client sees it, on a real server over loopback.

The events come from a real :class:`~agent.bus.EventBus`; the agent is
:class:`~tests.unit.fake_view.FakeAgentView`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from agent.api import ApiServer
from agent.api_status import add_status_routes
from agent.api_stream import (
    MAX_CLIENTS,
    SNAPSHOT_DELAY,
    StreamClient,
    StreamHub,
    StreamMessage,
)
from agent.bus import EventBus
from agent.model import Condition, ConditionState, Sample, Severity

from .fake_view import T0, FakeAgentView, make_event


@dataclass
class Message:
    """One parsed server-sent event."""

    event: str = "message"
    data: str = ""
    id: str | None = None

    @property
    def json(self) -> Any:
        """The data, decoded."""
        return json.loads(self.data)


@dataclass
class Stream:
    """An open ``/v1/stream`` response, read message by message."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)

    async def next(self, timeout: float = 10.0) -> Message:  # noqa: ASYNC109  (bounded read)
        """The next message (comments are collected in ``comments``)."""
        message = Message()
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data or message.event != "message":
                        message.data = "\n".join(data)
                        return message
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if not name:
                    self.comments.append(value)
                elif name == "event":
                    message.event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    message.id = value

    async def next_named(self, event: str, timeout: float = 10.0) -> Message:  # noqa: ASYNC109
        """The next message called ``event``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next()
                if message.event == event:
                    return message


@dataclass
class Server:
    """A status app on a loopback port with its bus, hub and a client session."""

    view: FakeAgentView
    bus: EventBus
    hub: StreamHub
    runner: web.AppRunner
    url: str
    session: aiohttp.ClientSession
    opened: list[aiohttp.ClientResponse] = field(default_factory=list)

    async def stream(self, headers: dict[str, str] | None = None) -> Stream:
        """Open the stream."""
        response = await self.session.get(self.url + "/v1/stream", headers=headers)
        self.opened.append(response)
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        return Stream(response)


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Any]:
    """Start the status routes of a view with the given heartbeat and history interval."""
    made: list[Server] = []

    async def start(
        view: FakeAgentView, *, heartbeat: float = 60.0, interval: float = 60.0
    ) -> Server:
        bus = EventBus()
        app = web.Application()
        hub = add_status_routes(
            app, view, remediation=None, bus=bus, heartbeat=heartbeat, interval=interval
        )
        assert hub is not None
        runner = web.AppRunner(app, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server = Server(view, bus, hub, runner, f"http://127.0.0.1:{port}", aiohttp.ClientSession())
        made.append(server)
        return server

    yield start
    for server in made:
        for response in server.opened:
            response.close()
        await server.session.close()
        await server.runner.cleanup()
        server.bus.close()


async def until(check: Any, what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll ``check()`` until true."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110  (polls server-side state; no event to await)
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_recorded_events_arrive_and_condition_changes_bring_a_snapshot(serve: Any) -> None:
    view = FakeAgentView()
    server = await serve(view)
    stream = await server.stream()
    first = await stream.next()
    assert first.event == "snapshot"
    assert first.json["conditions"] == []

    view.tracked = [Condition("disk-full", (), ConditionState.FIRING, Severity.CRITICAL, 0.9, T0)]
    server.bus.publish(make_event(7, "io.nodemedic.condition.firing"))

    event = await stream.next()
    assert (event.event, event.id) == ("event", "7")
    assert event.json["type"] == "io.nodemedic.condition.firing"
    assert event.json["subject"] == "rule-7"
    snapshot = await stream.next()
    assert snapshot.event == "snapshot"
    assert snapshot.json["health"]["text"] == "Critical: 1 firing, 0 pending"
    assert snapshot.json["conditions"][0]["state"] == "firing"

    server.bus.publish(make_event(8, "io.nodemedic.probe.failed"))
    other = await stream.next()
    assert (other.event, other.id) == ("event", "8")  # no snapshot for a probe event


@pytest.mark.asyncio
async def test_chart_points_stream_as_they_are_sampled(serve: Any) -> None:
    view = FakeAgentView(samples=[Sample.of("nodemedic_load1", 0.75)])
    server = await serve(view, interval=0.05)
    stream = await server.stream()

    sample = await stream.next_named("sample")

    assert sample.json["values"] == {"load": 0.75}


@pytest.mark.asyncio
async def test_an_idle_stream_gets_heartbeat_comments(serve: Any) -> None:
    server = await serve(FakeAgentView(), heartbeat=0.1)
    stream = await server.stream()
    await stream.next()
    with pytest.raises(TimeoutError):
        await stream.next(timeout=0.5)
    assert "ping" in stream.comments


@pytest.mark.asyncio
async def test_a_client_that_goes_away_is_forgotten(serve: Any) -> None:
    server = await serve(FakeAgentView(), heartbeat=0.1)
    stream = await server.stream()
    await stream.next()
    assert server.hub.clients == 1

    stream.response.close()

    await until(lambda: server.hub.clients == 0, "the hub to drop the client")
    server.bus.publish(make_event(1))  # nobody left: must not fail
    other = await server.stream()
    assert (await other.next()).event == "snapshot"
    assert server.hub.clients == 1


@pytest.mark.asyncio
async def test_a_reconnecting_client_is_replayed_the_events_it_missed(serve: Any) -> None:
    view = FakeAgentView(stored_events=[make_event(n) for n in range(1, 6)])
    server = await serve(view)

    stream = await server.stream(headers={"Last-Event-ID": "3"})

    replayed = [await stream.next(), await stream.next()]
    assert [(m.event, m.id) for m in replayed] == [("event", "4"), ("event", "5")]
    assert (await stream.next()).event == "snapshot"


@pytest.mark.asyncio
async def test_stopping_the_server_ends_open_streams_promptly(serve: Any) -> None:
    server = await serve(FakeAgentView())
    stream = await server.stream()
    await stream.next()

    async with asyncio.timeout(4.0):  # under the runner's 5 s shutdown grace
        await server.runner.cleanup()
    with pytest.raises(EOFError):
        await stream.next()


def test_a_slow_client_never_holds_more_than_its_bound_and_is_told_to_resync() -> None:
    resync = StreamMessage("resync", '{"conditions":[]}')
    client = StreamClient(maxsize=4, resync=lambda: resync)

    sizes = []
    for n in range(10):
        client.offer(StreamMessage("event", "{}", str(n)))
        sizes.append(client.qsize())

    assert max(sizes) == 4
    assert client.resyncs == 2
    queued = [client._queue.popleft() for _ in range(client.qsize())]
    assert [m.event for m in queued] == ["resync", "event"]
    assert queued[1].id == "9"


@pytest.mark.asyncio
async def test_the_stream_refuses_parameters_with_a_json_error() -> None:
    bus = EventBus()
    server = ApiServer(FakeAgentView(), bus=bus)
    await server.start("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url + "/v1/stream?since=3") as response,
        ):
            body = await response.json()
        assert response.status == 400
        assert body == {
            "error": "unknown query parameter",
            "detail": "/v1/stream takes no parameters",
        }
    finally:
        await server.stop()
        bus.close()


@pytest.mark.asyncio
async def test_streams_beyond_the_limit_get_a_json_503() -> None:
    bus = EventBus()
    server = ApiServer(FakeAgentView(), bus=bus)
    await server.start("127.0.0.1", 0)
    opened: list[aiohttp.ClientResponse] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(MAX_CLIENTS):
                response = await session.get(server.url + "/v1/stream")
                opened.append(response)
                assert response.status == 200
                await Stream(response).next()

            async with session.get(server.url + "/v1/stream") as refused:
                assert refused.status == 503
                assert await refused.json() == {
                    "error": "too many streams",
                    "detail": f"at most {MAX_CLIENTS} streams are served at once; retry later",
                }
            for response in opened:
                response.close()
    finally:
        await server.stop()
        bus.close()


@pytest.mark.asyncio
async def test_a_burst_of_condition_changes_makes_one_snapshot(serve: Any) -> None:
    server = await serve(FakeAgentView())
    stream = await server.stream()
    await stream.next()

    for sequence in range(1, 51):
        server.bus.publish(make_event(sequence, "io.nodemedic.condition.pending"))

    names = [(await stream.next()).event for _ in range(51)]
    assert names == ["event"] * 50 + ["snapshot"]
    with pytest.raises(TimeoutError):
        await stream.next(timeout=4 * SNAPSHOT_DELAY)
