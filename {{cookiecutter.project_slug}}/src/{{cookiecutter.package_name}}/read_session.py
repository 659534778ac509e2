"""The session of ``ReadSessionDep``: reads in autocommit mode, and nothing else.

Its connection is in autocommit mode, so each statement is one round trip, and a write
would be stored at once, outside any unit of work. So it refuses every way to write: a
flush (``session.add`` then a query, or ``flush()``), ORM or Core INSERT, UPDATE and
DELETE statements, and ``text()`` that is not a SELECT; objects added, changed or deleted
and never flushed are reported when the request ends (``dependencies.py``). Each refusal
is an error, a 500: never a 2xx for a write that was stored in part, or not at all.
"""

import re

from sqlalchemy import event
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import TextClause

from . import pre_ping

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
    statement = state.statement
    if isinstance(statement, TextClause):
        writes = not READ_STATEMENT.match(statement.text)
    else:
        writes = state.is_insert or state.is_update or state.is_delete
    if writes:
        raise InvalidRequestError(REFUSAL)


# After the refusal: only reads are ever run again.
event.listen(ReadOnlySession, "do_orm_execute", pre_ping.retry_read_once)


def refuse_unsaved_changes(session: Session) -> None:
    """Raise if objects were added, changed or deleted in ``session`` and never written."""
    if session.new or session.dirty or session.deleted:
        raise InvalidRequestError(REFUSAL)
