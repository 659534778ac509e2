"""How database failures reach the client: the status code says whose problem it is.

- 503 with ``Retry-After``: the database cannot be used right now (the pool is busy; no
  connection could be opened, for a reason connection_failures.py names; the server is
  read-only after a failover, or dropped the connection; a schema change made a prepared
  statement stale, stale_statements.py; or a transaction lost a race and may simply be
  retried). Nothing was written. The body names the kind ("authentication failed"); the
  log line says more (the user, the database, the SQLSTATE), never the password.
- 504: a statement ran past ``STATEMENT_TIMEOUT`` and was cancelled.
- 409: the request conflicts with the stored data (a unique, foreign key or exclusion
  constraint); nothing was written.
- Anything else is a bug and stays a 500: a NOT NULL or CHECK violation among them, since
  it means the API let through input its schemas should have refused (a 422).
"""

import logging
import traceback

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .admission import DatabaseUnreachableError, PoolBusyError
from .connection_failures import Failure, exception_chain, name_failure, sqlstate_of
from .database import Database
from .replicas import Replica
from .stale_statements import STALE_STATEMENT, is_stale_statement

logger = logging.getLogger(__name__)

# Seconds a client should wait before it tries again.
RETRY_AFTER = "1"
# PostgreSQL's code for a statement cancelled by statement_timeout.
QUERY_CANCELED = "57014"
# SQLSTATEs that mean "not now" rather than "wrong", besides the connection failures
# (connection_failures.py): read-only after a failover (25006 read_only_sql_transaction),
# and a transaction that lost a race, which a retry resolves (40001 serialization_failure,
# 40P01 deadlock_detected).
NOT_NOW = {
    "25006": "the database is read-only",
    "40001": "serialization failure",
    "40P01": "deadlock detected",
}
# SQLite's busy code (the error carries no SQLSTATE): a writer waited STATEMENT_TIMEOUT for
# another writer's lock.
SQLITE_BUSY = "SQLITE_BUSY"
# Integrity errors that are conflicts with the stored data: unique, foreign key and
# exclusion violations (PostgreSQL's SQLSTATEs; SQLite's words).
CONFLICT_CODES = {"23505", "23503", "23P01"}
SQLITE_CONFLICTS = ("UNIQUE constraint failed", "FOREIGN KEY constraint failed")


def error_response(status_code: int, error: str, detail: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER} if status_code == 503 else None
    return JSONResponse({"error": error, "detail": detail}, status_code, headers=headers)


def pool_used(request: Request) -> Database | Replica:
    """The pool the request's session came from: a read replica's, or the primary's."""
    return getattr(request.state, "read_replica", None) or request.app.state.database


def label(pool: Database | Replica) -> str:
    """How the log names a pool: "Database" for the primary's, as with no replicas."""
    return f"Read replica {pool.name}" if isinstance(pool, Replica) else "Database"


def database_unavailable(request: Request, failure: Failure) -> JSONResponse:
    pool = pool_used(request)
    logger.warning(
        "%s unavailable for %s %s: %s",
        label(pool), request.method, request.url.path, failure.detail,
    )  # fmt: skip
    if failure.connect:
        pool.admission.note_unreachable(failure)
    return error_response(503, "database_unavailable", client_detail(failure))


def client_detail(failure: Failure) -> str:
    """What a client is told: the kind, a fixed phrase, never the names in the log line."""
    if failure.connect:
        return f"The database cannot be reached: {failure.kind}."
    return f"The database could not complete the request: {failure.kind}; retry shortly."


async def unreachable(request: Request, error: Exception) -> JSONResponse:
    """Failing fast after a failed connect: the 503 names the failure that opened the window."""
    assert isinstance(error, DatabaseUnreachableError)
    return error_response(503, "database_unavailable", client_detail(error.failure))


async def pool_busy(request: Request, error: Exception) -> JSONResponse:
    pool = pool_used(request)
    logger.warning(
        "%s pool busy, %s %s got no connection within %g s: %s",
        label(pool), request.method, request.url.path, pool.admission.timeout,
        pool.pool_status(),
    )  # fmt: skip
    return error_response(503, "database_busy", "The database pool is busy; retry shortly.")


