"""``nodemedic status`` against a real running agent, and its errors when there is none.

The agent is a real ``nodemedic run`` process. For the two errors no real agent makes (an
HTTP error on ``/readyz``, an answer that is not JSON) the test serves them itself from
``FakeBrokenApi``: a real HTTP server on loopback standing in for a broken agent or for
whatever else listens on the port.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent import __version__
from tests.conftest import AgentProcess, free_port, http_json, run_cli, until

ANSI = re.compile(r"\x1b\[")
CORES_RULE = {
    "name": "cores-present",
    "metric": "nodemedic_cpu_cores",
    "op": ">",
    "threshold": 0,
    "severity": "critical",
    "description": "the host has CPU cores",
}
UTC_ENV = {"TZ": "UTC", "NO_COLOR": "", "FORCE_COLOR": ""}


def only_cpu() -> dict[str, Any]:
    """Every probe off but cpu, at 500 ms: light on a shared machine."""
    from agent.probes.catalog import PROBE_NAMES

    return {
        name: {"enabled": name == "cpu", **({"interval": "500ms"} if name == "cpu" else {})}
        for name in PROBE_NAMES
    }


@pytest.fixture
def running_agent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    """A ready agent named status-node with one firing critical condition."""
    agent = agent_factory(
        {"node": {"name": "status-node"}, "probes": only_cpu(), "rules": [CORES_RULE]}
    )
    agent.start()
    agent.wait_ready()
    until(
        lambda: http_json(agent.url + "/v1/conditions?state=firing")["conditions"],
        "the firing condition",
        agent,
    )
    return agent


def test_status_shows_identity_readiness_conditions_and_events(
    running_agent: AgentProcess,
) -> None:
    result = run_cli("status", "--config", str(running_agent.config_path), env=UTC_ENV)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert not ANSI.search(text), "piped output must carry no escape codes"
    lines = text.splitlines()
    assert "NODE         status-node" in lines
    assert re.search(
        rf"^AGENT +nodemedic {re.escape(__version__)}, up \d+s \(since .* UTC\)$",
        text,
        re.MULTILINE,
    )
    assert f"API          {running_agent.url}" in lines
    assert "READY        ready" in lines
    assert "BROKER       not configured (events kept in the local history)" in lines
    assert "CONDITIONS: 1 firing, 0 pending" in lines
    assert re.search(
        r"^FIRING +critical +cores-present +- +\d+ +\d\d:\d\d:\d\d UTC \(\d+s ago\)$",
        text,
        re.MULTILINE,
    ), text
    assert re.search(r"^\d\d:\d\d:\d\d UTC +1 +agent\.started +status-node", text, re.MULTILINE), (
        text
    )
    assert re.search(r"condition\.firing +cores-present", text)


def test_status_json_is_one_document_with_the_documented_keys(running_agent: AgentProcess) -> None:
    result = run_cli("status", "--api", running_agent.url, "--json", "--events", "5")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document) == [
        "api",
        "read_at",
        "node",
        "version",
        "started",
        "uptime_seconds",
        "ready",
        "ready_reason",
        "mqtt",
        "firing",
        "pending",
        "conditions",
        "remediation",
        "events",
    ]
    assert document["api"] == running_agent.url
    assert document["node"] == "status-node"
    assert document["version"] == __version__
    assert document["uptime_seconds"] >= 0
    assert document["ready"] is True
    assert document["mqtt"] is None
    assert document["firing"] == 1
    assert [(c["name"], c["state"], c["severity"]) for c in document["conditions"]] == [
        ("cores-present", "firing", "critical")
    ]
    assert 1 <= len(document["events"]) <= 5
    assert document["events"][0]["type"] == "io.nodemedic.agent.started"
    assert document["remediation"] is None or document["remediation"]["paused"] is False


def test_status_of_an_agent_that_is_down_names_the_url_and_exits_69(
    running_agent: AgentProcess,
) -> None:
    url = running_agent.url
    running_agent.kill()
    for args in (("--api", url), ("--config", str(running_agent.config_path))):
        result = run_cli("status", *args)
        assert result.returncode == 69, result.stdout
        assert f"cannot reach the agent at {url}/readyz: connection refused" in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


class FakeBrokenApi:
    """A loopback HTTP server answering every GET with one fixed status and body."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(api.body)))
                self.end_headers()
                self.wfile.write(api.body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-api")


@pytest.fixture
def broken_api() -> Iterator[FakeBrokenApi]:
    """A FakeBrokenApi serving in a thread."""
    api = FakeBrokenApi()
    api.thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (
            500,
            b'{"error": "internal server error", "detail": "the agent failed"}',
            76,
            "/readyz answered HTTP 500: internal server error: the agent failed",
        ),
        (404, b"<html>nginx</html>", 76, "/readyz answered HTTP 404: <html>nginx</html>"),
        (200, b"<html>hello</html>", 65, "/readyz did not answer JSON (Expecting value"),
        (200, b"[1, 2]", 65, "/readyz answered a JSON list, not an object"),
        (200, b'{"ready": NaN}', 65, "/readyz did not answer JSON (NaN is not valid JSON)"),
    ],
)
def test_an_http_error_or_an_answer_that_is_not_json_names_the_url(
    broken_api: FakeBrokenApi, status: int, body: bytes, code: int, message: str
) -> None:
    broken_api.status, broken_api.body = status, body
    for extra in ((), ("--json",)):
        result = run_cli("status", "--api", broken_api.url, *extra)
        assert result.returncode == code, result.stderr
        assert f"nodemedic: {broken_api.url}{message}" in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_bad_api_urls_and_configs_are_usage_errors(tmp_path: Any) -> None:
    result = run_cli("status", "--api", "localhost:9464")
    assert result.returncode == 64
    assert "--api 'localhost:9464' is not an http:// or https:// URL" in result.stderr
    result = run_cli("status", "--events", "5000", "--api", "http://127.0.0.1:1")
    assert result.returncode == 2
    assert "must be an integer from 0 to 1000" in result.stderr
    config = tmp_path / "off.yaml"
    config.write_text("api: {enabled: false}\n")
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 78
    assert "turns the HTTP API off (api.enabled: false)" in result.stderr
    config.write_text(f"api: {{listen: '0.0.0.0:{free_port()}'}}\n")
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 69
    assert "cannot reach the agent at http://127.0.0.1:" in result.stderr
