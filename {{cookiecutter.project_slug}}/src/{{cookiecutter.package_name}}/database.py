"""The pooled async engine, its session factory and the per-request session dependency."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from .connection_budget import warn_if_over_budget
from .settings import Settings

# How "the database cannot be used" surfaces: SQLAlchemy's errors, and the raw OSErrors
# (refused, unknown host, timed out) that asyncpg raises while it connects.
DATABASE_ERRORS = (SQLAlchemyError, OSError)

# Any fixed number: workers starting together take this lock in turn to create tables.
SCHEMA_LOCK_ID = 7_241_857


def pool_options(url: URL, settings: Settings) -> dict[str, Any]:
    """The pool for ``url``, configured from the settings.

    SQLAlchemy chooses the pool class from the URL (``Dialect.get_pool_class``): asyncpg
    and file SQLite databases get ``AsyncAdaptedQueuePool``, and every setting applies.

    In-memory SQLite is the exception: each new connection would open a new, empty
    database. SQLAlchemy's choice for it, ``StaticPool``, hands its one connection to all
    sessions at once, so concurrent requests would interleave their transactions on it.
    Instead it gets a queue pool of exactly one connection that is never recycled or
    replaced: one database, one request at a time, the wait bounded by ``pool_timeout``.
    """
    if not issubclass(url.get_dialect().get_pool_class(url), QueuePool):
        return {
            "poolclass": AsyncAdaptedQueuePool,
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": settings.pool_timeout,
            "pool_recycle": -1,
            "pool_pre_ping": False,
        }
    return {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
        "pool_pre_ping": settings.pool_pre_ping,
    }


async def create_schema(connection: AsyncConnection, metadata: MetaData) -> None:
    if connection.dialect.name == "postgresql":
        # Without it, workers starting together race to create the same tables.
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_ID})"))
    await connection.run_sync(metadata.create_all)


class Database:
    """The engine with its pool, the session factory, and the pool's numbers.

    Built once per process, in the app's lifespan, so that every worker process has its
    own pool and nothing pooled crosses a fork.
    """

    def __init__(self, settings: Settings, metadata: MetaData) -> None:
        self.settings = settings
        self.metadata = metadata
        self.schema_ready = False
        # str() of a URL masks the password, so ``self.url`` is safe to log.
        self.url = make_url(settings.database_url.get_secret_value())
        self.engine = create_async_engine(self.url, **pool_options(self.url, settings))
        # expire_on_commit=False: objects stay readable after commit, while the response is
        # built. close_resets_only=False: a closed session refuses further use instead of
        # quietly checking out a new connection that nothing would return.
        self.session_factory = async_sessionmaker(
            self.engine, expire_on_commit=False, close_resets_only=False
        )

    def pool_status(self) -> dict[str, int]:
        """The pool's numbers right now.

        ``overflow`` is the number of open connections beyond ``size`` (SQLAlchemy's own
        counter starts at minus the pool size; it is clamped at 0 here).
        """
        pool = self.engine.pool
        return {
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "checked_in": pool.checkedin(),
            "overflow": max(pool.overflow(), 0),
            "max_overflow": pool._max_overflow,  # no public accessor
        }

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
                await create_schema(connection, self.metadata)
                await warn_if_over_budget(connection, self.settings)
                self.schema_ready = True

    async def dispose(self) -> None:
        await self.engine.dispose()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session, and so one transaction, per request.

    Unit of work: the transaction commits when the endpoint returns and rolls back when it
    raises. Used through ``SessionDep``, whose function scope runs the commit before the
    response is sent: a commit that fails becomes an error response, never a 2xx for data
    that was not stored, and the connection is back in the pool before the client reads.
    """
    database: Database = request.app.state.database
    async with database.session_factory() as session:
        yield session
        await session.commit()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
