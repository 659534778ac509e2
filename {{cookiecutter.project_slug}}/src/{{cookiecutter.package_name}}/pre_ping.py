"""``POOL_PRE_PING``: a connection the server dropped is never handed to a request.

SQLAlchemy's own ``pool_pre_ping`` sends a ping at every checkout; with asyncpg that is
three round trips (BEGIN, the ping, ROLLBACK), and it halved the app's reads per second
(the template's bench/RESULTS.md). The same promise, kept for less:

1. At checkout, for free: a connection that the driver already knows is closed is
   replaced. A server restart, a failover, ``pg_terminate_backend`` and a proxy reaping
   idle connections all send the client a goodbye that the event loop reads at once. A
   connection that sat idle for a second or more is also pinged, for drops that send
   nothing (a firewall or NAT that forgot the connection).
2. Reads, through ``ReadSessionDep``: a statement that fails because its connection is
   gone runs again on a fresh connection, once. This is SQLAlchemy's recipe for a
   "readonly version of transparent reconnect" (FAQ, "How Do I Retry a Statement
   Execution Automatically?"): a read changes nothing, so running it again is safe, and
   the read session refuses anything else. It covers a connection dropped a moment
   before the read, its goodbye still on the way. The read session runs the retry
   (read_session.py), when its ``info`` has ``RETRY_READS``.
3. Transactions (sessions): a transaction cannot be run again behind the code that made
   it (the same FAQ), so its connection is pinged before the transaction begins: one
   round trip, while the connection is still in autocommit mode.
"""

import time
from functools import partial

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError, InvalidatePoolError
from sqlalchemy.pool import ConnectionPoolEntry

# Connections idle at least this long are pinged at checkout.
PING_AFTER_IDLE_SECONDS = 1.0
# Keys in the pool entry's info, which lasts as long as its DBAPI connection.
RETURNED_AT = "returned_at"
# Key in a read session's info: run a read again once if its connection was gone.
RETRY_READS = "retry_reads"
VERIFIED = "verified"  # new, or pinged, at this checkout: no second ping needed


def install(read_engine: Engine, transaction_engine: Engine) -> None:
    """Hook the checks onto the engines that share one pool (sync engines); the read
    sessions retry their reads when their ``info`` has ``RETRY_READS`` (database.py).

    ``read_engine``'s connections are in autocommit mode; ``transaction_engine`` is the
    same pool, and must be given its ``isolation_level`` only after this, so that the ping
    before a transaction runs while the connection is still in autocommit mode: one round
    trip, where a ping inside a transaction is three (BEGIN, the ping, ROLLBACK).
    """
    event.listen(read_engine, "checkin", remember_when_returned)
    event.listen(read_engine, "checkout", partial(check_on_checkout, read_engine.dialect))
    event.listen(transaction_engine, "engine_connect", ping_before_transaction)


def remember_when_returned(_: object, connection_record: ConnectionPoolEntry) -> None:
    connection_record.info[RETURNED_AT] = time.monotonic()
    connection_record.info.pop(VERIFIED, None)


def check_on_checkout(
    dialect: Dialect,
    dbapi_connection: DBAPIConnection,
    connection_record: ConnectionPoolEntry,
    _: object,
) -> None:
    """Pool "checkout" hook: raise ``DisconnectionError`` for a connection that must not
    be used; SQLAlchemy's pool then replaces it with another, new if need be."""
    if driver_says_closed(dbapi_connection):
        raise DisconnectionError("the server closed this pooled connection")
    returned_at = connection_record.info.get(RETURNED_AT)
    if returned_at is None:  # opened just now
        connection_record.info[VERIFIED] = True
        return
    if time.monotonic() - returned_at < PING_AFTER_IDLE_SECONDS:
        return  # in use a moment ago
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as error:
        # As SQLAlchemy's pre-ping does: connections opened before this one go too.
        raise InvalidatePoolError(f"idle connection failed its ping: {error!r}") from error
    connection_record.info[VERIFIED] = True


def driver_says_closed(dbapi_connection: DBAPIConnection) -> bool:
    """asyncpg's own flag, set when the server's goodbye was read; no round trip.

    SQLite files have no server to drop them, and aiosqlite no such flag.
    """
    is_closed = getattr(dbapi_connection.driver_connection, "is_closed", None)
    return bool(is_closed and is_closed())


def ping_before_transaction(connection: Connection) -> None:
    """``engine_connect`` hook: the connection answers before a transaction begins on it.

    Skipped for a connection that was opened or pinged at this checkout. A dead one, or one
    whose ping times out, is discarded; the ``Connection`` then takes another from the pool
    (through the checkout check), which is pinged in turn.
    """
    dialect = connection.dialect
    for _ in range(3):
        pool_entry = connection.connection
        if pool_entry.info.get(VERIFIED):
            return
        try:
            dialect.do_ping(pool_entry.dbapi_connection)
            return
        except Exception as error:
            gone = not isinstance(error, dialect.loaded_dbapi.Error) or dialect.is_disconnect(
                error, pool_entry.dbapi_connection, None
            )  # asyncpg raises a timeout as the builtin TimeoutError
            if not gone:
                connection.invalidate(error)  # back to the pool, not left checked out
                raise
            discard_connection_and_older(connection, error)


def discard_connection_and_older(connection: Connection, error: BaseException) -> None:
    """What SQLAlchemy does on any disconnect: this connection is closed, and every pooled
    connection opened before it is replaced at its next checkout (the server that dropped
    one most likely dropped them all). The ``Connection`` takes a new one when next used.
    """
    pool = connection.engine.pool
    # SQLAlchemy's own call and order (Connection._handle_dbapi_exception): the pool first,
    # while the entry still knows when its connection was opened.
    pool._invalidate(connection.connection, error, _checkin=False)
    connection.invalidate(error)
