"""libpq's URL parameters reach the server as asyncpg's arguments (connection_parameters.py).

The TLS parameters are proven against a server with certificates in the template's own
tests; here, what the plain PostgreSQL server the tests run against can show.
"""

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from {{ cookiecutter.package_name }}.database import Database

from ..support import make_settings, requires_postgres, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def with_query(database_url: str, query: str) -> str:
    return f"{database_url}{'&' if '?' in database_url else '?'}{query}"


async def show(database: Database, *names: str) -> list[str]:
    """The server's values of run-time parameters, on a connection of the app's pool."""
    async with database.read_engine.connect() as connection:
        query = text("SELECT current_setting(:name)")
        return [await connection.scalar(query, {"name": name}) for name in names]


@requires_postgres
async def test_application_name_options_and_target_session_attrs_reach_the_server(
    database_url: str,
) -> None:
    url = with_query(
        database_url,
        "application_name=billing-api&options=-c%20work_mem%3D8MB%20-c%20search_path%3Dpublic"
        "&target_session_attrs=read-write&connect_timeout=10&client_encoding=UTF8",
    )

    async with serve(make_settings(url)) as (app, client):
        created = await client.post("/items", json={"name": "with parameters"})
        values = await show(app.state.database, "application_name", "work_mem", "search_path")

    assert created.status_code == 201
    assert values == ["billing-api", "8MB", "public"]


@requires_postgres
async def test_a_dropped_parameter_is_said_once_at_startup(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """channel_binding=require, as provider consoles write it: asyncpg cannot bind, so it
    is dropped with one line; with sslmode=prefer the plain test server still serves."""
    url = with_query(database_url, "sslmode=prefer&channel_binding=require")

    with caplog.at_level(logging.WARNING):
        async with serve(make_settings(url)) as (_, client):
            listed = await client.get("/items")

    assert listed.status_code == 200
    notes = [r.getMessage() for r in caplog.records if "channel_binding" in r.getMessage()]
    assert len(notes) == 1
    assert notes[0].startswith("DATABASE_URL: channel_binding=require is dropped: asyncpg")


@requires_postgres
async def test_the_tls_keys_passphrase_is_never_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = with_query(database_url, "sslmode=disable&sslpassword=Zx9-passphrase")

    with caplog.at_level(logging.DEBUG):
        async with serve(make_settings(url)) as (_, client):
            assert (await client.get("/health/db")).status_code == 200

    assert "Database postgresql+asyncpg://" in caplog.text  # the startup line names it
    assert "Zx9-passphrase" not in caplog.text


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never answers, as a stuck server does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


async def test_connect_timeout_in_the_url_wins_over_connect_timeout_setting(
    silent_port: int,
) -> None:
    url = f"postgresql+asyncpg://app@127.0.0.1:{silent_port}/app?connect_timeout=1"
    settings = make_settings(url, connect_timeout=60, pool_timeout=60)

    started = time.monotonic()
    async with serve(settings) as (_, client):  # the startup check connects too
        health = await asyncio.wait_for(client.get("/health/db"), timeout=30)
    waited = time.monotonic() - started

    assert health.status_code == 503
    # The URL's 1 s, not CONNECT_TIMEOUT's 60 s (the bound leaves room for a busy machine).
    assert waited < 10
