"""The service under trouble: a full pool, leaks, failed commits, dead or silent databases."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from httpx import AsyncClient
from sqlalchemy import MetaData, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from {{ cookiecutter.package_name }} import pre_ping
from {{ cookiecutter.package_name }}.database import Database
from {{ cookiecutter.package_name }}.dependencies import ReadSessionDep, SessionDep
from {{ cookiecutter.package_name }}.models import Item

from ..support import (
    TEST_DATABASE_URL,
    add_holding_route,
    make_settings,
    requires_postgres,
    serve,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def count_items(app: FastAPI) -> int:
    database: Database = app.state.database
    async with database.session_factory() as session:
        return await session.scalar(select(func.count()).select_from(Item))


# Pool exhausted


async def test_pool_exhaustion_returns_503_with_retry_after_and_recovers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=0.3)
    async with serve(settings) as (app, client):
        add_holding_route(app, seconds=1.0)

        responses = await asyncio.gather(*(client.get("/hold") for _ in range(4)))
        after = await client.get("/items")

        busy = [r for r in responses if r.status_code == 503]
        assert sorted({r.status_code for r in responses}) == [200, 503]
        for response in busy:
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error"] == "database_busy"
            assert "pool is busy" in response.json()["detail"]
        assert after.status_code == 200
        assert app.state.database.pool_status()["checked_out"] == 0
    warnings = [r for r in caplog.records if "pool busy" in r.getMessage()]
    assert len(warnings) == len(busy)
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)
    assert "'checked_out': 1" in warnings[0].getMessage()


async def test_waiting_requests_are_counted_and_a_long_wait_is_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        database_url, pool_size=1, max_overflow=0, pool_timeout=5, pool_wait_warning=0.1
    )
    async with serve(settings) as (app, client):
        add_holding_route(app, seconds=0.5)
        first = asyncio.create_task(client.get("/hold"))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(client.get("/hold"))
        await asyncio.sleep(0.1)

        readiness = await client.get("/health/db")
        held = await asyncio.gather(first, second)

    assert readiness.status_code == 200
    assert readiness.json()["status"] == "busy"
    assert readiness.json()["pool"]["waiting"] == 1
    assert [r.status_code for r in held] == [200, 200]
    assert any("waited" in r.getMessage() for r in caplog.records)


# No leaks, whatever happens


async def test_client_that_disconnects_mid_query_leaves_no_connection_out(
    database_url: str,
) -> None:
    async with serve(make_settings(database_url, pool_size=1, max_overflow=0)) as (app, client):

        @app.get("/slow-query")
        async def slow_query(session: SessionDep) -> None:
            if TEST_DATABASE_URL:
                await session.execute(text("SELECT pg_sleep(5)"))
            else:  # SQLite has no sleep: hold the transaction open instead
                await session.execute(select(Item))
                await asyncio.sleep(5)

        request = asyncio.create_task(client.get("/slow-query"))
        await asyncio.sleep(0.3)
        request.cancel()  # the in-process app runs in this task: it is cancelled mid-query
        with pytest.raises(asyncio.CancelledError):
            await request

        assert app.state.database.pool_status()["checked_out"] == 0
        assert (await client.get("/items")).status_code == 200


async def test_http_exception_after_a_write_rolls_it_back(app: FastAPI, client: AsyncClient):
    @app.post("/write-then-refuse")
    async def write_then_refuse(session: SessionDep) -> None:
        session.add(Item(name="half-written"))
        await session.flush()
        raise HTTPException(403, "refused after writing")

    response = await client.post("/write-then-refuse")

    assert response.status_code == 403
    assert await count_items(app) == 0


async def test_handler_error_after_a_write_rolls_it_back(app: FastAPI, client: AsyncClient):
    @app.post("/write-then-crash")
    async def write_then_crash(session: SessionDep) -> None:
        session.add(Item(name="half-written"))
        await session.flush()
        raise RuntimeError("bug after writing")

    response = await client.post("/write-then-crash")

    assert response.status_code == 500
    assert await count_items(app) == 0


async def test_streaming_response_reads_through_its_own_session(
    app: FastAPI, client: AsyncClient
) -> None:
    for n in range(3):
        await client.post("/items", json={"name": f"streamed-{n}"})

    @app.get("/items-stream")
    async def stream_items() -> StreamingResponse:
        database: Database = app.state.database

        # The request's session is closed before streaming starts: the stream opens its own.
        async def lines() -> AsyncIterator[str]:
            async with database.session() as session:
                for name in await session.scalars(select(Item.name).order_by(Item.id)):
                    yield name + "\n"

        return StreamingResponse(lines(), media_type="text/plain")

    response = await client.get("/items-stream")

    assert response.text.splitlines() == ["streamed-0", "streamed-1", "streamed-2"]
    assert app.state.database.pool_status()["checked_out"] == 0


async def test_background_task_writes_through_its_own_session(
    app: FastAPI, client: AsyncClient
) -> None:
    database: Database = app.state.database

    async def record_audit() -> None:
        async with database.session() as session, session.begin():
            session.add(Item(name="audit"))

    @app.post("/with-audit", status_code=202)
    async def with_audit(background: BackgroundTasks, session: SessionDep) -> None:
        await session.execute(select(Item).limit(1))
        background.add_task(record_audit)

    response = await client.post("/with-audit")

    assert response.status_code == 202
    assert await count_items(app) == 1
    assert database.pool_status()["checked_out"] == 0


async def test_background_task_cannot_reuse_the_closed_request_session(
    app: FastAPI, client: AsyncClient
) -> None:
    errors: list[Exception] = []

    @app.post("/misused-session", status_code=202)
    async def misused_session(background: BackgroundTasks, session: SessionDep) -> None:
        async def use_request_session() -> None:
            try:
                await session.execute(select(Item))
            except InvalidRequestError as error:
                errors.append(error)

        background.add_task(use_request_session)

    response = await client.post("/misused-session")

    assert response.status_code == 202
    # close_resets_only=False: an error, not a fresh connection that nobody returns.
    assert len(errors) == 1
    assert "permanently closed" in str(errors[0])
    assert app.state.database.pool_status()["checked_out"] == 0


# Transactions: nothing lost, nothing half-written


@requires_postgres
async def test_commit_that_fails_is_a_409_and_stores_nothing(
    app: FastAPI, client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    database: Database = app.state.database
    async with database.engine.begin() as connection:
        # Checked only at COMMIT: the endpoint's own statements all succeed.
        await connection.execute(
            text(
                "CREATE TABLE labels (item_id integer REFERENCES items (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )

    @app.post("/items-with-label", status_code=201)
    async def create_with_label(session: SessionDep) -> dict[str, int]:
        item = Item(name="labelled")
        session.add(item)
        await session.flush()
        await session.execute(text("INSERT INTO labels VALUES (:id)"), {"id": item.id + 1000})
        return {"id": item.id}

    response = await client.post("/items-with-label")

    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert await count_items(app) == 0
    conflict = [r for r in caplog.records if "Conflict" in r.getMessage()]
    assert conflict and conflict[0].exc_info is None


# Error mapping


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("INSERT INTO items (name) VALUES (NULL)", 500),
        ("INSERT INTO items (id, name) VALUES (1, 'a'), (1, 'b')", 409),
    ],
    ids=["not-null-is-a-bug", "duplicate-is-a-conflict"],
)
async def test_only_conflicts_with_stored_data_are_409s(
    app: FastAPI, client: AsyncClient, statement: str, expected: int
) -> None:
    @app.post("/raw-insert")
    async def raw_insert(session: SessionDep) -> None:
        await session.execute(text(statement))

    response = await client.post("/raw-insert")

    assert response.status_code == expected
    assert await count_items(app) == 0


async def test_programming_error_is_a_500_not_a_misleading_503(
    app: FastAPI, client: AsyncClient
) -> None:
    @app.get("/broken-query")
    async def broken_query(session: SessionDep) -> None:
        await session.execute(text("SELECT * FROM no_such_table"))

    response = await client.get("/broken-query")

    assert response.status_code == 500


async def test_sqlalchemy_pool_timeout_is_a_503_too(app: FastAPI, client: AsyncClient) -> None:
    """Sessions outside requests (background work) wait in SQLAlchemy's own pool queue."""

    @app.get("/pool-timeout")
    async def pool_timeout() -> None:
        raise PoolTimeoutError("QueuePool limit of size 1 overflow 0 reached")

    response = await client.get("/pool-timeout")

    assert response.status_code == 503
    assert response.json()["error"] == "database_busy"


