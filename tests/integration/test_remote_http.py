"""The API's writes on a real agent: bearer tokens with policies, signed commands, limits.

The agent has no broker: HTTP is the only way in. Every answer is checked as a client
sees it (status, ``WWW-Authenticate``, the JSON error or reply), and every refusal
leaves the run list as it was.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import http_json, until
from tests.remote_fleet import (  # noqa: F401
    AgentFactory,
    Operator,
    RemoteAgent,
    events,
    healthy,
    playbook,
    remote_agents_fixture,
    runs,
    token,
)

OPS = token()
RUNNER = token()


def _request(
    agent: RemoteAgent,
    path: str,
    body: bytes | None = b"",
    *,
    bearer: str | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(  # noqa: S310 - loopback only
        agent.url + path, data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return int(resp.status), dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _run(**fields: Any) -> bytes:
    return json.dumps({"playbook": "dry-check", **fields}).encode()


def test_http_writes_need_the_right_token_or_a_signature_and_bounded_json(
    tmp_path: Path, remote_agents: AgentFactory
) -> None:
    ops_key = Operator.create(tmp_path / "keys", "ops", playbooks=["dry-*"])
    agent = remote_agents(
        "web-1",
        broker=None,
        operators=[ops_key],
        playbooks=[playbook("dry-check", mode="dry_run", log=tmp_path / "never.log")],
        tokens=[
            {"name": "ops", "token": OPS, "pause": True},
            {"name": "runner", "token": RUNNER, "playbooks": ["dry-*"], "params": ["note"]},
        ],
    ).start_ready()

    status, headers, body = _request(agent, "/v1/runs", _run())
    assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer")
    assert body["error"] == "unauthorized"
    assert "Authorization: Bearer" in body["detail"]
    status, headers, body = _request(agent, "/v1/runs", _run(), bearer="not-a-token")
    assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer")
    assert "not one of remote.api_tokens" in body["detail"]
    for path, bearer, method, needs in (
        ("/v1/runs", OPS, "POST", "may not run playbook 'dry-check'"),
        ("/v1/pause", RUNNER, "POST", "may not pause or resume"),
        ("/v1/pause", RUNNER, "DELETE", "may not pause or resume"),
        ("/v1/runs/01ABC/approve", OPS, "POST", "may not approve runs"),
    ):
        status, _, body = _request(agent, path, _run(), bearer=bearer, method=method)
        assert (status, body["error"]) == (403, "not_allowed"), body
        assert needs in body["detail"]
    status, _, body = _request(agent, "/v1/runs", _run(params={"unit": "x"}), bearer=RUNNER)
    assert (status, body["error"]) == (400, "invalid_params"), body
    rejected = events(agent, "io.nodemedic.command.rejected")
    assert [e["data"]["reason"] for e in rejected] == ["not_allowed"] * 4 + ["invalid_params"]
    assert runs(agent) == []

    # A good token: 202 and the run's id; the run is there.
    status, _, body = _request(agent, "/v1/runs", _run(params={"note": "http"}), bearer=RUNNER)
    assert status == 202, body
    assert (body["ok"], body["reason"]) == (True, "accepted")
    by_token = body["run_id"]
    run_url = f"{agent.url}/v1/runs/{by_token}"
    until(lambda: http_json(run_url)["state"] == "succeeded", "the run", agent)
    assert "runner (token runner)" in runs(agent)[0]["source"]
    status, _, body = _request(agent, "/v1/pause", bearer=OPS)
    assert (status, body["detail"]) == (202, "remediation paused")
    status, _, body = _request(agent, "/v1/pause", bearer=OPS, method="DELETE")
    assert (status, body["detail"]) == (202, "remediation resumed")

    # A signed command needs no token; its signature authorises it, once.
    signed = ops_key.sign(playbook="dry-check")
    status, _, body = _request(agent, "/v1/commands", signed)
    assert status == 202, body
    assert body["run_id"] in {run["id"] for run in runs(agent)}
    status, _, body = _request(agent, "/v1/commands", signed)
    assert (status, body["reason"]) == (409, "replayed")

    # Bodies: too large, or not JSON, are refused with a JSON error naming why.
    count = len(runs(agent))
    status, _, body = _request(agent, "/v1/runs", b" " * (1 << 20), bearer=RUNNER)
    assert (status, body["error"]) == (413, "request body too large")
    status, _, body = _request(agent, "/v1/commands", b"{" + b" " * 20_000 + b"}")
    assert (status, body["reason"]) == (413, "too_large")
    status, _, body = _request(agent, "/v1/runs", b"run it, please", bearer=RUNNER)
    assert (status, body["error"]) == (400, "invalid_json")
    status, _, body = _request(agent, "/v1/commands", b"\xff\xfe not json")
    assert (status, body["reason"]) == (400, "malformed")
    status, _, body = _request(agent, "/v1/runs", b'{"playbook": 7}', bearer=RUNNER)
    assert (status, body["error"]) == (400, "invalid_request")
    assert "playbook" in body["detail"]
    assert len(runs(agent)) == count
    assert healthy(agent)
    agent.stop()
