"""libpq's URL parameters reach the server as asyncpg's arguments (connection_parameters.py).

The TLS parameters are proven against a server with certificates in the template's own
tests; here, what the plain PostgreSQL server the tests run against can show.
"""

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import certifi
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.database import Database
from {{ cookiecutter.package_name }}.engine import connect_args, create_engines, engine_url

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


def test_a_dropped_parameter_is_said_once_when_the_engine_is_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """channel_binding=require, as provider consoles write it: asyncpg cannot bind, so it
    is dropped with one line, TLS still required (test_tls.py in the template connects)."""
    url = "postgresql+asyncpg://app@db.example/app?sslmode=require&channel_binding=require"

    with caplog.at_level(logging.WARNING):
        engines = create_engines(make_url(url), make_settings(url))

    notes = [r.getMessage() for r in caplog.records if "channel_binding" in r.getMessage()]
    assert len(notes) == 1
    assert notes[0].startswith("DATABASE_URL: channel_binding=require is dropped: asyncpg")
    assert engines.read_engine.url.query == {}  # nothing left for asyncpg to refuse


def test_only_a_postgresql_urls_parameters_are_taken_out_for_asyncpg() -> None:
    postgresql = make_url("postgresql+asyncpg://app@db/app?sslmode=require&host=db2:5432")
    sqlite = make_url("sqlite+aiosqlite:///file:app.db?mode=ro&uri=true")

    assert engine_url(postgresql).query == {"host": "db2:5432"}  # SQLAlchemy's own
    assert engine_url(sqlite) == sqlite  # sqlite3's


def asyncpg_arguments(url: str) -> dict[str, Any]:
    return connect_args(make_url(url), make_settings(url))


def test_ssl_true_is_tls_checked_against_the_systems_cas_and_the_host_name() -> None:
    context = asyncpg_arguments("postgresql+asyncpg://app@db.example/app?ssl=true")["ssl"]

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2  # libpq's default


def test_libpq_tls_parameters_reach_asyncpg_as_libpq_writes_them() -> None:
    """asyncpg reads them from a connection string with libpq's meaning."""
    ca = certifi.where()  # any PEM file of CA certificates: it is read at startup
    url = (
        f"postgresql+asyncpg://app@db.example/app?sslmode=verify-full&sslrootcert={ca}"
        "&ssl_min_protocol_version=TLSv1.3"
    )

    dsn = asyncpg_arguments(url)["dsn"]

    assert parse_qs(urlsplit(dsn).query) == {
        "sslmode": ["verify-full"],
        "sslrootcert": [ca],
        "ssl_min_protocol_version": ["TLSv1.3"],
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("connect_timeout=2.5", {"timeout": 2.5}),
        ("target_session_attrs=read-only", {"target_session_attrs": "read-only"}),
        # Any readable file: it is read at startup.
        (f"passfile={quote(__file__)}", {"passfile": __file__}),
    ],
)
def test_connection_options_reach_asyncpg(query: str, expected: dict[str, Any]) -> None:
    arguments = asyncpg_arguments(f"postgresql+asyncpg://app@db.example/app?{query}")

    assert arguments.items() >= expected.items()


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