async def test_os_error_outside_the_database_is_a_500(app: FastAPI, client: AsyncClient):
    @app.get("/disk-full")
    async def disk_full() -> None:
        raise OSError(28, "No space left on device")

    response = await client.get("/disk-full")

    assert response.status_code == 500


# Database down or silent


class SilentServer:
    """A TCP server that accepts connections and never says a word."""

    async def __aenter__(self) -> int:
        self.writers: list[asyncio.StreamWriter] = []
        self.server = await asyncio.start_server(self.ignore, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def ignore(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        await reader.read()

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


# Each way of being unreachable, named: test_connection_failures.py.


# Dead connections


async def terminate_app_connections(database_url: str, settle: float = 0.2) -> int:
    """pg_terminate_backend on every connection of the app; ``settle``: seconds to wait after."""
    admin = create_async_engine(database_url)
    try:
        async with admin.connect() as connection:
            terminated = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = :app"
                ),
                {"app": "{{ cookiecutter.package_name }}"},
            )
    finally:
        await admin.dispose()
    await asyncio.sleep(settle)  # the server closes the sockets asynchronously
    return terminated


async def warm_pool(client: AsyncClient, app: FastAPI, connections: int) -> None:
    add_holding_route(app, seconds=0.2)
    await asyncio.gather(*(client.get("/hold") for _ in range(connections)))
    assert app.state.database.pool_status()["checked_in"] == connections


