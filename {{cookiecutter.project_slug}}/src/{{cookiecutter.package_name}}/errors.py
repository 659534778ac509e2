"""How database failures reach the client: the status code says whose problem it is.

- 503 with ``Retry-After``: the database cannot be used right now (the pool is busy; the
  server refuses, is unknown, does not answer, is starting or shutting down, has no
  connection slots left, is read-only after a failover, or dropped the connection; or a
  transaction lost a race and may simply be retried). Nothing was written.
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
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .admission import DatabaseUnreachableError, PoolBusyError
from .database import Database

logger = logging.getLogger(__name__)

# Seconds a client should wait before it tries again.
RETRY_AFTER = "1"
# PostgreSQL's code for a statement cancelled by statement_timeout.
QUERY_CANCELED = "57014"
# SQLSTATE classes and codes that mean "not now" rather than "wrong": connection
# exceptions (08), insufficient resources such as too many connections (53), the server
# shutting down or starting (57P01-57P05), read-only after a failover (25006), and a
# serialization failure or deadlock (40001, 40P01), which a retry resolves.
UNAVAILABLE_CLASSES = ("08", "53")
UNAVAILABLE_CODES = {"57P01", "57P02", "57P03", "57P04", "57P05", "25006", "40001", "40P01"}
# SQLite's words for the same (its errors carry no SQLSTATE).
SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file")
# Integrity errors that are conflicts with the stored data: unique, foreign key and
# exclusion violations (PostgreSQL's SQLSTATEs; SQLite's words).
CONFLICT_CODES = {"23505", "23503", "23P01"}
SQLITE_CONFLICTS = ("UNIQUE constraint failed", "FOREIGN KEY constraint failed")


def error_response(status_code: int, error: str, detail: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER} if status_code == 503 else None
    return JSONResponse({"error": error, "detail": detail}, status_code, headers=headers)


def database_unavailable(request: Request, error: Exception, connect_failed: bool) -> JSONResponse:
    logger.warning(
        "Database unavailable for %s %s: %s", request.method, request.url.path, describe(error)
    )
    if connect_failed:
        database: Database = request.app.state.database
        database.admission.note_unreachable()
    return error_response(503, "database_unavailable", "The database cannot be reached.")


async def unreachable(request: Request, error: Exception) -> JSONResponse:
    return error_response(503, "database_unavailable", "The database cannot be reached.")


async def pool_busy(request: Request, error: Exception) -> JSONResponse:
    database: Database = request.app.state.database
    logger.warning(
        "Database pool busy, %s %s got no connection within %g s: %s",
        request.method, request.url.path, database.settings.pool_timeout,
        database.pool_status(),
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
    sqlstate = str(getattr(error.orig, "sqlstate", "") or "")
    if sqlstate == QUERY_CANCELED:
        logger.warning("Statement timeout on %s %s", request.method, request.url.path)
        return error_response(504, "statement_timeout", "The database query took too long.")
    connect_failed = sqlstate.startswith(UNAVAILABLE_CLASSES) or sqlstate.startswith("57P")
    if (
        connect_failed
        or error.connection_invalidated
        or sqlstate in UNAVAILABLE_CODES
        or any(words in str(error.orig) for words in SQLITE_UNAVAILABLE)
    ):
        return database_unavailable(request, error, connect_failed)
    raise error  # a bug, not an outage: a 500 with its traceback in the log


async def os_error(request: Request, error: Exception) -> JSONResponse:
    """asyncpg raises refused connections, unknown hosts and timeouts as bare OSErrors."""
    if raised_by_database_driver(error):
        return database_unavailable(request, error, connect_failed=True)
    raise error


def raised_by_database_driver(error: BaseException) -> bool:
    """Whether the error came out of the driver's own code, not the app's or a listener's."""
    frames = traceback.walk_tb(error.__traceback__)
    modules = [frame.f_globals.get("__name__", "") for frame, _ in frames]
    innermost_app = max((i for i, m in enumerate(modules) if m.startswith(__package__)), default=-1)
    return any(m.startswith(("asyncpg", "aiosqlite")) for m in modules[innermost_app + 1 :])


def describe(error: BaseException) -> str:
    """The error's type, and the driver's, never its message: that may quote data or URLs."""
    cause = getattr(error, "orig", None)
    return type(error).__name__ + (f" ({type(cause).__name__})" if cause is not None else "")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PoolBusyError, pool_busy)
    app.add_exception_handler(PoolTimeoutError, pool_busy)
    app.add_exception_handler(DatabaseUnreachableError, unreachable)
    app.add_exception_handler(IntegrityError, integrity_error)
    app.add_exception_handler(DBAPIError, dbapi_error)
    app.add_exception_handler(OSError, os_error)
