"""The connection pool: SQLAlchemy's queue pool, whose overflow connections linger a while.

``pool_size`` connections stay open; a burst may open up to ``max_overflow`` more, and the
pool never holds more than the two together, exactly as SQLAlchemy's documentation says.
One detail differs. SQLAlchemy's ``QueuePool`` closes an overflow connection the moment it
is returned while ``pool_size`` others sit idle; when the number of requests in flight
swings around ``pool_size``, as it does under any steady load above it, that is a new
server connection every few requests (measured: 0.18-0.20 per request at 16 clients, pool
5 + 10; the template's bench/RESULTS.md). This pool keeps such a connection open and idle
for ``overflow_idle_timeout`` seconds instead, hands it out before opening a new one, and
closes it once it has sat unused that long: what asyncpg's
``max_inactive_connection_lifetime`` and HikariCP's ``idleTimeout`` do.
"""

import asyncio
import logging
import time
from collections import deque
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import greenlet_spawn


class LingeringOverflowPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` whose returned overflow connections stay open for a while.

    ``overflow_idle_timeout``: seconds an overflow connection may sit idle before it is
    closed; 0 closes it on return, as SQLAlchemy's own pool does. Passed through
    ``create_async_engine(..., poolclass=LingeringOverflowPool, overflow_idle_timeout=10)``
    like the pool's other arguments.

    Counts follow SQLAlchemy's meaning: an idle overflow connection is checked in (not
    checked out) and still counts in ``overflow()``, since it is open.

    Built on the two methods through which every SQLAlchemy pool hands out and takes back
    connections (``_do_get``, ``_do_return_conn``); checkout events, pre-ping, recycling
    and invalidation apply to lingering connections as to any other.
    """

    # Not keyword-only: create_engine finds the pool's arguments in its positional ones.
    def __init__(self, creator: Any, overflow_idle_timeout: float = 10.0, **kw: Any) -> None:
        super().__init__(creator, **kw)
        if not self.echo:
            # SQLAlchemy names a pool's logger after its class's module, which would make
            # this one the app's and print "Pool recreating" at shutdown; under SQLAlchemy's
            # own name it stays quiet unless echo_pool asks.
            self.logger = logging.getLogger("sqlalchemy.pool.impl.AsyncAdaptedQueuePool")
        self.overflow_idle_timeout = overflow_idle_timeout
        # (connection, when it was returned), oldest on the left.
        self._idle_overflow: deque[tuple[ConnectionPoolEntry, float]] = deque()
        self._closer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        invalidated = record.dbapi_connection is None  # nothing open to keep
        if self.overflow_idle_timeout <= 0 or invalidated or not self._pool.full():
            super()._do_return_conn(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # returned by the garbage collector: no loop to close it later
            super()._do_return_conn(record)
            return
        self._idle_overflow.append((record, time.monotonic()))
        if self._closer is None:
            self._closer = loop.call_later(self.overflow_idle_timeout, self._close_idle_later)

    def _do_get(self) -> ConnectionPoolEntry:
        # The pool_size connections first, so that overflow left idle runs out its timeout.
        if self._idle_overflow and self._pool.empty():
            record, _ = self._idle_overflow.pop()  # the most recently used: least likely stale
            return record
        return super()._do_get()

    def _close_idle_later(self) -> None:
        """Timer callback: close, in a task, what has sat idle past the timeout."""
        self._closer = None
        task = asyncio.get_running_loop().create_task(greenlet_spawn(self._close_idle))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _close_idle(self) -> None:
        expired = time.monotonic() - self.overflow_idle_timeout
        try:
            while self._idle_overflow and self._idle_overflow[0][1] <= expired:
                record, _ = self._idle_overflow.popleft()
                try:
                    record.close()  # SQLAlchemy logs a connection that fails to close
                finally:
                    self._dec_overflow()
        finally:
            self._close_later_if_any_left()

    def _close_later_if_any_left(self) -> None:
        if self._idle_overflow and self._closer is None:
            oldest_returned = self._idle_overflow[0][1]
            delay = max(oldest_returned + self.overflow_idle_timeout - time.monotonic(), 0)
            self._closer = asyncio.get_running_loop().call_later(delay, self._close_idle_later)

    def dispose(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        while self._idle_overflow:
            record, _ = self._idle_overflow.pop()
            record.close()
        super().dispose()

    def recreate(self) -> "LingeringOverflowPool":
        pool = super().recreate()
        assert isinstance(pool, LingeringOverflowPool)
        pool.overflow_idle_timeout = self.overflow_idle_timeout
        return pool

    def checkedin(self) -> int:
        return super().checkedin() + len(self._idle_overflow)

    def checkedout(self) -> int:
        return super().checkedout() - len(self._idle_overflow)
