"""A schema change applied while the app runs, as another instance's migration would: the
statements each pooled connection prepared before it go stale (stale_statements.py).
Reads run again, a transaction that hits one answers 503 with Retry-After: never a 500."""

import asyncio
import logging

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text

from {{ cookiecutter.package_name }}.dependencies import SessionDep
from {{ cookiecutter.package_name }}.models import Item
from {{ cookiecutter.package_name }}.routers.items import page_of_items
from {{ cookiecutter.package_name }}.settings import Settings

from ..support import make_settings, plain_engine, requires_postgres, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow, requires_postgres]

CONNECTIONS = 4
# Changes the type of a column every statement on items returns: PostgreSQL refuses to run
# a statement prepared before it ("cached plan must not change result type").
CHANGES = [
    "ALTER TABLE items ALTER COLUMN name TYPE text",
    "ALTER TABLE items ALTER COLUMN name TYPE varchar(300)",
]
STALE_READ = "prepared statement went stale"


def add_routes(app: FastAPI) -> None:
    """``/warm``: the list, get and create statements on one connection, held a moment so
    that requests sent together each prepare them on a connection of their own.
    ``PATCH /rename/{id}``: a write that reads the item first, in its transaction."""

    @app.post("/warm")
    async def warm(session: SessionDep) -> None:
        await session.scalars(page_of_items, {"limit": 20, "offset": 0})
        await session.get(Item, 1)
        session.add(Item(name="warm"))
        await session.flush()
        await session.execute(text("SELECT pg_sleep(0.2)"))

    @app.patch("/rename/{item_id}")
    async def rename(item_id: int, session: SessionDep) -> dict[str, str]:
        item = await session.get(Item, item_id)
        assert item is not None
        item.name = f"{item.name}+"
        return {"name": item.name}


async def warm_up(app: FastAPI, client: AsyncClient) -> None:
    assert (await client.post("/items", json={"name": "first"})).status_code == 201
    warmed = [client.post("/warm") for _ in range(CONNECTIONS)]
    assert {r.status_code for r in await asyncio.gather(*warmed)} == {200}
    assert app.state.database.pool_status()["checked_in"] == CONNECTIONS


async def change_schema(database_url: str, statement: str) -> None:
    """On a connection of its own, as another instance's migration would."""
    admin = plain_engine(database_url)
    try:
        async with admin.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await admin.dispose()


def settings_for(database_url: str, pool_pre_ping: bool) -> Settings:
    # connection_pooler="none": behind PgBouncer no statement is cached, nothing goes stale.
    return make_settings(
        database_url, pool_size=CONNECTIONS, max_overflow=0, pool_pre_ping=pool_pre_ping,
        connection_pooler="none",
    )  # fmt: skip


@pytest.mark.parametrize("pool_pre_ping", [True, False], ids=["pre-ping", "no-pre-ping"])
async def test_a_schema_change_under_a_warm_pool_costs_no_500(
    database_url: str, pool_pre_ping: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with serve(settings_for(database_url, pool_pre_ping)) as (app, client):
        add_routes(app)
        await warm_up(app, client)
        await change_schema(database_url, CHANGES[0])

        # Reads first, so that every warm connection meets the change with a read.
        reads = [client.get("/items") for _ in range(CONNECTIONS)]
        reads += [client.get("/items/1") for _ in range(CONNECTIONS)]
        writes = [client.post("/items", json={"name": f"after-{n}"}) for n in range(4)]
        writes += [client.patch("/rename/1") for _ in range(4)]
        responses = await asyncio.gather(*reads, *writes)

    read_answers, write_answers = responses[: len(reads)], responses[len(reads) :]
    assert [r.status_code for r in read_answers] == [200] * len(reads)
    assert all(r.status_code in (200, 201, 503) for r in write_answers)
    for response in write_answers:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
    # The change did meet stale statements, at most once per connection: the first one
    # makes every connection prepare anew.
    stale_reads = [r for r in caplog.records if STALE_READ in r.getMessage()]
    assert 1 <= len(stale_reads) <= CONNECTIONS


async def test_a_transaction_that_meets_a_stale_statement_is_a_503_and_the_next_succeeds(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL aborts the transaction: it cannot be run again behind the endpoint, so
    the client is told to retry; by then every connection prepares anew."""
    async with serve(settings_for(database_url, pool_pre_ping=True)) as (app, client):
        add_routes(app)
        await warm_up(app, client)
        await change_schema(database_url, CHANGES[0])

        first = await client.patch("/rename/1")
        again = [await client.patch("/rename/1") for _ in range(CONNECTIONS)]
        readiness = await client.get("/health/db")

    assert first.status_code == 503
    assert first.headers["Retry-After"] == "1"
    assert first.json() == {
        "error": "database_unavailable",
        "detail": "The database could not complete the request: the schema changed during the "
        "request; retry shortly.",
    }
    # At once: a stale statement is no sign of a database down, so no failing fast.
    assert [r.status_code for r in again] == [200] * CONNECTIONS
    assert readiness.status_code == 200
    assert "cached plan must not change result type" in caplog.text
