"""Recording actions for remediation tests, loaded like any site module via
``remediation.action_modules: [tests.remediation_actions]``.

They are not fakes of an external system: their whole effect is a JSON line appended
to the file named by their ``log`` param (a real file, so a test can read what an agent
process did even after SIGKILL). ``wait_for`` makes a step block until that file exists
(the crash test kills the agent there); a target in :data:`FAILING`, or an existing
``fail_if`` file, makes ``apply`` fail.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "FAILING", "RecordAs", "RecordDisruptive", "RecordIdempotent", "read_log"]

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from remediations.actions.base import Action, ActionContext, ActionError, ActionResult

FAILING: set[str] = set()
"""Targets whose steps fail (in-process tests)."""


class RecordParams(BaseModel):
    """Where to record, and optional blocking and failure switches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log: str
    note: str = ""
    wait_for: str | None = None
    fail_if: str | None = None


class _Record:
    Params: ClassVar[type[BaseModel]] = RecordParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Nothing to check."""

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Append a line naming the run and step; block or fail as the params say."""
        params = ctx.params
        assert isinstance(params, RecordParams)
        if ctx.dry_run:
            return ActionResult(True, f"would record {params.note or ctx.target}")
        line = {
            "action": type(self).name,  # type: ignore[attr-defined]
            "run": ctx.run_id,
            "playbook": ctx.playbook,
            "target": ctx.target,
            "note": params.note,
        }
        _append(Path(params.log), line)
        if params.wait_for is not None:
            # Another process creates the file; a short poll keeps the step cancellable.
            while not _exists(params.wait_for):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        if ctx.target in FAILING or (params.fail_if is not None and _exists(params.fail_if)):
            raise ActionError(f"{ctx.target}: told to fail")
        return ActionResult(True, f"recorded {params.note or ctx.target}", {"log": params.log})

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Always holds."""
        return ActionResult(True, "recorded")


class RecordDisruptive(_Record):
    """A disruptive, non-idempotent step (like a restart)."""

    name: ClassVar[str] = "test.record_disruptive"
    disruptive: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False


class RecordIdempotent(_Record):
    """A harmless idempotent step (like reset-failed)."""

    name: ClassVar[str] = "test.record"
    disruptive: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True


class RecordAsParams(RecordParams):
    """Params of ``test.record_as``: the step says what it is, like ``exec``'s."""

    disruptive: bool = True
    idempotent: bool = False


class RecordAs(_Record):
    """A step whose params say whether it is disruptive or idempotent (like ``exec``)."""

    name: ClassVar[str] = "test.record_as"
    disruptive: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = RecordAsParams


ACTIONS: dict[str, type[Action]] = {
    RecordAs.name: RecordAs,
    RecordDisruptive.name: RecordDisruptive,
    RecordIdempotent.name: RecordIdempotent,
}


def _append(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


def _exists(path: str) -> bool:
    return Path(path).exists()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The recorded lines, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
