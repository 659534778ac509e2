"""Building the engine: one pool, configured from the settings, and two ways to use it.

The pool's connections are in autocommit mode, so a read is one round trip with nothing to
begin, roll back or switch back afterwards (``read_engine``). ``transaction_engine`` is the
same pool; it switches the connection it takes to a transaction at the database's default
isolation level, for sessions that write and for schema changes.
"""

import logging
from typing import Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, QueuePool

from . import pre_ping
from .connection_parameters import SQLALCHEMY_PARAMETERS, read_parameters, tls_arguments
from .pool import LingeringOverflowPool
from .read_session import refuse_writes_in_autocommit
from .settings import Settings

logger = logging.getLogger(__name__)

# What the transaction engine switches its connections to: PostgreSQL's and SQLite's
# default levels (a server's default_transaction_isolation is not read).
TRANSACTION_ISOLATION = {"postgresql": "READ COMMITTED", "sqlite": "SERIALIZABLE"}


class Engines(NamedTuple):
    read_engine: AsyncEngine
    transaction_engine: AsyncEngine
    pre_ping: bool  # whether pre_ping.py's checks are installed


def create_engines(url: URL, settings: Settings, setting: str = "DATABASE_URL") -> Engines:
    """The two engines over one pool, with pre-ping installed when the settings ask for it.

    ``setting`` names where the URL came from, in the notes logged about its parameters.
    Raises ``ValueError`` (one line per problem) when the URL's parameters cannot be used,
    which ``Settings`` has refused already.
    """
    if url.get_backend_name() == "postgresql":
        for note in read_parameters(url.query).notes:
            logger.warning("%s: %s", setting, note)
    read_engine = create_async_engine(
        engine_url(url),
        isolation_level="AUTOCOMMIT",
        connect_args=connect_args(url, settings),
        # Error messages would otherwise quote the values of a failed statement.
        hide_parameters=True,
        **pool_options(url, settings),
    )
    # Before anything runs: the autocommit connections (the read session's) only read.
    event.listen(read_engine.sync_engine, "before_cursor_execute", refuse_writes_in_autocommit)
    transaction_engine = read_engine.execution_options()
    # An in-memory SQLite database has no server to drop it, and its one connection is the
    # database: never replaced.
    with_pre_ping = settings.pool_pre_ping and isinstance(read_engine.pool, LingeringOverflowPool)
    if with_pre_ping:
        pre_ping.install(read_engine.sync_engine, transaction_engine.sync_engine)
    # After pre_ping's hook, so that its ping runs before the switch to a transaction.
    transaction_engine.update_execution_options(
        isolation_level=TRANSACTION_ISOLATION[url.get_backend_name()]
    )
    event.listen(read_engine.sync_engine, "invalidate", InvalidationLog(setting))
    if url.get_backend_name() == "sqlite":
        event.listen(read_engine.sync_engine, "connect", enforce_sqlite_foreign_keys)
    if is_sqlite_file(url):
        event.listen(read_engine.sync_engine, "connect", use_sqlite_write_ahead_log)
    return Engines(read_engine, transaction_engine, with_pre_ping)


def engine_url(url: URL) -> URL:
    """``url`` without the parameters ``connect_args`` passes to asyncpg in its own way.

    SQLAlchemy would hand each of them to ``asyncpg.connect()`` under its libpq name,
    which asyncpg refuses; those it handles itself (several hosts) stay. A SQLite URL's
    parameters (``?mode=ro&uri=true``) are sqlite3's, and stay too.
    """
    if url.get_backend_name() != "postgresql":
        return url
    return url.difference_update_query(set(url.query) - set(SQLALCHEMY_PARAMETERS))


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
    """asyncpg's arguments: the URL's parameters (connection_parameters.py), and timeouts,
    so that no request waits on the database without bound."""
    if url.get_backend_name() == "sqlite":
        # sqlite3's busy timeout: how long a writer waits for another writer's lock.
        return {"timeout": settings.statement_timeout or settings.pool_timeout}
    parameters = read_parameters(url.query)
    if parameters.problems:
        raise ValueError("\n".join(parameters.problems))
    # The URL's connect_timeout, if it gives one, wins over CONNECT_TIMEOUT: it is the more
    # specific of the two.
    args: dict[str, Any] = {"timeout": settings.connect_timeout} | parameters.connect_args
    args |= tls_arguments(parameters.tls)
    server_settings = {"application_name": "{{ cookiecutter.package_name }}"}
    server_settings |= parameters.server_settings
    if settings.statement_timeout:
        # The client gives up a little after the server would have, in case the server
        # itself has gone silent.
        args["command_timeout"] = settings.statement_timeout + args["timeout"]
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


class InvalidationLog:
    """A pool's "invalidate" listener: a dropped connection (server restart, failover, idle
    reaping) is logged, naming the pool's setting unless it is DATABASE_URL's."""

    def __init__(self, setting: str) -> None:
        self.pool = "" if setting == "DATABASE_URL" else f" of {setting}"

    def __call__(self, _: object, __: object, error: BaseException | None) -> None:
        reason = type(error).__name__ if error is not None else "invalidated"
        logger.warning("A pooled database connection%s was discarded: %s", self.pool, reason)


def is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


def enforce_sqlite_foreign_keys(dbapi_connection: Any, _: object) -> None:
    """SQLite checks foreign keys only when asked, per connection: ask, as PostgreSQL does.

    Schema changes turn it off for their duration (schema.py), as SQLite's docs advise.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def use_sqlite_write_ahead_log(dbapi_connection: Any, _: object) -> None:
    """WAL lets readers go on while one writer writes; a file database keeps the mode."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
