"""``drain.haproxy`` / ``undrain.haproxy`` (and ``drain.node``) against a real HAProxy.

:class:`tests.haproxy.HaproxyRig` runs HAProxy with backend ``web`` = ``web/host`` (this
node, a local TCP server recording hits) + ``web/other``. Every assertion reads HAProxy
itself, independently of the agent's client: the server's state (``show servers state``
and ``show stat``) and which backend server new connections through the frontend reach.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.config_drain import DrainConfig, HaproxyDrainConfig
from remediations.actions.base import ActionContext, ActionError, ActionResult
from remediations.actions.drain import DrainNode, UndrainNode
from remediations.actions.haproxy import DrainHaproxy, HaproxyParams, UndrainHaproxy
from remediations.haproxy import HaproxyError, RuntimeApi
from tests.actions import RecordingServices, step
from tests.brokers import free_port
from tests.haproxy import (  # the fixture is imported to register it in this module
    HaproxyRig,
    haproxy_rig_fixture,  # noqa: F401
)

pytestmark = [pytest.mark.haproxy, pytest.mark.asyncio]

DRAIN_BIT, MAINT_BIT = 0x08, 0x01
READY = "no check"
"""``show stat``'s status of a READY server without health checks (UP with checks)."""


def _services(rig: HaproxyRig, **haproxy: Any) -> RecordingServices:
    config = HaproxyDrainConfig.model_validate(
        {"socket": rig.socket, "servers": ["web/host"], "drain_timeout": "10s", **haproxy}
    )
    return RecordingServices(drain=DrainConfig(method="haproxy", haproxy=config))


async def _run(
    action: Any, rig: HaproxyRig, *, dry_run: bool = False, params: Any = None, **haproxy: Any
) -> ActionResult:
    """Precheck, apply and (unless dry run) verify, which must hold; the apply's result."""
    ctx: ActionContext = step(
        params if params is not None else action.Params(),
        services=_services(rig, **haproxy),
        dry_run=dry_run,
    )
    await action.precheck(ctx)
    result: ActionResult = await action.apply(ctx)
    if not dry_run:
        check = await action.verify(ctx)
        assert check.ok, check.summary
    return result


async def _spread(rig: HaproxyRig, count: int = 6) -> dict[str, int]:
    return await asyncio.to_thread(rig.spread, count)


async def test_drain_stops_new_connections_and_undrain_restores_them(
    haproxy_rig: HaproxyRig,
) -> None:
    rig = haproxy_rig
    assert (await _spread(rig))["host"] == 3  # round robin: both take connections
    result = await _run(DrainHaproxy(), rig)
    assert result.ok
    assert "drained web/host: their sessions reached 0" in result.summary
    assert rig.admin_state() & DRAIN_BIT
    assert rig.status() == "DRAIN"
    hits = rig.backends["host"].hits
    assert await _spread(rig) == {"host": 0, "other": 6}
    assert rig.backends["host"].hits == hits  # nothing reached this host's server

    result = await _run(UndrainHaproxy(), rig)
    assert result.summary == "undrained: web/host"
    assert rig.admin_state() == 0
    assert rig.status() == READY
    assert (await _spread(rig))["host"] == 3


async def test_drain_waits_for_a_long_lived_session_to_end(haproxy_rig: HaproxyRig) -> None:
    rig = haproxy_rig
    # Open sessions until this host's server holds one (round robin: within two).
    held = [await asyncio.to_thread(rig.hold) for _ in range(2)]
    mine = next(sock for sock, name in held if name == "host")
    ctx = step(HaproxyParams(), services=_services(rig, drain_timeout="60s"))
    drain = asyncio.create_task(DrainHaproxy().apply(ctx))
    try:
        async with asyncio.timeout(30):
            while rig.status() != "DRAIN":  # noqa: ASYNC110  (HAProxy is another process)
                await asyncio.sleep(0.05)
        assert not drain.done()  # still waiting: the session is open
        mine.close()
        result = await asyncio.wait_for(drain, 30)
    finally:
        for sock, _ in held:
            sock.close()
    assert "their sessions reached 0" in result.summary
    assert result.details["deadline_passed"] is False
    assert result.details["sessions_left"] == {"web/host": 0}


async def test_drain_reports_a_session_still_open_when_the_deadline_passes(
    haproxy_rig: HaproxyRig,
) -> None:
    rig = haproxy_rig
    held = [await asyncio.to_thread(rig.hold) for _ in range(2)]
    try:
        result = await _run(DrainHaproxy(), rig, drain_timeout="1s")
    finally:
        for sock, _ in held:
            sock.close()
    assert "the 1s deadline passed with sessions still open (web/host: 1)" in result.summary
    assert result.details["deadline_passed"] is True
    assert rig.status() == "DRAIN"


