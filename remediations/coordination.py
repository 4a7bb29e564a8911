"""The fleet budget: a semaphore in etcd that bounds how many hosts run disruptive steps.

Keys, under the configured prefix ``P`` and group ``G``:

* ``P/members/G/<node>``: every agent of the group, on a *member lease* renewed every
  third of the lease TTL. The live members are the keys that exist.
* ``P/slots/G/<node>``: a host in a disruptive run, on a *slot lease* of its own (one
  per run), renewed the same way. A host that dies stops renewing, etcd deletes its
  slot when the lease expires, and the slot is free again within the lease TTL.
* ``P/fence/G``: rewritten by every acquisition; only its ``mod_revision`` matters.
* ``P/queue/G/<node>/<lease>``: a host waiting for a slot, on the lease its slot will
  use. Waiters are served oldest ``create_revision`` first (etcd's fair-semaphore
  recipe); the claim that takes the slot deletes the queue key in the same transaction.

The budget is ``max_disruptive``, ``max_disruptive_percent`` of the live members
(rounded down, but at least 1 while the percentage and the members are above 0), or
the smaller of both. A slot key per *node* means a host holds at most one slot; an agent
restarted within the TTL takes over the slot its previous process left, never a second.

Acquisition is a compare-and-swap, never check-then-set: one read transaction returns
the slots, the member count and the fence at one revision ``R``; if fewer than the
budget are held by others, one write transaction puts the slot key *and* the fence,
under two compares: the fence's ``mod_revision`` and the own slot key's
``mod_revision`` are still what the read saw.

Safety argument: every put of a slot key happens in such a transaction, and each of
them also rewrites the fence. If acquisition ``T`` commits, no transaction wrote the
fence between ``R`` and ``T``, so no slot key was created in between; keys can only
have gone (released, or expired with their lease). So the slots held at ``T`` are at
most those counted at ``R``, which were below the budget, and after ``T`` at most the
budget. Two acquirers that read the same fence cannot both commit: the first one's
write changes the fence the second one compares. Expiry deletes slots without touching
the fence; that only frees capacity. The bound holds per budget as each acquirer
computes it, so every host of a group must be configured with the same budget; a
percentage budget that shrinks as members leave preempts no holder.

A holder cut off from etcd longer than the lease TTL loses its slot while its steps may
still run: choose a TTL longer than an etcd outage a run should survive. The loss is
logged, counted and reported as an event; the run is not stopped (stopping a
disruptive step half-way leaves the host worse).

Waiting, and what the queue changes: one :meth:`FleetBudget.acquire` grants one lease
(only when it queues or claims) and keeps it for every attempt; it is revoked when the
call gives up, fails or is cancelled (which also drops the queue key), or later by
:meth:`FleetBudget.release`. A waiter claims only while its place in the queue is below
the free slots; the first ``budget`` waiters watch the slot keys for a delete (an etcd
watch from the revision they read, so nothing freed in between is missed) and every
other waiter watches the queue key just ahead of its own, so a freed slot wakes at most
``budget`` waiters instead of all of them. A watch ends at least every third of the TTL
to renew the waiting lease; a waiter whose lease expired queues again at the back. A
claim that loses the compare-and-swap backs off for a random time below a bound that
doubles per loss (10 ms up to 0.5 s) before it reads again. The queue is advice about
*who tries*, never part of the safety argument above: the claim is the same
compare-and-swap on the fence and the own slot key, so a stale, missing or skipped
queue entry can delay a waiter but never let more than the budget hold slots. A waiter
that died leaves its queue key until its lease expires, delaying those behind it by up
to the TTL; a budget that grows (more members) is noticed at the next renewal.

Fail safe: when etcd cannot be reached, :meth:`FleetBudget.acquire` refuses at once with
``etcd unreachable: ...`` (and when etcd refuses, e.g. bad credentials, with etcd's
reason); non-disruptive runs never ask. A full budget is waited on up
to ``slot_wait`` (as above), then refused. Slots are released on success,
failure and cancellation by the engine, and by :meth:`FleetBudget.aclose` at shutdown;
if etcd cannot be told, the lease expires within its TTL.
"""

from __future__ import annotations

__all__ = ["GATE", "FleetBudget", "FleetStats", "Slot", "SlotOutcome", "budget_for"]

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import FleetBudgetConfig
from remediations.etcd import (
    EtcdClient,
    EtcdError,
    TxnResult,
    b64,
    delete_op,
    mod_equals,
    put_op,
    range_op,
)
from remediations.fleet_slots import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    GATE,
    RETRIES,
    FleetStats,
    Pause,
    Slot,
    SlotOutcome,
    Table,
    Waiter,
    budget_for,
)
from remediations.gates import Decision

