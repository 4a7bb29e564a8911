"""Reconnect pacing: capped exponential backoff with equal jitter."""

from __future__ import annotations

__all__ = ["Backoff"]

import random
from collections.abc import Callable


class Backoff:
    """Capped exponential backoff with "equal jitter".

    The n-th delay is drawn from ``[cap/2, cap]`` where ``cap = min(maximum, initial * 2**n)``.
    Unlike full jitter (``[0, cap]``), a retry is never almost immediate, so a fleet that
    lost its broker at once spreads out without any node hammering it.
    """

    def __init__(
        self, *, initial: float, maximum: float, rng: Callable[[], float] = random.random
    ) -> None:
        """Start at attempt 0.

        Raises:
            ValueError: if ``initial`` is not positive or ``maximum`` is below it.
        """
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial} and {maximum}")
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds; each call doubles the cap."""
        cap = min(self._maximum, self._initial * float(2 ** min(self._attempt, 62)))
        self._attempt += 1
        return cap / 2 + self._rng() * cap / 2

    def reset(self) -> None:
        """Start again from ``initial`` (after a connection that worked)."""
        self._attempt = 0