async def integrity_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, IntegrityError)
    sqlstate = str(getattr(error.orig, "sqlstate", "") or "")
    if sqlstate not in CONFLICT_CODES and not any(
        words in str(error.orig) for words in SQLITE_CONFLICTS
    ):
        raise error  # NOT NULL, CHECK: input the schemas should have refused, a bug
    # The client's conflict, not the server's fault: no stack trace in the log.
    logger.info("Conflict on %s %s: %s", request.method, request.url.path, describe(error))
    return error_response(409, "conflict", "The request conflicts with the stored data.")


async def dbapi_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DBAPIError)
    if sqlstate(error) == QUERY_CANCELED:
        logger.warning("Statement timeout on %s %s", request.method, request.url.path)
        return error_response(504, "statement_timeout", "The database query took too long.")
    failure = unavailability(error, pool_used(request).url)
    if failure is None:
        raise error  # a bug, not an outage: a 500 with its traceback in the log
    return database_unavailable(request, failure)


async def os_error(request: Request, error: Exception) -> JSONResponse:
    """asyncpg raises refused connections, unknown hosts, timeouts and TLS failures as bare
    OSErrors."""
    if not raised_by_database_driver(error):
        raise error
    url = pool_used(request).url
    failure = name_failure(error, url) or Failure("connection failure", describe(error))
    return database_unavailable(request, failure)


def unavailability(error: BaseException, url: URL | None) -> Failure | None:
    """Why the database cannot be used right now, named; None for an error that is a bug."""
    if failure := name_failure(error, url):
        return failure
    if is_stale_statement(error):
        return STALE_STATEMENT
    code = sqlstate(error)
    if code in NOT_NOW:
        return Failure(NOT_NOW[code], f"{NOT_NOW[code]} ({code})", connect=False)
    causes = exception_chain(error)
    if any(getattr(cause, "sqlite_errorname", None) == SQLITE_BUSY for cause in causes):
        return Failure(
            "the database is locked",
            "another writer held the SQLite database's lock for STATEMENT_TIMEOUT (SQLITE_BUSY)",
            connect=False,
        )
    return None


def raised_by_database_driver(error: BaseException) -> bool:
    """Whether the error came out of the driver's own code, not the app's or a listener's."""
    frames = traceback.walk_tb(error.__traceback__)
    modules = [frame.f_globals.get("__name__", "") for frame, _ in frames]
    innermost_app = max((i for i, m in enumerate(modules) if m.startswith(__package__)), default=-1)
    return any(m.startswith(("asyncpg", "aiosqlite")) for m in modules[innermost_app + 1 :])


def diagnose(error: BaseException, url: URL | None = None) -> Failure:
    """``error`` named (see ``unavailability``), or, for an error with no name, its types:
    never its message, which may quote data or the URL."""
    if isinstance(error, DatabaseUnreachableError):
        return error.failure
    if isinstance(error, PoolBusyError | PoolTimeoutError):
        busy = f"no pooled connection was free ({type(error).__name__})"
        return Failure("the pool is busy", busy, connect=False)
    if failure := unavailability(error, url):
        return failure
    code = sqlstate(error)
    cause = getattr(error, "orig", None)
    types = type(error).__name__ + (f" ({type(cause).__name__})" if cause is not None else "")
    return Failure("the database cannot be used", types + (f", SQLSTATE {code}" if code else ""),
                   connect=False)  # fmt: skip


def describe(error: BaseException, url: URL | None = None) -> str:
    """A log line's words for ``error``: its name and details, or its types."""
    return diagnose(error, url).detail


def sqlstate(error: BaseException) -> str:
    """The SQLSTATE anywhere in the chain: SQLAlchemy's adapter of asyncpg's error may not
    copy it (its InvalidCachedStatementError does not), asyncpg's own error has it."""
    return next((code for cause in exception_chain(error) if (code := sqlstate_of(cause))), "")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PoolBusyError, pool_busy)
    app.add_exception_handler(PoolTimeoutError, pool_busy)
    app.add_exception_handler(DatabaseUnreachableError, unreachable)
    app.add_exception_handler(IntegrityError, integrity_error)
    app.add_exception_handler(DBAPIError, dbapi_error)
    app.add_exception_handler(OSError, os_error)
