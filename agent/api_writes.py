"""The API's writes: signed commands, and token-authorised runs, approvals and pauses.

``POST /v1/commands`` takes a signed command (the same envelope as over MQTT), which
its signature authorises. The other writes need ``Authorization: Bearer <token>``
naming a token of ``remote.api_tokens``; the token's policy decides what it may do:

=================================  ==================  ===========================
route                              body                needs
=================================  ==================  ===========================
``POST /v1/runs``                  playbook, target,   the playbook (and params)
                                   params              in the token's policy
``POST /v1/runs/{id}/approve``     (none)              ``approve: true``
``POST /v1/pause``                 (none)              ``pause: true``
``DELETE /v1/pause``               (none)              ``pause: true``
=================================  ==================  ===========================

No token or an unknown one is 401, a token without the permission 403, a request that
was accepted 202 (with the run id for a run). Every outcome is also an event.
"""

from __future__ import annotations

__all__ = ["WriteApi"]

import json
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from agent.api_errors import RequestError
from agent.commands import CommandKind, CommandRejectedError, Rejection, check_policy
from agent.config_remote import ApiTokenConfig, RemoteConfig
from agent.remote import CommandReply, ControlRequest, IncomingCommand, RemoteCommands

_STATUS: Final[dict[str, int]] = {
    Rejection.TOO_LARGE: 413,
    Rejection.MALFORMED: 400,
    Rejection.INVALID_PARAMS: 400,
    Rejection.UNKNOWN_KEY: 401,
    Rejection.BAD_SIGNATURE: 401,
    Rejection.EXPIRED: 409,
    Rejection.NOT_YET_VALID: 409,
    Rejection.REPLAYED: 409,
    Rejection.WRONG_NODE: 421,
    Rejection.NOT_ALLOWED: 403,
    "unknown_playbook": 404,
    "unknown_run": 404,
    "store_unavailable": 503,
}


class _RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    playbook: StrictStr = Field(min_length=1, max_length=128)
    target: StrictStr | None = Field(default=None, min_length=1, max_length=512)
    params: dict[StrictStr, StrictStr | StrictInt | StrictBool] = Field(
        default_factory=dict, max_length=32
    )


class WriteApi:
    """The write routes, over the agent's :class:`~agent.remote.RemoteCommands`.

    Args:
        commands: verifies and carries out commands.
        remote: the ``remote`` section (the API tokens and their policies).
    """

    def __init__(self, commands: RemoteCommands, remote: RemoteConfig) -> None:
        self._commands = commands
        self._remote = remote

    def register(self, app: web.Application) -> None:
        """Add the write routes to ``app``."""
        app.router.add_post("/v1/commands", self.post_command)
        app.router.add_post("/v1/runs", self.post_run)
        app.router.add_post("/v1/runs/{run_id}/approve", self.approve)
        app.router.add_post("/v1/pause", self.pause)
        app.router.add_delete("/v1/pause", self.resume)

    async def post_command(self, request: web.Request) -> web.Response:
        """Carry out a signed command."""
        payload = await request.read()
        reply = self._commands.handle(IncomingCommand(payload, via="http"))
        if reply is None:  # only retained MQTT messages go unanswered
            raise _error(500, "no_reply", "the command produced no reply")
        return _answer(reply)

    async def post_run(self, request: web.Request) -> web.Response:
        """Request a run of a playbook."""
        token = self._authorise(request)
        body = await _json_body(request)
        try:
            run = _RunBody.model_validate(body)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise _error(400, "invalid_request", f"{where}: {first['msg']}") from None
        return self._carry_out(
            request,
            token,
            CommandKind.RUN,
            playbook=run.playbook,
            target=run.target,
            params=run.params,
        )

    async def approve(self, request: web.Request) -> web.Response:
        """Approve a waiting run."""
        token = self._authorise(request)
        return self._carry_out(
            request, token, CommandKind.APPROVE, run_id=request.match_info["run_id"]
        )

    async def pause(self, request: web.Request) -> web.Response:
        """Pause remediation on this node."""
        return self._carry_out(request, self._authorise(request), CommandKind.PAUSE)

    async def resume(self, request: web.Request) -> web.Response:
        """Resume remediation on this node."""
        return self._carry_out(request, self._authorise(request), CommandKind.RESUME)

    def _authorise(self, request: web.Request) -> ApiTokenConfig:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _error(
                401, "unauthorized", "send Authorization: Bearer <token> (remote.api_tokens)"
            )
        found = self._remote.token_for(token.strip())
        if found is None:
            raise _error(401, "unauthorized", "the bearer token is not one of remote.api_tokens")
        return found

    def _carry_out(
        self,
        request: web.Request,
        token: ApiTokenConfig,
        kind: CommandKind,
        *,
        playbook: str | None = None,
        target: str | None = None,
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> web.Response:
        via = f"http:{request.method} {request.path}"
        control = ControlRequest(
            kind=kind,
            principal=f"token {token.name}",
            issuer=token.name,
            playbook=playbook,
            target=target,
            params=params or {},
            run_id=run_id,
        )
        try:
            check_policy(
                kind,
                playbook=playbook,
                params=params or {},
                run_id=run_id,
                policy=token.policy(),
                who=f"token {token.name!r}",
            )
        except CommandRejectedError as err:
            self._commands.refuse(err.reason.value, err.detail, IncomingCommand(b"", via), control)
            raise _error(_STATUS.get(err.reason, 400), err.reason.value, err.detail) from None
        return _answer(self._commands.carry_out(control, IncomingCommand(b"", via=via)))


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _error(400, "invalid_json", f"the body is not JSON: {err}") from None


def _answer(reply: CommandReply) -> web.Response:
    status = 202 if reply.ok else _STATUS.get(reply.reason, 409)
    return web.Response(status=status, body=reply.to_json(), content_type="application/json")


def _error(status: int, error: str, detail: str) -> RequestError:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return RequestError(status, error, detail, headers=headers)