@requires_postgres
async def test_with_pre_ping_requests_survive_dropped_connections(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_pre_ping=True)
    async with serve(settings) as (app, client):
        await warm_pool(client, app, 2)
        assert await terminate_app_connections(database_url) == 2

        responses = [await client.get("/items") for _ in range(5)]

    assert [r.status_code for r in responses] == [200] * 5
    assert any("discarded" in r.getMessage() for r in caplog.records)


@requires_postgres
@pytest.mark.parametrize(
    ("settle", "goodbye_read"),
    [(0, True), (0.2, True), (0.2, False)],
    ids=["at-once", "goodbye-read", "goodbye-not-read-yet"],
)
async def test_with_pre_ping_connections_dropped_right_after_a_burst_cost_no_request(
    database_url: str, monkeypatch: pytest.MonkeyPatch, settle: float, goodbye_read: bool
) -> None:
    """Connections used a moment ago, then dropped: reads and writes all still succeed.

    "goodbye-not-read-yet" makes the checkout check blind to the driver's closed flag, as
    when a request takes a connection in the instant before the server's goodbye is read:
    each dead connection then fails its first statement, so reads must be run again on a
    new connection, and writes must find out by their ping.
    """
    if not goodbye_read:
        monkeypatch.setattr(pre_ping, "driver_says_closed", lambda _: False)
    settings = make_settings(database_url, pool_size=3, max_overflow=2, pool_pre_ping=True)
    async with serve(settings) as (app, client):
        await warm_pool(client, app, 5)
        burst = [client.get("/items") for _ in range(10)]
        assert {r.status_code for r in await asyncio.gather(*burst)} == {200}
        assert await terminate_app_connections(database_url, settle) == 5

        # Writes first: each must find its connection dead on its own.
        after = [client.post("/items", json={"name": f"after-{n}"}) for n in range(4)]
        after += [client.get("/items") for _ in range(6)]
        after += [client.get("/items/999999") for _ in range(2)]
        responses = await asyncio.gather(*after)
        one_by_one = [(await client.get("/items")).status_code for _ in range(6)]

    assert [r.status_code for r in responses] == [201] * 4 + [200] * 6 + [404] * 2
    assert one_by_one == [200] * 6


