"""What endpoints get from ``SessionDep`` and ``ReadSessionDep``, in the tests as in production."""

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.package_name }}.dependencies import ReadSessionDep
from {{ cookiecutter.package_name }}.models import Item

pytestmark = pytest.mark.anyio


async def add_item(session: AsyncSession) -> None:
    session.add(Item(name="through the read session"))


async def add_and_flush_item(session: AsyncSession) -> None:
    session.add(Item(name="through the read session"))
    await session.flush()


async def rename_first_item(session: AsyncSession) -> None:
    item = await session.scalar(select(Item).limit(1))
    assert item is not None
    item.name = "renamed through the read session"


async def insert_item(session: AsyncSession) -> None:
    await session.execute(insert(Item).values(name="through the read session"))


async def insert_as_text(session: AsyncSession) -> None:
    await session.execute(text("INSERT INTO items (name) VALUES ('through the read session')"))


@pytest.mark.parametrize(
    "write",
    [
        add_item,
        add_and_flush_item,
        rename_first_item,
        insert_item,
        insert_as_text,
    ],
)
async def test_a_write_through_the_read_session_is_an_error(
    app: FastAPI, client: AsyncClient, session: AsyncSession, write
) -> None:
    """In the tests as in production, where it is a 500 and nothing is stored
    (tests/pool/test_trouble.py; here the test's transaction would hide a stored row).
    A write sent through ``await session.connection()`` is refused by the autocommit
    connection itself: in production only, tested there."""
    session.add(Item(name="first"))
    await session.commit()

    @app.post("/write-through-read-session")
    async def misused(read_session: ReadSessionDep) -> None:
        await write(read_session)

    with pytest.raises(InvalidRequestError, match="ReadSessionDep only reads"):
        await client.post("/write-through-read-session")


async def test_foreign_keys_are_enforced_on_sqlite_as_on_postgresql(
    session: AsyncSession,
) -> None:
    """SQLite checks them only on connections that ask (engine.py); the test's
    transaction is rolled back, the table with it."""
    await session.execute(
        text("CREATE TABLE notes (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items (id))")
    )

    with pytest.raises(IntegrityError):
        async with session.begin_nested():
            await session.execute(text("INSERT INTO notes (id, item_id) VALUES (1, 999)"))
