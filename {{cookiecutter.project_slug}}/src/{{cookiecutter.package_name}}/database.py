"""The pooled async engine, its session factory and the per-request session dependency."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
{%- if cookiecutter.use_alembic %}
from pathlib import Path
{%- endif %}
from typing import Annotated, Any

{% if cookiecutter.use_alembic -%}
from alembic import command
from alembic.config import Config
{% endif -%}
from fastapi import Depends, Request
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import {% if cookiecutter.use_alembic %}URL, Connection{% else %}URL{% endif %}, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, QueuePool

from . import pre_ping
from .admission import Admission, DatabaseUnreachableError, PoolBusyError
from .connection_budget import warn_if_over_budget
from .pool import LingeringOverflowPool
from .settings import Settings

logger = logging.getLogger(__name__)

# How "the database cannot be used" surfaces: SQLAlchemy's errors, the app's own pool
# admission timeout, and the raw OSErrors (refused, unknown host, timed out) that asyncpg
# raises while it connects.
DATABASE_ERRORS = (SQLAlchemyError, PoolBusyError, DatabaseUnreachableError, OSError)

# After a failed connect, requests fail at once for this long instead of each waiting for
# its own connect to time out, while queued behind the others.
FAIL_FAST_SECONDS = 1.0

# Any fixed number: workers starting together take this lock in turn to create tables.
SCHEMA_LOCK_ID = 7_241_857

# What the engine for writes switches its connections to: each database's own default.
TRANSACTION_ISOLATION = {"postgresql": "READ COMMITTED", "sqlite": "SERIALIZABLE"}


def pool_options(url: URL, settings: Settings) -> dict[str, Any]:
    """The pool for ``url``, configured from the settings.

    SQLAlchemy chooses the pool class from the URL (``Dialect.get_pool_class``): asyncpg
    and file SQLite databases get a queue pool, ``LingeringOverflowPool`` (see pool.py),
    and every setting applies.

    In-memory SQLite is the exception: each new connection would open a new, empty
    database. SQLAlchemy's choice for it, ``StaticPool``, hands its one connection to all
    sessions at once, so concurrent requests would interleave their transactions on it.
    Instead it gets a queue pool of exactly one connection that is never recycled or
    replaced: one database, one request at a time, the wait bounded by ``pool_timeout``.
    """
    in_memory = not issubclass(url.get_dialect().get_pool_class(url), QueuePool)
    if in_memory:
        return {
            "poolclass": AsyncAdaptedQueuePool,
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": settings.pool_timeout,
            "pool_recycle": -1,
        }
    if settings.pool_class == "null":
        return {"poolclass": NullPool}
    return {
        "poolclass": LingeringOverflowPool,
        "overflow_idle_timeout": settings.pool_overflow_idle_timeout,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
    }


def connect_args(url: URL, settings: Settings) -> dict[str, Any]:
    """Timeouts for the driver, so that no request waits on the database without bound."""
    if url.get_backend_name() == "sqlite":
        # sqlite3's busy timeout: how long a writer waits for another writer's lock.
        return {"timeout": settings.statement_timeout or settings.pool_timeout}
    args: dict[str, Any] = {"timeout": settings.connect_timeout}
    server_settings = {"application_name": "{{ cookiecutter.package_name }}"}
    if settings.statement_timeout:
        # The client gives up a little after the server would have, in case the server
        # itself has gone silent.
        args["command_timeout"] = settings.statement_timeout + settings.connect_timeout
    if settings.connection_pooler == "pgbouncer":
        # Transaction pooling runs each transaction on whichever server connection is free,
        # so no prepared statement may outlive one: asyncpg's cache and SQLAlchemy's off.
        args |= {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        # PgBouncer refuses startup parameters it does not know, statement_timeout among
        # them: set that on the role instead (ALTER ROLE ... SET statement_timeout).
    elif settings.statement_timeout:
        # The server cancels a statement past it, and the connection stays usable.
        server_settings["statement_timeout"] = str(int(settings.statement_timeout * 1000))
    return args | {"server_settings": server_settings}


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


def use_sqlite_write_ahead_log(dbapi_connection: Any, _: object) -> None:
    """WAL lets readers go on while one writer writes; a file database keeps the mode."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


