"""The status page and its live stream on a real ``nodemedic run``.

The condition is made to fire by the real custom-check probe running a plugin script the
test switches (see :mod:`tests.status_agent`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import http_get, http_json, until
from tests.remote_fleet import runs
from tests.status_agent import NODE, StatusAgent, status_agent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[StatusAgent]:
    """A ready agent, killed at the end."""
    started = status_agent(tmp_path)
    yield started
    started.kill()


async def _messages(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """Yield (event name, decoded data) from an SSE response."""
    name, data = "message", list[str]()
    while True:
        raw = await response.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))


@pytest.mark.asyncio
async def test_a_condition_firing_on_the_agent_arrives_on_the_stream(agent: StatusAgent) -> None:
    status, html = http_get(agent.url + "/")
    assert status == 200
    assert f'<span class="node" id="node">{NODE}</span>' in html
    assert "Healthy: 0 firing, 0 pending" in html

    seen: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(agent.url + "/v1/stream") as response,
    ):
        assert response.status == 200
        messages = _messages(response)
        first_name, first = await anext(messages)
        assert first_name == "snapshot"
        assert first["node"] == NODE

        agent.switch(on=True)

        async with asyncio.timeout(30):
            async for name, data in messages:
                seen.append(f"{name} {data.get('type', '')}")
                if name == "event" and data["type"] == "io.nodemedic.condition.firing":
                    assert data["subject"] == "switch-critical"
                    assert data["data"]["labels"] == {"check": "switch"}
                    break
            async for name, data in messages:
                if name == "snapshot":
                    assert data["health"]["text"] == "Critical: 1 firing, 0 pending"
                    (firing,) = [c for c in data["conditions"] if c["state"] == "firing"]
                    assert firing["name"] == "switch-critical"
                    assert firing["since"].endswith("Z")
                    break
    # The condition triggered the playbook in observe mode: the page has its decision record.
    run = until(lambda: runs(agent), "the observe-mode run", agent)[0]
    assert run["playbook"] == "switch-observe"
    gates = [d["gate"] for d in http_json(f"{agent.url}/v1/runs/{run['id']}")["decisions"]]
    status, html = http_get(agent.url + "/")
    assert "Critical: 1 firing, 0 pending" in html
    assert "switch-critical" in html
    assert "<strong>switch-observe</strong> on switch" in html
    assert f"Run <code>{run['id']}</code>" in html
    for gate in gates:
        assert f'<td data-label="Gate">{gate}</td>' in html
    code, _ = agent.stop()
    assert code == 0, agent.log()
