"""Fixtures: each test gets an app on a clean database.

The database is a temporary SQLite file, or, when ``TEST_DATABASE_URL`` names a PostgreSQL
server, a database created on that server for this test run and dropped at its end.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from {{ cookiecutter.package_name }}.settings import Settings

from .support import TEST_DATABASE_URL, USE_POSTGRES, make_settings, serve


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg and aiosqlite run on asyncio only


@pytest.fixture(autouse=True)
def no_connection_left_checked_out() -> Iterator[None]:
    """Fail any test after which a pool, any pool, still has a connection checked out."""
    checked_out: set[ConnectionPoolEntry] = set()

    def on_checkout(_: object, record: ConnectionPoolEntry, __: object) -> None:
        checked_out.add(record)

    def on_checkin(_: object, record: ConnectionPoolEntry) -> None:
        checked_out.discard(record)

    event.listen(Pool, "checkout", on_checkout)
    event.listen(Pool, "checkin", on_checkin)
    yield
    event.remove(Pool, "checkout", on_checkout)
    event.remove(Pool, "checkin", on_checkin)
    assert not checked_out, f"{len(checked_out)} connection(s) left checked out: a leak"


async def _run_on_server(statement: str) -> None:
    engine = create_async_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A PostgreSQL database of this test run's own, so that parallel runs never meet."""
    if not USE_POSTGRES:
        yield None
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_run_on_server(f'CREATE DATABASE "{name}"'))
    yield make_url(TEST_DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_run_on_server(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(postgres_url: str | None, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to an empty database for one test."""
    if postgres_url is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    yield postgres_url
    # Everything the test made goes, the tables of tests' own included.
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    async with serve(settings) as app_and_client:
        yield app_and_client


@pytest.fixture
def app(served: tuple[FastAPI, AsyncClient]) -> FastAPI:
    return served[0]


@pytest.fixture
def client(served: tuple[FastAPI, AsyncClient]) -> AsyncClient:
    return served[1]
