"""The remediation engine as remote commands see it: :class:`~agent.remote.RemoteControl`.

The runtime composes it; it translates the engine's refusals into the reasons a reply
carries (``unknown_playbook``, ``not_remote``, ``unknown_run``...).
"""

from __future__ import annotations

__all__ = ["EngineControl"]

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from agent.remote import RemoteActionError

if TYPE_CHECKING:
    from remediations.service import RemediationService

T = TypeVar("T")


class EngineControl:
    """Carries out verified commands on the remediation service."""

    def __init__(self, service: RemediationService) -> None:
        self._service = service

    def run_playbook(
        self, playbook: str, target: str | None, params: Mapping[str, Any], *, by: str
    ) -> str:
        """Request a run; the params fill the playbook's ``{labels.NAME}`` placeholders."""
        labels = {name: str(value) for name, value in params.items()}
        return self._call(
            lambda: self._service.request(playbook, target, source=f"remote: {by}", labels=labels)
        )

    def approve(self, run_id: str, *, by: str) -> None:
        """Approve a waiting run."""
        self._call(lambda: self._service.approve(run_id, by=by))

    def set_paused(
        self, paused: bool, *, by: str, until: float | None, fleet_issued_at: int | None = None
    ) -> None:
        """Pause or resume; a fleet pause lapses at ``until``."""
        if until is not None:
            lapse = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
            reason = f"remote command (lapses {lapse})"
        else:
            reason = "remote command"
        self._service.set_paused(
            paused, by=by, reason=reason, until=until, fleet_issued_at=fleet_issued_at
        )

    def fleet_pause_issued(self) -> int | None:
        """The newest retained fleet pause applied, from the journal."""
        return self._service.fleet_pause_issued()

    def reset_breaker(self, playbook: str, *, by: str) -> None:
        """Close a playbook's breaker."""
        self._call(lambda: self._service.reset_breaker(playbook, by=by))

    def status(self) -> Mapping[str, Any]:
        """The engine's status summary."""
        return self._service.status()

    @staticmethod
    def _call(work: Callable[[], T]) -> T:
        from remediations.engine import RemediationRequestError

        try:
            return work()
        except RemediationRequestError as err:
            raise RemoteActionError(_reason(str(err)), str(err)) from err


def _reason(message: str) -> str:
    if message.startswith("no playbook named"):
        return "unknown_playbook"
    if "does not allow remote runs" in message:
        return "not_remote"
    if "not waiting for an approval" in message or "can no longer be approved" in message:
        return "unknown_run"
    return "refused"
