"""The database of one process: its engine and pool, its read replicas' pools
(replicas.py), sessions, and the schema check.

Endpoint code does not use this module: it takes a session from ``SessionDep`` or
``ReadSessionDep`` (dependencies.py). Background tasks and streaming responses use
``database.session()``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .admission import Admission, DatabaseUnreachableError, PoolBusyError
from .connection_budget import warn_if_over_budget
from .engine import create_engines
from .pool_status import ConnectionCounter, pool_capacity, pool_name, pool_status
from .pre_ping import RETRY_READS
from .read_session import ReadOnlySession
from .replicas import Replica, Replicas
from .schema import create_schema
from .settings import Settings

logger = logging.getLogger(__name__)

# How "the database cannot be used" surfaces: SQLAlchemy's errors, the app's own pool
# admission timeout, and the raw OSErrors (refused, unknown host, timed out) that asyncpg
# raises while it connects.
DATABASE_ERRORS = (SQLAlchemyError, PoolBusyError, DatabaseUnreachableError, OSError)


class Database:
    """The pooled engine, the session factories, admission to the pool, and the schema.

    Built once per process, in the app's lifespan, so that every worker process has its
    own pool and nothing pooled crosses a fork.
    """

    def __init__(self, settings: Settings, metadata: MetaData) -> None:
        self.settings = settings
        self.metadata = metadata
        self.schema_ready = False
        self._schema_lock = asyncio.Lock()
        # str() of a URL masks the password (and the URL holds no other secret: see
        # connection_parameters.py), so ``self.url`` is safe to log.
        self.url = make_url(settings.database_url.get_secret_value())
        self.read_engine, self.engine, with_pre_ping = create_engines(self.url, settings)
        self.admission = Admission(
            pool_capacity(self.engine.pool), settings.pool_timeout, settings.pool_wait_warning
        )
        # expire_on_commit=False: objects stay readable after commit, while the response is
        # built. close_resets_only=False: a closed session refuses further use instead of
        # quietly checking out a new connection that nothing would return.
        self.session_factory = async_sessionmaker(
            self.engine, expire_on_commit=False, close_resets_only=False
        )
        self.read_session_factory = async_sessionmaker(
            self.read_engine,
            sync_session_class=ReadOnlySession,
            autoflush=False,
            close_resets_only=False,
            info={RETRY_READS: with_pre_ping},
        )
        self.connections = ConnectionCounter(self.engine)
        self.name = pool_name(self.url)
        urls = [url.get_secret_value() for url in settings.replica_urls]
        self.replicas = Replicas(self.url, urls, settings)

    def pool_status(self) -> dict[str, int]:
        """The pool's numbers right now (pool_status.py)."""
        return pool_status(self.engine.pool, self.connections, self.admission.waiting)

    async def check(self) -> None:
        """Raise one of ``DATABASE_ERRORS`` unless the database answers and has its tables.

        The first check that reaches the database creates the tables and compares the pool
        with the server's connection limit, so an app that started while the database was
        down does both once it is back.
        """
        async with self.engine.connect() as connection:
            if self.schema_ready:
                await connection.execute(text("SELECT 1"))
                return
            async with self._schema_lock:
                if not self.schema_ready:
                    await create_schema(connection, self.metadata)
                    pools = self.replicas.pools_on(self.name)
                    await warn_if_over_budget(
                        connection, self.settings, pools, self.name, bool(self.replicas)
                    )
                    self.schema_ready = True

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that queues for its connection with the requests, in arrival order.

        Nothing is committed for you: ``async with database.session() as session,
        session.begin():`` commits at the end of the block. For background tasks and
        streaming responses, which must not use the request's session.
        """
        async with self._admitted(), self.session_factory() as session:
            yield session

    @asynccontextmanager
    async def read_session(self, replica: Replica | None = None) -> AsyncIterator[AsyncSession]:
        """A session for reading, on an autocommit connection: one round trip per statement.

        No transaction is begun or rolled back around the statements, so two of them may
        see different snapshots; it refuses to write (read_session.py). On ``replica``'s
        pool when one is given (``replicas.choose()``), else on the primary's.
        """
        if replica is not None:
            async with replica.admission.admit(), replica.session_factory() as session:
                yield session
            return
        async with self._admitted(), self.read_session_factory() as session:
            yield session

    @asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """Wait for a turn at the pool, in arrival order, and make sure the tables exist."""
        async with self.admission.admit():
            if not self.schema_ready:  # the database was down when the app started
                await self.check()
            yield

    async def dispose(self) -> None:
        """Close every pooled connection, the replicas' too, all at once; connections still
        checked out close on return. A server that does not answer holds the shutdown up
        for CONNECT_TIMEOUT at most: the connections not closed by then are dropped."""
        checked_out = self.pool_status()["checked_out"]
        await self.replicas.stop()
        engines = [self.read_engine, *self.replicas.engines()]
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await asyncio.gather(*(engine.dispose() for engine in engines))
        except TimeoutError:
            logger.warning(
                "Closing the database connections took over %g s (a server does not "
                "answer): the others are dropped", self.settings.connect_timeout,
            )  # fmt: skip
        logger.info("Database engine disposed (%d connection(s) still checked out)", checked_out)