@requires_postgres
async def test_with_pre_ping_a_read_runs_again_and_its_session_stays_usable(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The read is run again at the session's level: its transaction ends cleanly, so the
    session goes on (a second statement, a rollback) as if nothing had happened."""
    monkeypatch.setattr(pre_ping, "driver_says_closed", lambda _: False)
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    async with serve(settings) as (app, client):
        database: Database = app.state.database
        assert (await client.post("/items", json={"name": "kept"})).status_code == 201
        assert await terminate_app_connections(database_url) == 1

        async with database.read_session() as session:
            first = (await session.scalars(select(Item.name))).all()
            await session.rollback()
            second = (await session.scalars(select(Item.name))).all()

    assert first == second == ["kept"]
    assert any("running it again" in r.getMessage() for r in caplog.records)


async def insert_through_the_connection(session: AsyncSession) -> None:
    connection = await session.connection()
    await connection.execute(insert(Item).values(name="through the connection"))


@pytest.mark.parametrize(
    "write",
    [
        lambda session: session.execute(insert(Item).values(name="orm insert")),
        lambda session: session.execute(text("INSERT INTO items (name) VALUES ('raw')")),
        lambda session: insert_through_the_connection(session),
        lambda session: session.execute(
            text("WITH gone AS (DELETE FROM items RETURNING id) SELECT count(*) FROM gone")
        ),
    ],
    ids=["insert", "text-insert", "connection-insert", "with-delete"],
)
async def test_the_read_session_refuses_to_write_and_stores_nothing(
    database_url: str, write: Callable[[AsyncSession], Awaitable[object]]
) -> None:
    """Its connection is in autocommit mode: a write would be stored at once, outside any
    unit of work, and with pre-ping run again after a drop."""
    async with serve(make_settings(database_url)) as (app, client):
        assert (await client.post("/items", json={"name": "kept"})).status_code == 201

        @app.post("/misused")
        async def misused(session: ReadSessionDep) -> None:
            await write(session)

        response = await client.post("/misused")
        listed = await client.get("/items")

    assert response.status_code == 500
    assert [item["name"] for item in listed.json()] == ["kept"]


async def test_an_endpoint_takes_one_session(database_url: str) -> None:
    """Two would each queue for a connection; with every connection taken by requests
    that hold one, none would get its second (pool_size=1 shows it at once)."""
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=1)
    async with serve(settings) as (app, client):

        @app.post("/both")
        async def both(session: SessionDep, read_session: ReadSessionDep) -> None:
            session.add(Item(name="never stored"))

        response = await client.post("/both")
        listed = await client.get("/items")

    assert response.status_code == 500
    assert listed.json() == []


@requires_postgres
async def test_without_pre_ping_one_request_fails_with_503_and_the_pool_heals(
    database_url: str,
) -> None:
    settings = make_settings(database_url, pool_size=2, max_overflow=0, pool_pre_ping=False)
    async with serve(settings) as (app, client):
        await warm_pool(client, app, 2)
        assert await terminate_app_connections(database_url) == 2

        responses = [await client.get("/items") for _ in range(5)]

    statuses = [r.status_code for r in responses]
    assert statuses[0] == 503
    assert responses[0].json()["error"] == "database_unavailable"
    # A disconnect invalidates every older connection at once: only one request fails.
    assert statuses[1:] == [200] * 4


@requires_postgres
async def test_connections_are_replaced_after_pool_recycle(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_recycle=1)
    async with serve(settings) as (app, client):

        @app.get("/backend")
        async def backend(session: SessionDep) -> int:
            return await session.scalar(text("SELECT pg_backend_pid()"))

        first = (await client.get("/backend")).json()
        again = (await client.get("/backend")).json()
        await asyncio.sleep(1.2)
        recycled = (await client.get("/backend")).json()

    assert again == first
    assert recycled != first


# Slow queries


@requires_postgres
async def test_statement_past_the_timeout_is_a_504_and_its_connection_stays_healthy(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Sent to the server at connect, which PgBouncer would refuse: direct connections only.
    settings = make_settings(
        database_url, pool_size=1, max_overflow=0, statement_timeout=0.3, connection_pooler="none"
    )
    async with serve(settings) as (app, client):

        @app.get("/backend")
        async def backend(session: SessionDep, sleep: float = 0) -> int:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": sleep})
            return await session.scalar(text("SELECT pg_backend_pid()"))

        before = await client.get("/backend")
        slow = await client.get("/backend", params={"sleep": 2})
        after = await client.get("/backend")

    assert slow.status_code == 504
    assert slow.json()["error"] == "statement_timeout"
    assert after.status_code == 200
    assert after.json() == before.json()  # the same connection, not a replacement
    assert not any("discarded" in r.getMessage() for r in caplog.records)


# SQLite


async def test_sqlite_concurrent_writers_all_succeed_with_default_settings(tmp_path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/app.db")
    async with serve(settings) as (app, client):
        created = await asyncio.gather(
            *(client.post("/items", json={"name": f"writer-{n}"}) for n in range(50))
        )
        async with app.state.database.engine.connect() as connection:
            journal_mode = await connection.scalar(text("PRAGMA journal_mode"))

        assert [r.status_code for r in created] == [201] * 50
        assert await count_items(app) == 50
    assert journal_mode == "wal"


def drop_every_table(connection: Connection) -> None:
    """Whatever made the schema (create_all or migrations), leave an empty database."""
    tables = MetaData()
    tables.reflect(connection)
    tables.drop_all(connection)


async def test_database_down_at_startup_then_back_serves_the_api_without_a_probe(
    database_url: str,
) -> None:
    """The tables come with the first request that reaches the database, not only /health/db."""
    async with serve(make_settings(database_url)) as (app, client):
        database: Database = app.state.database
        await database.engine.dispose()
        async with database.engine.begin() as connection:
            await connection.run_sync(drop_every_table)
        database.schema_ready = False  # as if the database had been down at startup

        created = await client.post("/items", json={"name": "after the outage"})

        assert created.status_code == 201
        assert (await client.get("/items")).status_code == 200


@pytest.mark.parametrize(
    ("sqlstate", "status"),
    [("53300", 503), ("57P03", 503), ("25006", 503), ("40001", 503), ("40P01", 503),
     ("42P01", 500)],
    ids=["too-many-connections", "starting-up", "read-only", "serialization", "deadlock",
         "undefined-table"],
)  # fmt: skip
@requires_postgres
async def test_sqlstates_that_mean_not_now_are_503s_and_bugs_stay_500s(
    app: FastAPI, client: AsyncClient, sqlstate: str, status: int
) -> None:
    @app.get("/raise-sqlstate")
    async def raise_sqlstate(session: SessionDep) -> None:
        await session.execute(
            text(f"DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '{sqlstate}'; END $$")
        )

    response = await client.get("/raise-sqlstate")

    assert response.status_code == status
    if status == 503:
        assert response.headers["Retry-After"] == "1"


async def test_concurrent_requests_to_a_silent_database_all_fail_fast(database_url: str):
    """One failed connect opens a short window in which the rest fail at once, not queue."""
    async with SilentServer() as port:
        url = f"postgresql+asyncpg://app@127.0.0.1:{port}/app"
        settings = make_settings(
            url, pool_size=2, max_overflow=0, connect_timeout=0.5, pool_timeout=5
        )
        async with serve(settings) as (_, client):
            started = time.monotonic()
            responses = await asyncio.gather(*(client.get("/items") for _ in range(20)))
            elapsed = time.monotonic() - started

    assert {r.json()["error"] for r in responses} == {"database_unavailable"}
    assert elapsed < 3  # not 20 requests queued behind 0.5 s connects, nor pool_timeout