async def test_maint_after_drain_leaves_the_server_in_maint(haproxy_rig: HaproxyRig) -> None:
    rig = haproxy_rig
    result = await _run(DrainHaproxy(), rig, maint_after_drain=True)
    assert result.summary.endswith("; now MAINT")
    assert rig.admin_state() & MAINT_BIT
    assert rig.status() == "MAINT"
    assert await _spread(rig) == {"host": 0, "other": 6}
    await _run(UndrainHaproxy(), rig)
    assert rig.status() == READY


async def test_drain_and_undrain_are_idempotent(haproxy_rig: HaproxyRig) -> None:
    rig = haproxy_rig
    for _ in range(2):
        result = await _run(DrainHaproxy(), rig)
        assert result.ok
        assert rig.status() == "DRAIN"
    assert result.details["before"]["web/host"]["admin"] == "drain"
    for _ in range(2):
        result = await _run(UndrainHaproxy(), rig)
        assert rig.status() == READY
    assert result.summary == "undrained: nothing to do, every server was READY"


async def test_dry_run_says_what_it_would_do_and_changes_nothing(
    haproxy_rig: HaproxyRig,
) -> None:
    rig = haproxy_rig
    result = await _run(DrainHaproxy(), rig, dry_run=True, maint_after_drain=True)
    assert result.summary == (
        "would set web/host (ready, 0 sessions) to DRAIN and wait up to 10s for their "
        "sessions to reach 0, then MAINT"
    )
    assert rig.admin_state() == 0
    assert rig.status() == READY
    await _run(DrainHaproxy(), rig)
    result = await _run(UndrainHaproxy(), rig, dry_run=True)
    assert result.summary == "would set web/host to READY"
    assert rig.status() == "DRAIN"


async def test_the_tcp_runtime_api_and_step_params_override_the_config(
    haproxy_rig: HaproxyRig,
) -> None:
    rig = haproxy_rig
    params = HaproxyParams(socket=rig.tcp, servers=("web/other",))
    result = await _run(DrainHaproxy(), rig, params=params)
    assert result.summary.startswith("drained web/other")
    assert rig.status("other") == "DRAIN"
    assert rig.status("host") == READY
    assert await _spread(rig) == {"host": 6, "other": 0}


@pytest.mark.parametrize(
    ("haproxy", "message"),
    [
        ({"servers": ["web/nope"]}, "has no server web/nope"),
        ({"servers": ["api/host"]}, "has no backend 'api'"),
        ({"socket": "/nonexistent/admin.sock"}, "/nonexistent/admin.sock does not exist"),
        ({"socket": "user"}, "refused 'set': Permission denied"),
    ],
)
async def test_bad_servers_and_sockets_give_clear_errors(
    haproxy_rig: HaproxyRig, haproxy: dict[str, Any], message: str
) -> None:
    rig = haproxy_rig
    if haproxy.get("socket") == "user":
        haproxy["socket"] = rig.user_socket
    with pytest.raises(ActionError, match=message):
        await _run(DrainHaproxy(), rig, **haproxy)
    assert rig.status() == READY


async def test_the_client_refuses_bad_addresses_and_smuggled_commands(
    haproxy_rig: HaproxyRig,
) -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(HaproxyError, match=f"nothing listens on HAProxy runtime API {address}"):
        await RuntimeApi(address).command("show info")
    with pytest.raises(HaproxyError, match="neither an absolute unix socket path nor host:port"):
        RuntimeApi("haproxy.sock")
    api = RuntimeApi(haproxy_rig.socket)
    for smuggled in ("show info\nshutdown frontend fe", "show info; disable server web/host"):
        with pytest.raises(HaproxyError, match="refusing a runtime API command with a separator"):
            await api.command(smuggled)
    with pytest.raises(HaproxyError, match="'web/host/x' is not backend/server"):
        await api.set_state("web/host/x", "drain")
    assert haproxy_rig.status() == READY


async def test_drain_node_runs_the_configured_method(haproxy_rig: HaproxyRig) -> None:
    rig = haproxy_rig
    result = await _run(DrainNode(), rig)
    assert result.details["method"] == "drain.haproxy"
    assert rig.status() == "DRAIN"
    await _run(UndrainNode(), rig)
    assert rig.status() == READY


async def test_drain_node_without_a_method_refuses_naming_the_config_key() -> None:
    ctx = step(DrainNode.Params(), services=RecordingServices())
    with pytest.raises(ActionError, match=r"remediation\.drain\.method is none"):
        await DrainNode().precheck(ctx)
    undrain = step(UndrainNode.Params(), services=RecordingServices())
    await UndrainNode().precheck(undrain)
    assert (await UndrainNode().apply(undrain)).ok