{% if cookiecutter.use_alembic -%}
def upgrade_to_head(connection: Connection) -> None:
    """Apply the Alembic migrations that this database has not seen yet."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


{% endif -%}
async def create_schema(connection: AsyncConnection, metadata: MetaData) -> None:
    if connection.dialect.name == "postgresql":
        # Without it, workers starting together race to create the same tables.
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_ID})"))
{%- if cookiecutter.use_alembic %}
    await connection.run_sync(upgrade_to_head)
{%- else %}
    await connection.run_sync(metadata.create_all)
{%- endif %}


class Database:
    """The engine with its pool, the session factory, and the pool's numbers.

    Built once per process, in the app's lifespan, so that every worker process has its
    own pool and nothing pooled crosses a fork.
    """

    def __init__(self, settings: Settings, metadata: MetaData) -> None:
        self.settings = settings
        self.metadata = metadata
        self.schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._fail_fast_until = 0.0
        # str() of a URL masks the password, so ``self.url`` is safe to log.
        self.url = make_url(settings.database_url.get_secret_value())
        # One pool, two ways to use it. Its connections are in autocommit mode, so a read
        # is one round trip with nothing to begin, roll back or switch back afterwards;
        # ``engine`` (sessions, schema changes) switches the connection it takes to a
        # transaction at the database's default isolation level.
        self.read_engine = create_async_engine(
            self.url,
            isolation_level="AUTOCOMMIT",
            connect_args=connect_args(self.url, settings),
            # Error messages would otherwise quote the values of a failed statement.
            hide_parameters=True,
            **pool_options(self.url, settings),
        )
        self.engine = self.read_engine.execution_options()
        # An in-memory SQLite database has no server to drop it, and its one connection is
        # the database: never replaced.
        if settings.pool_pre_ping and isinstance(self.engine.pool, LingeringOverflowPool):
            pre_ping.install(self.read_engine.sync_engine, self.engine.sync_engine)
        # After pre_ping's hook, so that its ping runs before the switch to a transaction.
        self.engine.update_execution_options(
            isolation_level=TRANSACTION_ISOLATION[self.url.get_backend_name()]
        )
        self.admission = Admission(self.capacity, settings.pool_timeout, settings.pool_wait_warning)
        # expire_on_commit=False: objects stay readable after commit, while the response is
        # built. close_resets_only=False: a closed session refuses further use instead of
        # quietly checking out a new connection that nothing would return.
        self.session_factory = async_sessionmaker(
            self.engine, expire_on_commit=False, close_resets_only=False
        )
        self.connections_opened = self.connections_closed = 0
        event.listen(self.engine.sync_engine, "connect", self._count_connection)
        event.listen(self.engine.sync_engine, "close", self._count_closed_connection)
        event.listen(self.engine.sync_engine, "invalidate", self._log_invalidation)
        if is_sqlite_file(self.url):
            event.listen(self.engine.sync_engine, "connect", use_sqlite_write_ahead_log)

    def _count_connection(self, *_: object) -> None:
        self.connections_opened += 1

    def _count_closed_connection(self, *_: object) -> None:
        self.connections_closed += 1

    def _log_invalidation(self, _: object, __: object, error: BaseException | None) -> None:
        # A dropped connection (server restart, failover, idle reaping) is replaced.
        reason = type(error).__name__ if error is not None else "invalidated"
        logger.warning("A pooled database connection was discarded: %s", reason)

    @property
    def capacity(self) -> int | None:
        """How many requests use the database at once: ``pool_size + max_overflow``.

        None when nothing limits it: ``max_overflow=-1``, or no pool at all (NullPool).
        Requests beyond it queue in arrival order for at most ``pool_timeout`` seconds.
        """
        pool = self.engine.pool
        if not isinstance(pool, QueuePool) or pool._max_overflow == -1:  # no public accessor
            return None
        return pool.size() + pool._max_overflow

    def pool_status(self) -> dict[str, int]:
        """The pool's numbers right now.

        ``overflow`` is the number of open connections beyond ``size`` (SQLAlchemy's own
        counter starts at minus the pool size; it is clamped at 0 here). ``waiting`` counts
        requests queued for a connection, which SQLAlchemy itself does not report.
        """
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):  # NullPool: every connection is in use or gone
            opened_now = self.connections_opened - self.connections_closed
            return {"size": 0, "checked_out": opened_now, "checked_in": 0, "overflow": 0,
                    "max_overflow": -1, "waiting": 0}  # fmt: skip
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "checked_in": pool.checkedin(),
            "overflow": max(pool.overflow(), 0),
            "max_overflow": pool._max_overflow,  # no public accessor
            "waiting": self.admission.waiting,
        }

    @property
    def saturated(self) -> bool:
        """Every connection that requests may use is in use."""
        return self.admission.full

    def note_unreachable(self) -> None:
        """Called when a connect failed: fail fast for a moment rather than queue."""
        self._fail_fast_until = time.monotonic() + FAIL_FAST_SECONDS

    def raise_if_recently_unreachable(self) -> None:
        if time.monotonic() < self._fail_fast_until:
            raise DatabaseUnreachableError("the database failed to answer a moment ago")

    async def check(self) -> None:
        """Raise one of ``DATABASE_ERRORS`` unless the database answers and has its tables.

        The first check that reaches the database creates the tables and compares the pool
        with the server's connection limit, so an app that started while the database was
        down does both once it is back.
        """
        async with self.engine.begin() as connection:
            if self.schema_ready:
                await connection.execute(text("SELECT 1"))
            else:
                await self._prepare(connection)

    async def _prepare(self, connection: AsyncConnection) -> None:
        async with self._schema_lock:
            if not self.schema_ready:
                await create_schema(connection, self.metadata)
                await warn_if_over_budget(connection, self.settings)
                self.schema_ready = True

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that queues for its connection with the requests, in arrival order.

        For background tasks and streaming responses, which must not use the request's.
        """
        async with self._admitted(), self.session_factory() as session:
            yield session

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading, in autocommit mode: one round trip per statement.

        No transaction is begun or rolled back around the statements, so two of them may
        see different snapshots and nothing can be written; use a session for that. The
        connection goes back to the pool when the block ends, before the response is
        built from the rows.
        """
        async with self._admitted(), self.read_engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """Wait for a turn at the pool, in arrival order, and make sure the tables exist."""
        self.raise_if_recently_unreachable()
        async with self.admission.admit():
            # Again after the wait: a request queued behind a failed connect fails at once.
            self.raise_if_recently_unreachable()
            if not self.schema_ready:  # the database was down when the app started
                await self.check()
            yield

    async def dispose(self) -> None:
        checked_out = self.pool_status()["checked_out"]
        await self.read_engine.dispose()
        logger.info("Database engine disposed (%d connection(s) still checked out)", checked_out)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session, and so one transaction, per request.

    Unit of work: the transaction commits when the endpoint returns and rolls back when it
    raises. Used through ``SessionDep``, whose function scope (FastAPI 0.121 and later)
    runs the commit before the response is sent: a commit that fails becomes an error
    response, never a 2xx for data that was not stored, and the connection is back in the
    pool before the client reads the response.

    The session is closed when the endpoint returns: a background task or a streaming
    response must open its own, ``async with database.session() as session``.
    """
    database: Database = request.app.state.database
    async with database.session() as session:
        yield session
        await session.commit()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_database(request: Request) -> Database:
    # async: FastAPI would run a plain function in a worker thread.
    return request.app.state.database


DatabaseDep = Annotated[Database, Depends(get_database)]
