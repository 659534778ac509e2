"""The session endpoint code takes: ``SessionDep`` to write, ``ReadSessionDep`` to read.

Both are SQLAlchemy ``AsyncSession`` objects, used with ``select()`` as SQLAlchemy's and
FastAPI's own docs teach::

    @router.get("/{item_id}")
    async def get_item(item_id: int, session: ReadSessionDep) -> ItemRead:
        item = await session.get(Item, item_id)

    @router.post("")
    async def create_item(body: ItemCreate, session: SessionDep) -> ItemRead:
        item = Item(**body.model_dump())
        session.add(item)
        await session.flush()  # the id and server defaults, from INSERT ... RETURNING
        return item
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from .admission import PoolBusyError
from .database import DATABASE_ERRORS, Database
from .read_session import refuse_unsaved_changes
from .replicas import READ_FROM_PRIMARY


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
    database: Database = claim_one_session(request, "SessionDep")
    async with database.session() as session:
        yield session
        await session.commit()


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for endpoints that only read, on an autocommit connection.

    Each statement is one round trip, with no BEGIN or ROLLBACK around it; two statements
    may see different snapshots. It refuses to write (read_session.py): an error, a 500,
    never a 2xx for a write that was not stored.

    With read replicas (REPLICA_URLS), the session is on the next usable replica's pool
    (replicas.py); a read the replica could not serve runs again on the primary
    (replica_fallback.py).
    """
    database: Database = claim_one_session(request, "ReadSessionDep")
    replica = None if request.scope.get(READ_FROM_PRIMARY) else database.replicas.choose()
    request.state.read_replica = replica
    try:
        async with database.read_session(replica) as session:
            yield session
            refuse_unsaved_changes(session.sync_session)
    except DATABASE_ERRORS as error:
        # A replica's failure runs the read again on the primary (replica_fallback.py); a
        # replica merely busy, and still in use, does not pass its load on to the primary.
        busy = isinstance(error, PoolBusyError) and replica is not None and replica.usable
        if replica is not None and not busy:
            replica.failed(error)
            request.state.replica_failed = True
        raise


def claim_one_session(request: Request, dependency: str) -> Database:
    """One session per request: two would each queue for a connection of their own, and
    with every connection taken by requests holding one, none would get its second."""
    taken = getattr(request.state, "database_session", None)
    if taken is not None:
        raise RuntimeError(
            f"this request already took {taken}: an endpoint and its dependencies take "
            "SessionDep or ReadSessionDep, not both (SessionDep reads too)"
        )
    request.state.database_session = dependency
    return request.app.state.database


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
