"""The API's refusals: raised by any handler, answered as JSON by the error middleware."""

from __future__ import annotations

__all__ = ["RequestError"]

from collections.abc import Mapping


class RequestError(Exception):
    """A request the API refuses; the middleware answers ``{"error", "detail"}`` with ``status``.

    Attributes:
        status: the HTTP status.
        error: a short machine-readable reason.
        detail: what was wrong and what would be valid.
        headers: extra response headers (``WWW-Authenticate`` on a 401).
    """

    def __init__(
        self, status: int, error: str, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
