"""The pooled async engine, its session factory and the per-request session dependency."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import QueuePool

from .settings import Settings

# How "the database cannot be used" surfaces: SQLAlchemy's errors, and the raw OSErrors
# (refused, unknown host, timed out) that asyncpg raises while it connects.
DATABASE_ERRORS = (SQLAlchemyError, OSError)


def pool_options(url: URL, settings: Settings) -> dict[str, Any]:
    """The pool settings that the pool SQLAlchemy picks for ``url`` accepts.

    SQLAlchemy chooses the pool class from the URL (``Dialect.get_pool_class``):
    asyncpg and file SQLite databases get ``AsyncAdaptedQueuePool``, which takes every
    setting. An in-memory SQLite database gets ``StaticPool``: all sessions share one
    connection, because every new connection would open a new, empty database. That pool
    rejects size, overflow and timeout with a TypeError, and recycling or a failed ping
    would replace the connection and lose the data, so it gets none of the settings.
    """
    if not issubclass(url.get_dialect().get_pool_class(url), QueuePool):
        return {}
    return {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
        "pool_pre_ping": settings.pool_pre_ping,
    }


class Database:
    """The engine with its pool, the session factory, and the pool's numbers.

    Built once per process, in the app's lifespan, so that every worker process has its
    own pool and nothing pooled crosses a fork.
    """

    def __init__(self, settings: Settings, metadata: MetaData) -> None:
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
        # QueuePool counts its checkouts; in-memory SQLite's StaticPool does not, so count
        # them from the pool's events (sessions there share one connection, so it can be
        # checked out by several at once).
        self._shared_checkouts = 0
        if not isinstance(self.engine.pool, QueuePool):
            event.listen(self.engine.sync_engine, "checkout", self._count_checkout)
            event.listen(self.engine.sync_engine, "checkin", self._count_checkin)

    def _count_checkout(self, *_: object) -> None:
        self._shared_checkouts += 1

    def _count_checkin(self, *_: object) -> None:
        self._shared_checkouts -= 1

    def pool_status(self) -> dict[str, int]:
        """The pool's numbers right now.

        ``overflow`` is the number of open connections beyond ``size`` (SQLAlchemy's own
        counter starts at minus the pool size; it is clamped at 0 here).
        """
        pool = self.engine.pool
        if isinstance(pool, QueuePool):
            return {
                "size": pool.size(),
                "checked_out": pool.checkedout(),
                "checked_in": pool.checkedin(),
                "overflow": max(pool.overflow(), 0),
                "max_overflow": pool._max_overflow,  # no public accessor
            }
        return {
            "size": 1,
            "checked_out": self._shared_checkouts,
            "checked_in": int(self._shared_checkouts == 0),
            "overflow": 0,
            "max_overflow": 0,
        }

    async def check(self) -> None:
        """Raise one of ``DATABASE_ERRORS`` unless the database answers and has its tables.

        Tables are created on the first check that reaches the database, so an app that
        started while the database was down becomes ready once it is back.
        """
        async with self.engine.begin() as connection:
            if self.schema_ready:
                await connection.execute(text("SELECT 1"))
            else:
                await connection.run_sync(self.metadata.create_all)
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
