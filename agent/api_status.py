"""The status page routes: ``GET /`` (HTML) and ``GET /v1/stream`` (server-sent events).

:func:`add_status_routes` also starts, with the application, the two tasks the page
needs: the history sampler (a chart point every :data:`~agent.history.HISTORY_INTERVAL`)
and, when a bus is given, the stream hub's bus follower. Both stop with the application;
open streams are ended when the server begins to shut down, so they never hold up the
shutdown grace.
"""

from __future__ import annotations

__all__ = ["PAGE_EVENTS", "PAGE_RUNS", "add_status_routes"]

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import psutil
from aiohttp import hdrs, web

from agent import __version__
from agent.api_errors import RequestError
from agent.api_stream import HEARTBEAT, StreamHub
from agent.bus import EventBus
from agent.errors import StoreError
from agent.history import HISTORY_INTERVAL, MetricHistory, sample_history
from agent.status_page import CONTENT_SECURITY_POLICY, PageData, render_page
from agent.status_summary import NodeSummary, node_summary
from agent.view import AgentView, RemediationView

log = logging.getLogger(__name__)

PAGE_EVENTS: Final = 25
"""Events the page lists when it is loaded (live ones are added on top, up to 50)."""
PAGE_RUNS: Final = 10
"""Remediation runs the page shows with their decision records."""

_HEADERS: Final = {
    hdrs.CONTENT_SECURITY_POLICY: CONTENT_SECURITY_POLICY,
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
    hdrs.CACHE_CONTROL: "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def add_status_routes(
    app: web.Application,
    view: AgentView,
    *,
    remediation: RemediationView | None,
    bus: EventBus | None,
    heartbeat: float = HEARTBEAT,
    interval: float = HISTORY_INTERVAL,
    clock: Callable[[], float] = time.time,
) -> StreamHub | None:
    """Add ``GET /`` and, with a bus, ``GET /v1/stream`` to ``app``.

    Args:
        app: the API application.
        view: the agent's state.
        remediation: the remediation engine, None when remediation is off.
        bus: the agent's event bus; without one the page has no live updates.
        heartbeat: seconds between heartbeat comments on an idle stream.
        interval: seconds between chart points.
        clock: epoch seconds now.

    Returns:
        The stream hub (None without a bus).
    """
    page = _StatusPage(view, remediation, clock, stream=bus is not None)
    hub = StreamHub(view, page.summary, heartbeat=heartbeat) if bus is not None else None
    app.router.add_get("/", page.handle)
    if hub is not None:
        app.router.add_get("/v1/stream", hub.handle)

    async def tasks(app: web.Application) -> AsyncIterator[None]:
        recorded = hub.publish_sample if hub is not None else None
        running = [
            asyncio.create_task(
                sample_history(
                    page.history, view, interval=interval, clock=clock, recorded=recorded
                ),
                name="status-history",
            )
        ]
        if hub is not None and bus is not None:
            running.append(asyncio.create_task(hub.follow(bus), name="status-stream"))
        yield
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def end_streams(app: web.Application) -> None:
        if hub is not None:
            hub.close()

    app.cleanup_ctx.append(tasks)
    app.on_shutdown.append(end_streams)
    return hub


class _StatusPage:
    """The page's state (its history) and its handler."""

    def __init__(
        self,
        view: AgentView,
        remediation: RemediationView | None,
        clock: Callable[[], float],
        *,
        stream: bool,
    ) -> None:
        self._view = view
        self._remediation = remediation
        self._clock = clock
        self._stream = stream
        self.history = MetricHistory()
        try:
            self._started = psutil.Process().create_time()
        except psutil.Error:
            self._started = clock()

    def summary(self) -> NodeSummary:
        """The node at a glance, now."""
        return node_summary(
            self._view,
            self._remediation,
            version=__version__,
            started=self._started,
            now=self._clock(),
        )

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /``: the status page."""
        if set(request.query):
            raise RequestError(400, "unknown query parameter", "/ takes no query parameters")
        now = self._clock()
        data = PageData(
            summary=self.summary(),
            history=self.history,
            now=now,
            runs=self._runs(),
            events=list(reversed(self._view.events(type=None, since=None, limit=PAGE_EVENTS))),
            stream=self._stream,
        )
        return web.Response(
            text=render_page(data), content_type="text/html", charset="utf-8", headers=_HEADERS
        )

    def _runs(self) -> list[dict[str, Any]]:
        if self._remediation is None:
            return []
        try:
            runs = self._remediation.runs(limit=PAGE_RUNS)
            return [self._remediation.run(run["id"]) or run for run in runs]
        except StoreError as err:
            # The rest of the page is still worth showing.
            log.warning("status page: cannot read the remediation journal: %s", err)
            return []
