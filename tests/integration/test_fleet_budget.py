"""The fleet budget against a real etcd (Debian's 3.4, started per test on loopback).

Engines here are real :class:`RemediationEngine` objects over real SQLite stores; the
disruptive step is ``test.hold``, a real action whose whole effect is to count itself
in :data:`HOLDING` while it sleeps. An independent etcd watch on the slot keys checks
the bound at every revision, beside the in-process count.
"""

from __future__ import annotations

import asyncio
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from agent.config import AgentSettings
from agent.store import Store
from remediations.actions.base import Action, ActionContext, ActionResult
from remediations.coordination import FleetBudget
from remediations.library import PlaybookLibrary
from remediations.model import RunState
from remediations.service import RemediationService
from tests import remediation_actions
from tests.conftest import REPO, AgentProcess, free_port, http_get, http_json, until
from tests.etcd import (
    BUDGET,
    EtcdPKI,
    EtcdServer,
    SlotWatch,
    b64,
    budget_config,
    etcd_fixture,
    etcd_get,
)
from tests.fleet_holder import PREFIX
from tests.integration.test_remediation_agent import ENV as AGENT_ENV
from tests.integration.test_remediation_agent import _playbook as agent_playbook
from tests.integration.test_remediation_agent import _settings as agent_settings
from tests.remediation_actions import read_log
from tests.unit.remediations.engine_fixture import EngineRig, playbook

__all__ = ["etcd_fixture"]

pytestmark = pytest.mark.etcd

ENGINES, ENGINE_RUNS = 20, 10
SLOTS = f"{PREFIX}/slots/default/"
ROOT_PASSWORD = "test-root-0123456789"  # noqa: S105 - the test etcd's own throwaway password


class Holding:
    """How many disruptive steps hold a slot right now, and the most ever at once."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every count (each test starts at zero)."""
        self.now = 0
        self.most = 0
        self.total = 0

    async def hold(self, seconds: float) -> None:
        """Count one holder for ``seconds``."""
        self.now += 1
        self.total += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


HOLDING = Holding()


class HoldParams(BaseModel):
    """How long the step holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = 0.04


class Hold:
    """A disruptive step whose effect is being counted in :data:`HOLDING` while it runs."""

    name: ClassVar[str] = "test.hold"
    disruptive: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = HoldParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Nothing to check."""

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Hold for the step's seconds."""
        assert isinstance(ctx.params, HoldParams)
        await HOLDING.hold(ctx.params.seconds)
        return ActionResult(True, "held")

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Always holds."""
        return ActionResult(True, "held")


ACTIONS: dict[str, type[Action]] = {**remediation_actions.ACTIONS, Hold.name: Hold}


def _hold_playbook(name: str = "hold", **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "trigger": {"remote": True},
        "target": "host",
        "disruptive": True,
        "steps": [{"action": "test.hold"}],
        "safety": {"cooldown": "0s", "max_runs": {"count": 10_000, "per": "1h"}},
    }
    data.update(overrides)
    return playbook(name, **data)


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after 30 seconds."""
    deadline = time.monotonic() + 30.0
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within 30s: {what}")
        await asyncio.sleep(0.05)


def _revision(etcd: EtcdServer) -> int:
    reply = etcd_get(etcd.url, "/v3/kv/range", {"key": b64("/")})
    return int(reply["header"]["revision"])


