"""Admission to the pool: requests take connections in the order they asked for them.

SQLAlchemy's pool lets a request that arrives just as a connection is returned take it
ahead of requests already waiting, so under load a few unlucky requests wait many times
longer than the rest. A FIFO semaphore (asyncio's is fair) queues requests in front of the
pool instead, and lets the app count and time the wait.

It also fails fast: after a connect failed, requests fail at once for a moment instead of
each waiting for its own connect to time out, queued behind the others; their 503 names
the failure that opened the window (connection_failures.py).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from .connection_failures import Failure

logger = logging.getLogger(__name__)

# After a failed connect, requests fail at once for this long (seconds).
FAIL_FAST_SECONDS = 1.0


class PoolBusyError(Exception):
    """No connection became free within ``pool_timeout``."""


class DatabaseUnreachableError(Exception):
    """A connect failed a moment ago, for the reason ``failure`` names; not tried again yet."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"a connect failed a moment ago: {failure.kind}")
        self.failure = failure


class AdmissionObserver(Protocol):
    """Told of the queue's events, to measure them; none of these may block."""

    def waiting_changed(self, waiting: int) -> None:
        """``waiting`` requests are queued for a connection now."""

    def admitted(self, waited: float) -> None:
        """A request got its turn at the pool after ``waited`` seconds (0.0: no queue)."""

    def timed_out(self) -> None:
        """A request waited ``timeout`` seconds in vain: it gets PoolBusyError (a 503)."""


class Admission:
    """A first-come, first-served queue of at most ``capacity`` requests at a time.

    ``capacity`` is the pool's, in connections (None: no limit); ``timeout`` and
    ``wait_warning`` are in seconds. ``admit()`` raises ``PoolBusyError`` after waiting
    ``timeout``, and ``DatabaseUnreachableError`` while failing fast. ``observer``, if set,
    is told of each wait and its end.
    """

    def __init__(self, capacity: int | None, timeout: float, wait_warning: float) -> None:
        # No capacity: without a pool (NullPool) every request opens its own connection.
        self._slots = asyncio.Semaphore(capacity) if capacity is not None else None
        self.capacity = capacity
        self.timeout = timeout
        self.wait_warning = wait_warning
        self.waiting = 0
        self.admitted = 0
        self._fail_fast_until = 0.0
        self._last_failure = Failure("connection failure", "a connect failed")
        self.observer: AdmissionObserver | None = None

    @property
    def full(self) -> bool:
        return self.capacity is not None and self.admitted >= self.capacity

    def note_unreachable(self, failure: Failure) -> None:
        """Called when a connect failed: fail fast for a moment rather than queue."""
        self._fail_fast_until = time.monotonic() + FAIL_FAST_SECONDS
        self._last_failure = failure

    def note_reachable(self) -> None:
        """Called when a connect succeeded elsewhere (a replica's check): no failing fast."""
        self._fail_fast_until = 0.0

    def raise_if_recently_unreachable(self) -> None:
        if time.monotonic() < self._fail_fast_until:
            raise DatabaseUnreachableError(self._last_failure)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the pool's connections' worth of capacity for the block."""
        self.raise_if_recently_unreachable()
        if self._slots is None:  # nothing to queue for: no wait
            if self.observer is not None:
                self.observer.admitted(0.0)
            yield
            return
        if self._slots.locked():
            waited = await self._wait_for(self._slots)
            # Again after the wait: a request queued behind a failed connect fails at once.
            try:
                self.raise_if_recently_unreachable()
            except DatabaseUnreachableError:
                self._slots.release()
                raise
        else:  # a slot is free and nobody is queued: no timer needed
            await self._slots.acquire()
            waited = 0.0
        if self.observer is not None:
            self.observer.admitted(waited)
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1
            self._slots.release()

    async def _wait_for(self, slots: asyncio.Semaphore) -> float:
        """Queue for a slot; the seconds waited."""
        started = time.monotonic()
        self._count_waiting(+1)
        try:
            async with asyncio.timeout(self.timeout):
                await slots.acquire()
        except TimeoutError:
            if self.observer is not None:
                self.observer.timed_out()
            raise PoolBusyError(f"no connection was free within {self.timeout:g} s") from None
        finally:
            self._count_waiting(-1)
        waited = time.monotonic() - started
        if waited > self.wait_warning:
            logger.warning("A request waited %.2f s for a database connection", waited)
        return waited

    def _count_waiting(self, change: int) -> None:
        self.waiting += change
        if self.observer is not None:
            self.observer.waiting_changed(self.waiting)
