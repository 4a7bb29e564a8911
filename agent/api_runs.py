"""Remediation reads of the HTTP API: runs, their decision records and the engine's state.

``GET /v1/runs`` (``?limit=&playbook=``), ``GET /v1/runs/{id}`` and ``GET /v1/remediation``.
Writes (runs, approvals, the pause switch) need an API token: see :mod:`agent.api_writes`.
"""

from __future__ import annotations

__all__ = ["add_remediation_routes"]

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agent.view import RemediationView

_RUN_ID = re.compile(r"[0-9A-Z]{26}")
_PLAYBOOK = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_MAX_RUNS = 1000

ErrorFactory = Callable[[int, str, str], Exception]


def add_remediation_routes(
    app: web.Application, remediation: RemediationView, *, errors: ErrorFactory
) -> None:
    """Add the remediation routes to ``app``; ``errors`` builds the API's JSON errors."""
    routes = _RunRoutes(remediation, errors)
    app.router.add_get("/v1/runs", routes.runs)
    app.router.add_get("/v1/runs/{run_id}", routes.run)
    app.router.add_get("/v1/remediation", routes.status)


class _RunRoutes:
    def __init__(self, remediation: RemediationView, errors: ErrorFactory) -> None:
        self._remediation = remediation
        self._errors = errors

    async def runs(self, request: web.Request) -> web.Response:
        """The newest runs, newest first."""
        unknown = set(request.query) - {"limit", "playbook"}
        if unknown:
            raise self._errors(
                400,
                "unknown query parameter",
                f"/v1/runs accepts limit and playbook, not {sorted(unknown)}",
            )
        raw = request.query.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= _MAX_RUNS:
            raise self._errors(
                400,
                "invalid query parameter",
                f"limit must be an integer between 1 and {_MAX_RUNS}",
            )
        playbook = request.query.get("playbook")
        if playbook is not None and _PLAYBOOK.fullmatch(playbook) is None:
            raise self._errors(400, "invalid query parameter", "playbook must be a playbook name")
        return _json({"runs": self._remediation.runs(limit=int(raw), playbook=playbook)})

    async def run(self, request: web.Request) -> web.Response:
        """One run's decision record."""
        run_id = request.match_info["run_id"]
        if _RUN_ID.fullmatch(run_id) is None:
            raise self._errors(400, "invalid run id", "a run id is 26 characters of 0-9 and A-Z")
        record = self._remediation.run(run_id)
        if record is None:
            raise self._errors(404, "not found", f"no run {run_id} in the journal")
        return _json(record)

    async def status(self, request: web.Request) -> web.Response:
        """Pause state, playbooks, breakers."""
        return _json(self._remediation.status())


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(payload, default=str), status=status, content_type="application/json"
    )
