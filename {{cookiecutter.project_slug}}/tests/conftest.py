"""Fixtures: the app on a test database, each test's writes rolled back when it ends.

``client`` talks to the app in-process. Every request of a test runs in one database
transaction that is rolled back afterwards (SQLAlchemy's "Joining a Session into an
External Transaction" recipe), so no test sees another's rows and nothing is left behind.

The test database is a temporary SQLite file or, when ``TEST_DATABASE_URL`` names one, a
PostgreSQL database; its tables are brought up to date once per run. Its role needs no
more than to use that database: no CREATEDB. Tests that need an empty database of their
own (``database_url``) create one, and skip with the reason where the role may not.

``pytest`` runs the tests of your code; ``pytest --slow`` adds the tests marked slow, of
the pool machinery in tests/pool/.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event, func, make_url, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from starlette.types import Receive, Scope, Send

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.database import DATABASE_ERRORS, Database
from {{ cookiecutter.package_name }}.engine import create_engines
from {{ cookiecutter.package_name }}.models import Base
from {{ cookiecutter.package_name }}.settings import Settings

from .support import (
    TEST_DATABASE_URL,
    TEST_DATABASE_URL_PROBLEM,
    USE_POSTGRES,
    make_settings,
    plain_engine,
)

# PostgreSQL's SQLSTATE for "permission denied".
INSUFFICIENT_PRIVILEGE = "42501"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow: the pool machinery's, in tests/pool/",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if TEST_DATABASE_URL_PROBLEM:
        pytest.exit(TEST_DATABASE_URL_PROBLEM, returncode=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the slow tests unless ``--slow`` (or a ``-m`` expression) asks for them."""
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


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


async def create_tables(url: str) -> list[str]:
    """The app's own schema step (the migrations, or the models' tables); returns the
    tables that already hold rows, which the tests would see."""
    database = Database(make_settings(url), Base.metadata)
    try:
        await database.check()
        async with database.session() as session:
            counts = {
                table.name: await session.scalar(select(func.count()).select_from(table))
                for table in Base.metadata.sorted_tables
            }
    finally:
        await database.dispose()
    return [name for name, count in counts.items() if count]


@pytest.fixture(scope="session")
def test_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database the tests share, its tables up to date; rows never outlive a test."""
    if USE_POSTGRES:
        url = TEST_DATABASE_URL
    else:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('database') / 'test.db'}"
    try:
        tables_with_rows = asyncio.run(create_tables(url))
    except DATABASE_ERRORS as error:
        pytest.exit(f"TEST_DATABASE_URL cannot be used: {one_line(error)}", returncode=1)
    if tables_with_rows:
        pytest.exit(
            f"TEST_DATABASE_URL: tables {', '.join(tables_with_rows)} hold rows; the tests "
            "need empty tables (they roll back their own): use a database for tests only",
            returncode=1,
        )
    return url


def one_line(error: BaseException) -> str:
    """The error's type and the first line of the driver's message (no URL, no password)."""
    cause = getattr(error, "orig", None) or error
    cause = cause.__cause__ or cause  # the driver's own exception, under SQLAlchemy's adapter
    first_line = (str(cause).splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line}"


def begin_sqlite_transactions_explicitly(connection: Connection) -> None:
    """SQLAlchemy's recipe for SAVEPOINT on SQLite: the driver must not begin on its own."""
    connection.connection.dbapi_connection.isolation_level = None
    event.listen(connection, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))


@pytest.fixture
def settings(test_database_url: str) -> Settings:
    return make_settings(test_database_url)


class OneRequestAtATime:
    """The requests of a test share its one connection: let them in one at a time, so
    that a test may send them concurrently (``asyncio.gather``) without interleaving
    their SAVEPOINTs on it. Concurrency itself is tested in tests/pool/."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.turn = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.turn:
            await self.app(scope, receive, send)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """The app, with its lifespan, and one database transaction for the whole test.

    The app's own session factories are bound to one connection, in a transaction that
    is rolled back when the test ends; ``join_transaction_mode="create_savepoint"`` turns
    each session's transaction into a SAVEPOINT, its commit into a RELEASE and its
    rollback into a ROLLBACK TO SAVEPOINT. So the endpoints run the app's own code
    (SessionDep commits, ReadSessionDep refuses to write), and nothing outlives the test.

    An exception that the app does not turn into a response is raised in the test, with
    its message, where production would answer 500. What the transaction cannot show:
    requests truly in parallel (they take turns here; tests/pool/ runs them in parallel
    on real sessions), constraints PostgreSQL checks only at COMMIT (DEFERRABLE), and a
    write sent through ``session.connection()`` of a ReadSessionDep, which only the
    autocommit connection of production refuses.
    """
    app = create_app(settings)
    # An engine of the test's own, built as the app builds its: the test's connection has
    # the app's connect-time settings without taking a connection from the app's pool.
    engines = create_engines(make_url(settings.database_url.get_secret_value()), settings)
    transport = ASGITransport(app=OneRequestAtATime(app))
    try:
        async with (
            LifespanManager(app),
            AsyncClient(transport=transport, base_url="http://test") as client,
            engines.transaction_engine.connect() as connection,
        ):
            if connection.dialect.name == "sqlite":
                await connection.run_sync(begin_sqlite_transactions_explicitly)
            transaction = await connection.begin()
            database: Database = app.state.database
            for factory in (database.session_factory, database.read_session_factory):
                factory.configure(bind=connection, join_transaction_mode="create_savepoint")
            try:
                yield app, client
                # A session left open would hold its SAVEPOINT; in production, a connection.
                assert connection.get_nested_transaction() is None, "a session was left open"
            finally:
                await transaction.rollback()
    finally:
        await engines.read_engine.dispose()


@pytest.fixture
def app(served: tuple[FastAPI, AsyncClient]) -> FastAPI:
    return served[0]


@pytest.fixture
def client(served: tuple[FastAPI, AsyncClient]) -> AsyncClient:
    return served[1]


@pytest.fixture
async def session(app: FastAPI) -> AsyncIterator[AsyncSession]:
    """A session of the app's, in the test's transaction: to add rows before requests, or
    to look at what they stored. ``await session.commit()`` makes its rows visible to
    the requests (a RELEASE of its SAVEPOINT; the test's transaction still ends rolled back).
    """
    database: Database = app.state.database
    async with database.session_factory() as session:
        yield session


async def _run_on_server(statement: str) -> None:
    engine = plain_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A PostgreSQL database of this run's own, for tests that need an empty database."""
    if not USE_POSTGRES:
        yield None
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_run_on_server(f'CREATE DATABASE "{name}"'))
    except ProgrammingError as error:
        if getattr(error.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        pytest.skip("needs CREATEDB: the test makes an empty database of its own")
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
    engine = plain_engine(postgres_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()