@pytest.mark.asyncio
async def test_twenty_engines_sharing_a_budget_of_three_never_hold_more_than_three(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    watch = SlotWatch(etcd.url, SLOTS)
    watcher = asyncio.get_running_loop().create_task(watch.run(), name="slot-watch")
    config = budget_config(etcd, slot_wait="240s")
    rigs = []
    for i in range(ENGINES):
        (tmp_path / f"engine-{i}").mkdir()
        fleet = FleetBudget(config, node=f"engine-{i:02d}")
        rigs.append(
            EngineRig(tmp_path / f"engine-{i}", [_hold_playbook()], actions=ACTIONS, fleet=fleet)
        )
    rng = random.Random(6)  # noqa: S311 - a replayable schedule, not a secret

    async def engine(rig: EngineRig, seed: int) -> list[str]:
        mine = random.Random(seed)  # noqa: S311
        runs = []
        for _ in range(ENGINE_RUNS):
            await asyncio.sleep(mine.uniform(0, 0.05))
            runs.append(rig.engine.request("hold", source="test").run_id)
            assert await rig.engine.drain(120.0)
        return runs

    try:
        async with asyncio.timeout(30):
            await watch.ready.wait()
        for rig in rigs:
            assert rig.fleet is not None
            rig.fleet.start()
        async with asyncio.timeout(300):
            results = await asyncio.gather(*(engine(r, rng.randrange(1 << 30)) for r in rigs))
        for rig, runs in zip(rigs, results, strict=True):
            for run_id in runs:
                record = rig.engine.journal.describe(run_id)
                assert record is not None
                assert record["state"] == RunState.SUCCEEDED.value, record
                taken = [d for d in record["decisions"] if d["gate"] == "fleet_budget"]
                assert taken, record["decisions"]
                assert taken[-1]["allowed"]
                assert "slot" in taken[-1]["reason"]
        final = _revision(etcd)
        await _until(lambda: watch.revision >= final, "the watch saw every revision")
    finally:
        watcher.cancel()
        for rig in rigs:
            await rig.engine.aclose(grace=5.0)
            rig.store.close()

    requests = ENGINES * ENGINE_RUNS
    assert requests >= 200
    # Every request was served, never more than three at once, and the budget was used.
    assert HOLDING.total == requests
    assert HOLDING.most <= BUDGET
    assert watch.puts == requests == sum(len(runs) for runs in results)
    assert watch.most == BUDGET
    assert etcd.keys(SLOTS) == []
    assert etcd.keys(f"{PREFIX}/members/") == []  # every engine left the group at shutdown
    print(  # noqa: T201
        f"{requests} disruptive runs on {ENGINES} engines; most slots at once: "
        f"{watch.most} in etcd, {HOLDING.most} in steps"
    )


def _spawn_holder(etcd: EtcdServer, node: str, ttl: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fleet_holder", etcd.url, node, str(ttl)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60.0)
    if not ready:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail("the holder process said nothing within 60s")
    line = proc.stdout.readline().strip()
    assert line == "held", line + proc.stdout.read() if proc.poll() is not None else line
    return proc


@pytest.mark.asyncio
async def test_a_killed_holder_frees_its_slot_within_its_lease_ttl(etcd: EtcdServer) -> None:
    ttl = 4
    holder = _spawn_holder(etcd, "doomed", ttl)
    budget = FleetBudget(
        budget_config(etcd, max_disruptive=1, lease_ttl=f"{ttl}s", request_timeout="1s"),
        node="next",
    )
    try:
        # Kept alive past its TTL, the slot is still held: the budget of one is full.
        await asyncio.sleep(1.5 * ttl)
        refused = await budget.acquire("too-early")
        assert refused.slot is None
        assert refused.decision.reason == (
            "1 of 1 slots held in group 'default' by doomed (run held-by-doomed)"
        )
        (slot,) = etcd_get(etcd.url, "/v3/kv/range", {"key": b64(f"{SLOTS}doomed")})["kvs"]
        lease = etcd_get(etcd.url, "/v3/lease/timetolive", {"ID": slot["lease"]})
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed = time.monotonic()
        waiting = FleetBudget(
            budget_config(
                etcd,
                max_disruptive=1,
                lease_ttl=f"{ttl}s",
                request_timeout="1s",
                slot_wait=f"{ttl + 5}s",
                poll_interval="100ms",
            ),
            node="next",
        )
        outcome = await waiting.acquire("after-the-crash")
        freed = time.monotonic() - killed
        assert outcome.slot is not None, outcome.decision.reason
        assert etcd.keys(SLOTS) == [f"{SLOTS}next"]
        print(  # noqa: T201
            f"slot freed {freed:.2f}s after SIGKILL; its lease had {lease['TTL']}s of {ttl}s left"
        )
        await waiting.aclose()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
        await budget.aclose()


Events = list[tuple[str, Mapping[str, Any]]]


def _service(
    tmp_path: Path, etcd: EtcdServer, books: list[Any], store: Store
) -> tuple[RemediationService, Events]:
    settings = AgentSettings.model_validate(
        {
            "node": {"name": "node-a"},
            "state_dir": str(tmp_path),
            "remediation": {
                "pause_file": str(tmp_path / "pause"),
                "fleet_budget": budget_config(etcd, request_timeout="500ms").model_dump(),
            },
        }
    )
    events: Events = []
    service = RemediationService(
        settings,
        store=store,
        conditions=list,
        emit=lambda t, _s, d: events.append((t, dict(d))),
        actions=ACTIONS,
        library=PlaybookLibrary(playbooks={b.name: b for b in books}),
    )
    return service, events


@pytest.mark.asyncio
async def test_with_etcd_down_no_disruptive_run_starts_and_the_skip_says_why(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    gentle = playbook(
        "gentle",
        trigger={"remote": True},
        target="host",
        steps=[{"action": "test.record", "params": {"log": str(log)}}],
    )
    watching = _hold_playbook("watching", mode="observe")
    store = Store.open(tmp_path / "state.db")
    service, events = _service(tmp_path, etcd, [_hold_playbook(), gentle, watching], store)
    engine = service.engine
    try:
        service.reconcile()  # joins the group
        joined = [f"{PREFIX}/members/default/node-a"]
        await _until(lambda: etcd.keys(f"{PREFIX}/members/") == joined, "node-a joined")
        etcd.stop()

        heavy = engine.request("hold", source="test")
        light = engine.request("gentle", source="test")
        observed = engine.request("watching", source="test")
        assert await engine.drain(30.0)
        journal = engine.journal

        skipped = journal.describe(heavy.run_id)
        assert skipped is not None
        assert skipped["state"] == "skipped"
        assert skipped["gate"] == "fleet_budget"
        assert skipped["reason"].startswith("etcd unreachable: no etcd endpoint answered")
        assert etcd.url in skipped["reason"]
        assert HOLDING.total == 0
        skip = [d for t, d in events if t == "io.nodemedic.remediation.skipped"]
        assert [(d["gate"], d["reason"]) for d in skip] == [("fleet_budget", skipped["reason"])]

        ran = journal.describe(light.run_id)
        assert ran is not None
        assert ran["state"] == "succeeded"
        assert not [d for d in ran["decisions"] if d["gate"] == "fleet_budget"]
        assert len(log.read_text(encoding="utf-8").splitlines()) == 1

        would = journal.describe(observed.run_id)
        assert would is not None
        assert would["would_run"]
        fleet = [d for d in would["decisions"] if d["gate"] == "fleet_budget"]
        assert fleet[0]["reason"].startswith("observe mode: no fleet slot taken")

        families = list(service.collect())
        exposed = {sample.name for family in families for sample in family.samples}
        fleet_names = {name for name in service.METRIC_NAMES if "_fleet_" in name}
        assert {name for name in exposed if "_fleet_" in name} == fleet_names
        metrics = {m.name: m for m in families}
        failures = {
            tuple(s.labels.values()): s.value
            for s in metrics["nodemedic_remediation_fleet_acquire_failures"].samples
        }
        assert failures[("default", "etcd_unreachable")] == 1
        assert failures[("default", "budget_full")] == 0
    finally:
        await engine.aclose(grace=5.0)
        store.close()


@pytest.mark.asyncio
async def test_a_percentage_budget_follows_the_live_members(etcd: EtcdServer) -> None:
    config = budget_config(etcd, max_disruptive=None, max_disruptive_percent=25)
    members = [FleetBudget(config, node=f"m{i}") for i in range(10)]
    try:
        for member in members:
            member.start()
        await _until(lambda: len(etcd.keys(f"{PREFIX}/members/default/")) == 10, "10 members")
        # 25% of 10 live members is 2 (rounded down).
        first = await members[0].acquire("r0")
        second = await members[1].acquire("r1")
        third = await members[2].acquire("r2")
        assert first.slot is not None
        assert second.slot is not None
        assert third.slot is None
        assert third.decision.reason == (
            "2 of 2 slots held in group 'default' by m0 (run r0), m1 (run r1)"
        )
        # Six members leave (their leases revoked): 25% of 4 is 1, and no holder is preempted.
        for member in members[4:]:
            await member.aclose()
        assert len(etcd.keys(f"{PREFIX}/members/default/")) == 4
        await members[0].release(first.slot)
        still = await members[2].acquire("r2")
        assert still.decision.reason == "1 of 1 slots held in group 'default' by m1 (run r1)"
        await members[1].release(second.slot)
        now = await members[2].acquire("r2")
        assert now.slot is not None
        assert now.decision.reason == "took slot 1 of 1 in group 'default'"
        assert members[2].stats.budget == 1
    finally:
        for member in members:
            await member.aclose()


@pytest.fixture(autouse=True)
def _fresh_holding() -> None:
    HOLDING.reset()


@pytest.mark.asyncio
async def test_slots_are_released_on_failure_and_at_shutdown(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    log, block, fail = tmp_path / "steps.log", tmp_path / "never", tmp_path / "fail"
    fail.touch()
    failing = _hold_playbook(
        "failing",
        steps=[
            {"action": "test.record_disruptive", "params": {"log": str(log), "fail_if": str(fail)}}
        ],
    )
    stuck = _hold_playbook(
        "stuck",
        steps=[
            {
                "action": "test.record_disruptive",
                "params": {"log": str(log), "wait_for": str(block)},
            }
        ],
    )
    # The second endpoint answers: the first, where nothing listens, is skipped.
    config = budget_config(etcd, endpoints=(f"http://127.0.0.1:{free_port()}", etcd.url))
    rig = EngineRig(
        tmp_path, [failing, stuck], actions=ACTIONS, fleet=FleetBudget(config, node="n1")
    )
    try:
        failed = rig.engine.request("failing", source="test")
        assert await rig.engine.drain(30.0)
        record = rig.engine.journal.describe(failed.run_id)
        assert record is not None
        assert record["state"] == "failed"
        assert etcd.keys(SLOTS) == []

        held = rig.engine.request("stuck", source="test")
        await _until(lambda: etcd.keys(SLOTS) == [f"{SLOTS}n1"], "the stuck run holds a slot")
        await _until(lambda: bool(read_log(log)[1:]), "the stuck step started")
        await rig.engine.aclose(grace=0.1)
        record = rig.engine.journal.describe(held.run_id)
        assert record is not None
        assert record["state"] == "interrupted"
        # Shutdown gave the slot back and left the group.
        assert etcd.keys(f"{PREFIX}/") == [f"{PREFIX}/fence/default"]
    finally:
        await rig.engine.aclose(grace=0.1)
        rig.store.close()


@pytest.mark.asyncio
async def test_with_etcd_auth_on_a_slot_needs_the_right_password(etcd: EtcdServer) -> None:
    etcd.enable_auth(ROOT_PASSWORD)
    right = FleetBudget(budget_config(etcd, username="root", password=ROOT_PASSWORD), node="a")
    wrong = FleetBudget(
        budget_config(etcd, username="root", password=ROOT_PASSWORD[::-1]), node="b"
    )
    anonymous = FleetBudget(budget_config(etcd), node="c")
    try:
        granted = await right.acquire("r1")
        assert granted.slot is not None, granted.decision.reason
        for budget in (wrong, anonymous):
            refused = await budget.acquire("r2")
            assert refused.slot is None
            assert refused.cause == "etcd_refused"
            assert f"etcd at {etcd.url} refused" in refused.decision.reason
        assert "authentication failed" in (await wrong.acquire("r3")).decision.reason
        assert wrong.stats.failures == {"etcd_refused": 2}
    finally:
        for budget in (right, wrong, anonymous):
            await budget.aclose()


def test_a_real_agent_holds_its_slot_while_acting_and_gives_it_back_when_stopped(
    etcd: EtcdServer, tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    settings = agent_settings(tmp_path, agent_playbook(tmp_path, "enforce"))
    settings["node"] = {"name": "agent-1"}
    settings["remediation"]["fleet_budget"] = budget_config(etcd, max_disruptive=1).model_dump(
        mode="json"
    )
    agent = agent_factory(settings)
    agent.start(env=AGENT_ENV)
    agent.wait_ready()
    log = tmp_path / "steps.log"
    until(lambda: [x for x in read_log(log) if x["note"] == "act"], "the disruptive step", agent)
    assert etcd.keys(f"{PREFIX}/members/") == [f"{PREFIX}/members/default/agent-1"]
    assert etcd.keys(SLOTS) == [f"{SLOTS}agent-1"]
    run_id = read_log(log)[0]["run"]
    run = http_json(f"{agent.url}/v1/runs/{run_id}")
    taken = [d for d in run["decisions"] if d["gate"] == "fleet_budget"]
    assert [(d["allowed"], d["reason"]) for d in taken] == [
        (True, "took slot 1 of 1 in group 'default'")
    ]
    _, metrics = http_get(f"{agent.url}/metrics")
    assert 'nodemedic_remediation_fleet_slots_held{group="default"} 1.0' in metrics
    assert 'nodemedic_remediation_fleet_budget{group="default"} 1.0' in metrics

    code, _ = agent.stop(timeout=30)
    assert code == 0, agent.log()[-3000:]
    # Stopped mid-step, the run is interrupted, its slot released and the agent left the group.
    assert etcd.keys(f"{PREFIX}/") == [f"{PREFIX}/fence/default"]


@pytest.mark.asyncio
async def test_over_https_a_slot_needs_the_ca_and_a_client_certificate(tmp_path: Path) -> None:
    pki = EtcdPKI.create(tmp_path / "pki")
    etcd = EtcdServer(tmp_path, pki)
    etcd.start()
    certified = FleetBudget(
        budget_config(
            etcd, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
        ),
        node="a",
    )
    anonymous = FleetBudget(budget_config(etcd, ca_file=pki.ca_cert), node="b")
    untrusting = FleetBudget(budget_config(etcd), node="c")  # the system's CAs do not know this one
    try:
        granted = await certified.acquire("r1")
        assert granted.slot is not None, granted.decision.reason
        assert etcd.url.startswith("https://")
        assert etcd.keys(SLOTS) == [f"{SLOTS}a"]
        for budget, why in ((anonymous, "BAD_CERTIFICATE"), (untrusting, "CERTIFICATE_VERIFY")):
            refused = await budget.acquire("r2")
            assert refused.slot is None
            assert refused.decision.reason.startswith("etcd unreachable: no etcd endpoint answered")
            assert why in refused.decision.reason
    finally:
        for budget in (certified, anonymous, untrusting):
            await budget.aclose()
        etcd.stop()
