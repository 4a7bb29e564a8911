"""The HTTP API: liveness, readiness, Prometheus metrics and read-only views of the agent.

Every answer but ``/metrics`` is JSON, errors included: ``{"error": ..., "detail": ...}``
where the detail names what was wrong and what would be valid. The API reads the agent
only through :class:`~agent.view.AgentView`.
"""

from __future__ import annotations

__all__ = [
    "EVENTS_DEFAULT_LIMIT",
    "EVENTS_MAX_LIMIT",
    "MAX_BODY_BYTES",
    "ApiServer",
    "create_app",
]

import gzip
import json
import logging
import math
import re
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import gzip_accepted

from agent.api_errors import RequestError
from agent.api_runs import add_remediation_routes
from agent.api_status import add_status_routes
from agent.api_writes import WriteApi
from agent.bus import EventBus
from agent.metrics import build_registry
from agent.model import ConditionState
from agent.view import AgentView, RemediationView

log = logging.getLogger(__name__)
access_log = logging.getLogger(f"{__name__}.access")

MAX_BODY_BYTES: Final = 64 * 1024
"""Largest request body accepted; larger ones get 413."""
EVENTS_DEFAULT_LIMIT: Final = 100
EVENTS_MAX_LIMIT: Final = 1000

_SERVER = "nodemedic"
_MAX_SEQUENCE = 2**63 - 1  # SQLite's largest integer
_MAX_SHOWN = 64  # longest bad value echoed back in an error
_STATES = ", ".join(state.value for state in ConditionState)
_EVENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_ROUTES = (
    "/",
    "/v1/stream",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/conditions",
    "/v1/events",
    "/v1/probes",
)


