"""The session of ``ReadSessionDep``: reads in autocommit mode, and nothing else.

Its connection is in autocommit mode, so each statement is one round trip, and a write
would be stored at once, outside any unit of work. So it refuses every way to write: a
flush (``session.add`` then a query, or ``flush()``), and on its connection any statement
but a SELECT, sent through the session, ``session.connection()`` or ``text()``; objects
added, changed or deleted and never flushed are reported when the request ends
(``dependencies.py``). Each refusal is an error, a 500: never a 2xx for a write that was
stored in part, or not at all.

Because it only reads, a read that failed for a reason that running it again cures runs
again, once (``retry_read_once``): a connection that was gone (with ``POOL_PRE_PING``,
pre_ping.py), or a prepared statement that a schema change made stale (always,
stale_statements.py).
"""

import logging
import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Result
from sqlalchemy.engine.interfaces import ExecutionContext
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import TextClause

from .pre_ping import RETRY_READS
from .stale_statements import is_stale_statement

logger = logging.getLogger(__name__)

# The only raw SQL a read session runs: a SELECT (a WITH may hold an INSERT or a DELETE).
READ_STATEMENT = re.compile(r"\s*SELECT\b", re.IGNORECASE)
REFUSAL = "ReadSessionDep only reads: take SessionDep in an endpoint that writes"


class ReadOnlySession(Session):
    """A ``Session`` that refuses to write (see the module's docstring)."""


@event.listens_for(ReadOnlySession, "before_flush")
def refuse_to_flush(*_: object) -> None:
    raise InvalidRequestError(REFUSAL)


@event.listens_for(ReadOnlySession, "do_orm_execute")
def refuse_write_statements(state: ORMExecuteState) -> None:
    """Statements sent through the session: refused before they are compiled, whatever
    connection the session has (in the tests, one in a transaction)."""
    statement = state.statement
    if isinstance(statement, TextClause):
        writes = not READ_STATEMENT.match(statement.text)
    else:
        writes = state.is_insert or state.is_update or state.is_delete
    if writes:
        raise InvalidRequestError(REFUSAL)


def refuse_writes_in_autocommit(
    connection: Connection,
    cursor: object,
    statement: str,
    parameters: object,
    context: ExecutionContext,
    executemany: bool,
) -> None:
    """``before_cursor_execute`` hook of the pool's engines (engine.py): on a connection in
    autocommit mode, the read session's, only a SELECT runs, however it was sent (also
    through ``session.connection()``); sessions in a transaction pass."""
    in_autocommit = context.execution_options.get("isolation_level", "AUTOCOMMIT") == "AUTOCOMMIT"
    if in_autocommit and not READ_STATEMENT.match(statement):
        raise InvalidRequestError(REFUSAL)


def retry_read_once(state: ORMExecuteState) -> Result[Any]:
    """``do_orm_execute`` hook: a read that failed for a reason a second run cures, runs
    once more. Only reads reach it: ``refuse_write_statements`` runs first.

    - Its connection was gone, in sessions whose ``info`` has ``RETRY_READS`` (pre_ping.py).
      SQLAlchemy has already discarded the dead connection, and every pooled one opened
      before it; the rollback ends the session's transaction on it, and the statement runs
      again from a fresh checkout.
    - A statement prepared before a schema change went stale (stale_statements.py), in
      every read session: a read changed nothing, and SQLAlchemy's dialect has marked the
      caches of every connection stale, so it runs again on the same connection, prepared
      anew. No rollback: the connection is in autocommit mode, and a rollback would expire
      what the session has loaded.
    """
    try:
        return state.invoke_statement()
    except DBAPIError as error:
        if error.connection_invalidated and state.session.info.get(RETRY_READS):
            logger.warning("A read lost its connection (%s); running it again on a new one",
                           type(error.orig).__name__)  # fmt: skip
            state.session.rollback()
            return state.invoke_statement()
        if is_stale_statement(error):
            logger.warning("A read's prepared statement went stale after a schema change; "
                           "running it again, prepared anew")  # fmt: skip
            return state.invoke_statement()
        raise


# After refuse_write_statements: only reads are run again.
event.listen(ReadOnlySession, "do_orm_execute", retry_read_once)


def refuse_unsaved_changes(session: Session) -> None:
    """Raise if objects were added, changed or deleted in ``session`` and never written."""
    if session.new or session.dirty or session.deleted:
        raise InvalidRequestError(REFUSAL)