log = logging.getLogger(__name__)

Emit = Callable[[str, str | None, Mapping[str, Any]], None]


class FleetBudget:
    """This agent's membership in a fleet budget group, and its slots.

    Args:
        config: the ``remediation.fleet_budget`` section.
        node: this host's name (the last part of its keys).
        emit: records an event (slot lost, etcd unreachable or back).
        client: the etcd client (default: one over ``config.endpoints``).
    """

    def __init__(
        self,
        config: FleetBudgetConfig,
        *,
        node: str,
        emit: Emit | None = None,
        client: EtcdClient | None = None,
    ) -> None:
        self._config = config
        self._node = node
        self._emit = emit or (lambda _t, _s, _d: None)
        self._etcd = client or EtcdClient(
            config.endpoints,
            timeout=config.request_timeout.total_seconds(),
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            ca_file=config.ca_file,
            cert_file=config.cert_file,
            key_file=config.key_file,
        )
        base = config.prefix
        self._members = f"{base}/members/{config.group}/"
        self._slots = f"{base}/slots/{config.group}/"
        self._fence = f"{base}/fence/{config.group}"
        self._queue = f"{base}/queue/{config.group}/"
        self._ttl = max(2, round(config.lease_ttl.total_seconds()))
        self._member_lease: int | None = None
        self._member_lock = asyncio.Lock()
        self._claim_lock = asyncio.Lock()
        self._held: dict[int, Slot] = {}
        self._task: asyncio.Task[None] | None = None
        self._reachable = True
        self.stats = FleetStats()

    @property
    def group(self) -> str:
        """The budget group."""
        return self._config.group

    def describe(self) -> str:
        """The budget in words: ``group 'default': at most 3 hosts and 10% of live members``."""
        parts = []
        if self._config.max_disruptive is not None:
            parts.append(f"{self._config.max_disruptive} hosts")
        if self._config.max_disruptive_percent is not None:
            parts.append(f"{self._config.max_disruptive_percent:g}% of live members")
        return f"group {self.group!r}: at most {' and '.join(parts)}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Join the group and keep the leases alive in a task; call with the loop running."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._keep_alive(), name="fleet-budget"
            )

    async def aclose(self) -> None:
        """Leave the group: revoke held slots and the membership, close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for slot in list(self._held.values()):
            await self.release(slot)
        if self._member_lease is not None:
            with contextlib.suppress(EtcdError):
                await self._etcd.revoke(self._member_lease)
            self._member_lease = None
        await self._etcd.aclose()

    async def _keep_alive(self) -> None:
        pace = self._ttl / 3
        while True:
            try:
                await self._join()
                for lease, slot in list(self._held.items()):
                    if await self._etcd.keepalive(lease) <= 0 and lease in self._held:
                        self._lose(slot)
                self._set_reachable(True, "")
            except EtcdError as err:
                self._set_reachable(False, str(err))
            await asyncio.sleep(pace)

    async def _join(self) -> None:
        """Register (or renew) this host as a live member of the group."""
        async with self._member_lock:
            if self._member_lease is not None:
                if await self._etcd.keepalive(self._member_lease) > 0:
                    return
                log.warning("fleet budget: membership lease expired; joining again")
            lease = await self._etcd.grant(self._ttl)
            key = b64(self._members + self._node)
            await self._etcd.txn((), [put_op(key, self._node, lease)])
            self._member_lease = lease

    def _set_reachable(self, reachable: bool, error: str) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            log.info("fleet budget: etcd reachable again")
        else:
            log.warning("fleet budget: etcd unreachable: %s", error)
        kind = "etcd_reachable" if reachable else "etcd_unreachable"
        self._emit(f"io.nodemedic.remediation.fleet_{kind}", self.group, {"error": error})

    def _lose(self, slot: Slot) -> None:
        slot.lost = True
        del self._held[slot.lease]
        self.stats.lost += 1
        self.stats.held = len(self._held)
        log.error("fleet budget: the slot of run %s expired while held", slot.run_id)
        self._emit(
            "io.nodemedic.remediation.fleet_slot_lost",
            self.group,
            {"run": slot.run_id, "group": self.group, "node": self._node},
        )

    # -- slots -------------------------------------------------------------------------

    async def acquire(
        self, run_id: str, *, on_wait: Callable[[str], None] | None = None
    ) -> SlotOutcome:
        """Take a slot for ``run_id``, waiting up to ``slot_wait`` while the budget is full.

        Never raises for etcd trouble: an unreachable etcd is a refusal saying so.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.slot_wait.total_seconds()
        waiter = Waiter(run_id)
        waited = False
        try:
            while True:
                try:
                    outcome, pause = await self._try_once(waiter, waited=waited)
                except EtcdError as err:
                    if err.code is not None:  # it answered, and said no (auth, permissions)
                        return self._refuse("etcd_refused", str(err), waited)
                    self._set_reachable(False, str(err))
                    return self._refuse("etcd_unreachable", f"etcd unreachable: {err}", waited)
                if outcome.slot is not None:
                    waiter.lease = None  # the slot's now: released by release()
                    return outcome
                remaining = deadline - loop.time()
                if remaining <= 0 and not (pause.retry and waiter.losses <= RETRIES):
                    reason = outcome.decision.reason
                    if waited:
                        reason += f"; waited {self._config.slot_wait.total_seconds():g}s"
                    return self._refuse("budget_full", reason, waited)
                if not pause.retry:  # a back-off after a lost claim is not waiting
                    if not waited and on_wait is not None:
                        on_wait(outcome.decision.reason)
                    waited = True
                await self._pause(pause, remaining)
        finally:
            if waiter.lease is not None:  # gave up, failed or cancelled: leave the queue
                with contextlib.suppress(EtcdError):
                    await self._etcd.revoke(waiter.lease)

    async def _pause(self, pause: Pause, remaining: float) -> None:
        """Back off, or watch until the key ``pause`` names is deleted (bounded waits)."""
        if pause.key is None:
            await asyncio.sleep(pause.delay if pause.retry else min(pause.delay, remaining))
            return
        # Wake at least every third of the TTL to renew the waiting lease.
        timeout = min(remaining, self._ttl / 3)
        try:
            await self._etcd.wait_deleted(
                pause.key, prefix=pause.prefix, after=pause.revision, within=timeout
            )
        except EtcdError:  # the next read says whether etcd is there
            await asyncio.sleep(min(self._poll(), remaining))

    def _poll(self) -> float:
        return self._config.poll_interval.total_seconds() * random.uniform(0.5, 1.5)  # noqa: S311

    async def _try_once(self, waiter: Waiter, *, waited: bool) -> tuple[SlotOutcome, Pause]:
        await self._join()
        async with self._claim_lock:
            await self._renew(waiter)
            table = await self._read()
            mine = next(iter(self._held.values()), None)
            if mine is None and waiter.queue_key not in (None, *table.queue):
                waiter.forget()  # its lease expired while it waited: queue again
            if (
                mine is None
                and waiter.queue_key is None
                and self._config.slot_wait.total_seconds() > 0  # it will wait: queue
                and (table.queue or self._free(table) <= 0)
            ):
                await self._enqueue(waiter)
                table = await self._read()
            self.stats.in_use = len(table.holders)
            self.stats.budget = table.budget
            free = self._free(table)
            rank = table.queue.index(waiter.queue_key) if waiter.queue_key else 0
            if mine is not None or rank >= free:
                return SlotOutcome(self._full(table, mine), None, "budget_full"), self._watch(
                    table, rank, mine
                )
            if waiter.lease is None:
                waiter.lease = await self._etcd.grant(self._ttl)
                waiter.renewed = asyncio.get_running_loop().time()
            lease = waiter.lease
            if await self._claim(table, waiter, lease):
                return self._granted(table, Slot(waiter.run_id, lease), waited), Pause()
            # Another host took the slot between the read and the claim: back off with
            # jitter, doubling the bound on every loss (capped), then read again.
            waiter.losses += 1
            self.stats.claims_lost += 1
            bound = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(waiter.losses, 8))
            reason = f"lost a slot to another host in group {self.group!r}"
            pause = Pause(delay=random.uniform(0, bound), retry=True)  # noqa: S311  (jitter)
            return SlotOutcome(Decision(GATE, False, reason), None, "budget_full"), pause

    def _free(self, table: Table) -> int:
        return table.budget - sum(1 for n in table.holders if n != self._node)

    def _watch(self, table: Table, rank: int, mine: Slot | None) -> Pause:
        """What a waiter that may not claim now waits for.

        The first ``budget`` in the queue watch the slots (one of them is next when a
        slot is freed); the others watch the queue key just ahead of their own, so a
        freed slot wakes at most ``budget`` waiters, not all of them.
        """
        if mine is not None or table.budget <= 0:
            return Pause(delay=self._poll())  # nothing to watch: poll with jitter
        if rank < table.budget or rank == 0:
            return Pause(key=self._slots, prefix=True, revision=table.revision)
        return Pause(key=table.queue[rank - 1], revision=table.revision)

    async def _renew(self, waiter: Waiter) -> None:
        """Keep the waiting lease (and so the queue key) alive while it waits."""
        now = asyncio.get_running_loop().time()
        if waiter.lease is None or now - waiter.renewed < self._ttl / 3:
            return
        if await self._etcd.keepalive(waiter.lease) > 0:
            waiter.renewed = now
        else:
            log.warning("fleet budget: the waiting lease of run %s expired", waiter.run_id)
            waiter.lease = None
            waiter.forget()

    async def _enqueue(self, waiter: Waiter) -> None:
        """Grant the waiter's lease (once per acquire) and put its queue key on it."""
        if waiter.lease is None:
            waiter.lease = await self._etcd.grant(self._ttl)
            waiter.renewed = asyncio.get_running_loop().time()
        key = f"{self._queue}{self._node}/{waiter.lease:x}"
        await self._etcd.txn((), [put_op(b64(key), waiter.run_id, waiter.lease)])
        waiter.queue_key = key

    def _granted(self, table: Table, slot: Slot, waited: bool) -> SlotOutcome:
        others = sorted(n for n in table.holders if n != self._node)
        self._held[slot.lease] = slot
        self.stats.held = len(self._held)
        self.stats.in_use = len(others) + 1
        self._set_reachable(True, "")
        held = f"; others: {', '.join(others)}" if others else ""
        reason = f"took slot {len(others) + 1} of {table.budget} in group {self.group!r}{held}"
        return SlotOutcome(Decision(GATE, True, reason), slot, "granted", waited)

    def _full(self, table: Table, mine: Slot | None) -> Decision:
        if mine is not None:
            why = f"this host already holds its slot in group {self.group!r} (run {mine.run_id})"
            return Decision(GATE, False, why)
        names = ", ".join(f"{n} (run {r})" if r else n for n, r in sorted(table.holders.items()))
        held = f" by {names}" if names else ""
        reason = f"{len(table.holders)} of {table.budget} slots held in group {self.group!r}{held}"
        if table.budget == 0:
            reason += f" ({table.members} live members; {self.describe()})"
        return Decision(GATE, False, reason)

    def _refuse(self, cause: str, reason: str, waited: bool) -> SlotOutcome:
        self.stats.failures[cause] += 1
        return SlotOutcome(Decision(GATE, False, reason), None, cause, waited)

    async def _read(self) -> Table:
        """Slots, member count and fence at one revision (a read-only transaction)."""
        reply = await self._etcd.txn(
            (),
            [
                range_op(self._slots, prefix=True),
                range_op(self._members, prefix=True, count_only=True),
                range_op(self._fence),
                range_op(self._queue, prefix=True, by_creation=True),
            ],
        )
        holders: dict[str, str] = {}
        own = 0
        for kv in reply.kvs(0):
            node = kv.key.removeprefix(self._slots)
            holders[node] = _run_of(kv.value)
            if node == self._node:
                own = kv.mod_revision
        members = reply.count(1)
        fence = reply.kvs(2)
        return Table(
            holders=holders,
            members=members,
            budget=budget_for(
                self._config.max_disruptive, self._config.max_disruptive_percent, members
            ),
            fence_revision=fence[0].mod_revision if fence else 0,
            own_revision=own,
            queue=[kv.key for kv in reply.kvs(3)],
            revision=reply.revision,
        )

    async def _claim(self, table: Table, waiter: Waiter, lease: int) -> bool:
        """Put this host's slot and the fence, if neither changed since ``table`` was read.

        The same transaction deletes the waiter's queue key: it leaves the queue exactly
        when it takes the slot.
        """
        slot_key = b64(self._slots + self._node)
        value = json.dumps({"node": self._node, "run": waiter.run_id})
        ops = [put_op(slot_key, value, lease), put_op(b64(self._fence), self._node, 0)]
        if waiter.queue_key is not None:
            ops.append(delete_op(b64(waiter.queue_key)))
        try:
            reply: TxnResult = await self._etcd.txn(
                [
                    mod_equals(b64(self._fence), table.fence_revision),
                    mod_equals(slot_key, table.own_revision),
                ],
                ops,
            )
        except EtcdError as err:
            if "lease not found" not in str(err):
                raise
            waiter.lease = None  # expired while waiting: a new one, and queue again
            waiter.forget()
            return False
        return reply.succeeded

    async def release(self, slot: Slot) -> None:
        """Give ``slot`` back (revoking its lease deletes the key); never raises for etcd."""
        self._held.pop(slot.lease, None)
        self.stats.held = len(self._held)
        try:
            await self._etcd.revoke(slot.lease)
        except EtcdError as err:
            log.warning(
                "fleet budget: could not release the slot of run %s (%s); it frees itself "
                "within %ds when its lease expires",
                slot.run_id,
                err,
                self._ttl,
            )


def _run_of(value: str) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        return ""
    return str(data.get("run", "")) if isinstance(data, dict) else ""