def create_app(
    view: AgentView,
    writes: WriteApi | None = None,
    remediation: RemediationView | None = None,
    bus: EventBus | None = None,
) -> web.Application:
    """The aiohttp application serving ``view``.

    Args:
        view: the agent state to serve.
        writes: the write routes (commands, runs, pause), when remote control is set up.
        remediation: the remediation engine's view; adds ``/v1/runs`` and the loopback pause.
        bus: the agent's event bus; adds the status page's live stream ``/v1/stream``.

    Returns:
        An application with every route, JSON errors and a 64 KiB body limit.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
    routes = _Routes(view, remediation)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/v1/conditions", routes.conditions)
    app.router.add_get("/v1/events", routes.events)
    app.router.add_get("/v1/probes", routes.probes)
    if writes is not None:
        writes.register(app)
    if remediation is not None:
        add_remediation_routes(app, remediation, errors=RequestError)
    add_status_routes(app, view, remediation=remediation, bus=bus)
    app.on_response_prepare.append(_neutral_server_header)
    return app


class ApiServer:
    """Serves :func:`create_app` on one TCP address.

    Args:
        view: the agent state to serve.
        writes: the write routes, when remote control is set up.
        remediation: the remediation engine's view.
        bus: the agent's event bus, for the status page's live stream.
        shutdown_timeout: seconds :meth:`stop` lets in-flight requests finish.
    """

    def __init__(
        self,
        view: AgentView,
        *,
        writes: WriteApi | None = None,
        remediation: RemediationView | None = None,
        bus: EventBus | None = None,
        shutdown_timeout: float = 2.0,
    ) -> None:
        if not shutdown_timeout > 0:
            raise ValueError(f"shutdown_timeout must be positive, got {shutdown_timeout!r}")
        self._app = create_app(view, writes, remediation, bus)
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the one picked when started with port 0)."""
        if self._port is None:
            raise RuntimeError("the API server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9464``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        """Bind and start serving.

        Args:
            host: address to bind, e.g. ``127.0.0.1``.
            port: port to bind; 0 picks a free one (see :attr:`port`).

        Raises:
            RuntimeError: when already started.
            OSError: when the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError(f"the API server is already serving on {self.url}")
        runner = web.AppRunner(
            self._app,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
            access_log_class=_DebugAccessLogger,
            access_log=access_log,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        log.info("HTTP API listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the shutdown timeout, close.

        Does nothing when not started.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # aiohttp bounds the wait for in-flight requests by shutdown_timeout itself.
        await runner.cleanup()
        log.info("HTTP API on %s stopped", self.url)
        self._port = None


class _Routes:
    """The handlers, bound to one view."""

    def __init__(self, view: AgentView, remediation: RemediationView | None = None) -> None:
        self._view = view
        self._registry = build_registry(view)
        if remediation is not None:
            self._registry.register(remediation)

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: answering at all is the signal."""
        return _json({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 200 once the agent is ready, else 503 with what is missing."""
        ready, reason = self._view.readiness()
        body: dict[str, Any] = {"ready": ready} if ready else {"ready": False, "reason": reason}
        mqtt = self._view.mqtt_status()
        if mqtt is not None:
            # Ready but degraded when the broker is unreachable: events wait in the outbox.
            body["mqtt"] = mqtt.to_json()
        return _json(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition, gzip-compressed when the scraper accepts it."""
        # Rendering reads loop-owned state, so it stays on the loop; it is cheap because the
        # samples' lines are remembered per series (agent.metrics_text).
        body = self._registry.render()
        headers = {hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST, hdrs.VARY: hdrs.ACCEPT_ENCODING}
        if gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
            # Level 1: exposition text still shrinks ~10x and the loop is not held up.
            body = gzip.compress(body, compresslevel=1)
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)

    async def conditions(self, request: web.Request) -> web.Response:
        """Every tracked condition, optionally only those in one state."""
        query = _query(request, ("state",))
        conditions = self._view.conditions()
        if "state" in query:
            state = _state(query["state"])
            conditions = [condition for condition in conditions if condition.state is state]
        return _json(
            {
                "node": self._view.node_name,
                "conditions": [condition.to_json() for condition in conditions],
            }
        )

    async def events(self, request: web.Request) -> web.Response:
        """Stored events as CloudEvents, oldest first, with a cursor for the next page."""
        query = _query(request, ("type", "since", "limit"))
        event_type = _event_type(query["type"]) if "type" in query else None
        since = _since(query["since"]) if "since" in query else None
        limit = _limit(query["limit"]) if "limit" in query else EVENTS_DEFAULT_LIMIT
        events = self._view.events(type=event_type, since=since, limit=limit)
        # With no events and no cursor, 0 ("before the first event") is the cursor to poll.
        cursor = events[-1].sequence if events else (since if since is not None else 0)
        return _json(
            {
                "node": self._view.node_name,
                "events": [event.to_cloudevent() for event in events],
                "next": cursor,
            }
        )

    async def probes(self, request: web.Request) -> web.Response:
        """How every enabled probe has been doing."""
        _query(request, ())
        return _json(
            {
                "node": self._view.node_name,
                "probes": [status.to_json() for status in self._view.probe_statuses()],
            }
        )


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one the route knows."""
    params: dict[str, str] = {}
    for name in request.query:
        if name not in allowed:
            accepts = ", ".join(allowed) if allowed else "no query parameters"
            raise RequestError(
                400,
                "unknown query parameter",
                f"unknown query parameter {_shown(name)}; {request.path} accepts {accepts}",
            )
        values = request.query.getall(name)
        if len(values) > 1:
            raise RequestError(
                400,
                "invalid query parameter",
                f"{name} was given {len(values)} times; give it at most once",
            )
        params[name] = values[0]
    return params


def _bad(detail: str) -> RequestError:
    return RequestError(400, "invalid query parameter", detail)


def _state(raw: str) -> ConditionState:
    try:
        return ConditionState(raw)
    except ValueError:
        raise _bad(f"state must be one of {_STATES}, got {_shown(raw)}") from None


def _event_type(raw: str) -> str:
    # A trailing ".*" and a trailing "." both mean "every type under this prefix"; the
    # view receives the prefix ending in ".".
    wanted = raw.removesuffix("*") if raw.endswith(".*") else raw
    if _EVENT_TYPE.fullmatch(wanted) is None:
        raise _bad(
            "type must be an event type such as io.nodemedic.condition.firing or a prefix "
            f"ending in '.*' or '.' such as io.nodemedic.condition.*, got {_shown(raw)}"
        )
    return wanted


def _since(raw: str) -> int:
    if _DIGITS.fullmatch(raw) is None or len(raw) > 19 or int(raw) > _MAX_SEQUENCE:
        raise _bad(
            "since must be a non-negative integer event sequence number "
            f"(at most {_MAX_SEQUENCE}), got {_shown(raw)}"
        )
    return int(raw)


def _limit(raw: str) -> int:
    if _DIGITS.fullmatch(raw) is None or len(raw) > 4 or not 1 <= int(raw) <= EVENTS_MAX_LIMIT:
        raise _bad(f"limit must be an integer between 1 and {EVENTS_MAX_LIMIT}, got {_shown(raw)}")
    return int(raw)


def _shown(raw: str) -> str:
    """A client's value quoted for an error message, cut short if long."""
    return repr(raw if len(raw) <= _MAX_SHOWN else raw[:_MAX_SHOWN] + "...")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with a JSON error; log unexpected ones with a traceback."""
    try:
        await _check_body(request)
        return await handler(request)
    except RequestError as err:
        response = _error(err.status, err.error, err.detail)
        response.headers.update(err.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    # The one place a broad catch is right: a bug in one handler must cost one 500,
    # not an HTML page or the server.
    except Exception:
        log.exception("unhandled error answering %s %s", request.method, request.path)
        return _error(
            500,
            "internal server error",
            f"the agent failed to answer {request.method} {request.path}; its log has the cause",
        )


async def _check_body(request: web.Request) -> None:
    """Refuse request bodies over the limit before any handler sees them."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large(length)
    if request.body_exists:
        # Chunked bodies have no length up front; read() stops past client_max_size.
        await request.read()


def _too_large(length: int | None) -> RequestError:
    got = f", got {length}" if length is not None else ""
    return RequestError(
        413,
        "request body too large",
        f"request bodies may be at most {MAX_BODY_BYTES} bytes{got}",
    )


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        return _error(
            404,
            "not found",
            f"no resource at {_shown(request.path)}; resources: {', '.join(_ROUTES)}",
        )
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = _error(
            405,
            "method not allowed",
            f"{request.method} is not allowed on {request.path}; allowed: {allowed}",
        )
        response.headers[hdrs.ALLOW] = allowed
        return response
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        too_large = _too_large(None)
        return _error(too_large.status, too_large.error, too_large.detail)
    return _error(exc.status, exc.reason.lower(), exc.text or exc.reason)


def _error(status: int, error: str, detail: str) -> web.Response:
    return _json({"error": error, "detail": detail}, status=status)


def _json(payload: dict[str, Any], *, status: int = 200) -> web.Response:
    try:
        text = json.dumps(payload, allow_nan=False, default=str)
    except ValueError:
        # NaN and infinity are not JSON; a reading that is not a number shows as null.
        text = json.dumps(_finite(payload), allow_nan=False, default=str)
    return web.Response(
        body=text.encode(), status=status, content_type="application/json", charset="utf-8"
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


async def _neutral_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Do not advertise the aiohttp and Python versions to whoever can reach the port.
    response.headers[hdrs.SERVER] = _SERVER


class _DebugAccessLogger(AbstractAccessLogger):
    """Access log at debug level: a scrape every few seconds is not news."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s -> %d in %.3f s", request.method, request.path_qs, response.status, time
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)
