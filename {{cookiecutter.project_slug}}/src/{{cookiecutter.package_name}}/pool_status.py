"""The pool's numbers, for ``/health/db``, the logs and the load test.

SQLAlchemy's pool counts what it holds; the app adds what the pool cannot know: requests
waiting for a connection (admission.py), and connections opened without a pool (NullPool).
"""

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, QueuePool


class ConnectionCounter:
    """Connections the engine has opened and closed so far, from its pool events."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.opened = self.closed = 0
        event.listen(engine.sync_engine, "connect", self._count_opened)
        event.listen(engine.sync_engine, "close", self._count_closed)

    def _count_opened(self, *_: object) -> None:
        self.opened += 1

    def _count_closed(self, *_: object) -> None:
        self.closed += 1


def pool_capacity(pool: Pool) -> int | None:
    """How many connections requests may use at once: ``pool_size + max_overflow``.

    None when nothing limits it: ``max_overflow=-1``, or no pool at all (NullPool).
    """
    if not isinstance(pool, QueuePool) or pool._max_overflow == -1:  # no public accessor
        return None
    return pool.size() + pool._max_overflow


def pool_status(pool: Pool, connections: ConnectionCounter, waiting: int) -> dict[str, int]:
    """The pool's numbers right now, in connections (``waiting``: requests).

    ``overflow`` is the number of open connections beyond ``size`` (SQLAlchemy's own
    counter starts at minus the pool size; it is clamped at 0 here). ``waiting`` counts
    requests queued for a connection, which SQLAlchemy itself does not report.
    """
    if not isinstance(pool, QueuePool):  # NullPool: every connection is in use or gone
        open_now = connections.opened - connections.closed
        return {"size": 0, "checked_out": open_now, "checked_in": 0, "overflow": 0,
                "max_overflow": -1, "waiting": 0}  # fmt: skip
    return {
        "size": pool.size(),
        "checked_out": pool.checkedout(),
        "checked_in": pool.checkedin(),
        "overflow": max(pool.overflow(), 0),
        "max_overflow": pool._max_overflow,  # no public accessor
        "waiting": waiting,
    }


def pool_name(url: URL) -> str:
    """The pool's name in logs and reports (``/health/db``): ``host:port/database``, as
    OpenTelemetry names a pool that has no name of its own (several hosts of a failover
    URL joined by commas); for SQLite, the database file (``:memory:`` for none)."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    hosts = url.query.get("host")
    if hosts and not url.host:  # ?host=a:5432&host=b:5432
        listed = [hosts] if isinstance(hosts, str) else list(hosts)
        server = ",".join(host if ":" in host else f"{host}:{url.port or 5432}" for host in listed)
    else:
        server = f"{url.host or 'localhost'}:{url.port or 5432}"
    return f"{server}/{url.database}"
