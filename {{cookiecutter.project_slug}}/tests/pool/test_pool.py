import asyncio
import gc
import time

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import event, make_url, select, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool

from {{ cookiecutter.package_name }} import pre_ping
from {{ cookiecutter.package_name }}.admission import Admission, PoolBusyError
from {{ cookiecutter.package_name }}.database import Database
from {{ cookiecutter.package_name }}.dependencies import SessionDep
from {{ cookiecutter.package_name }}.engine import connect_args
from {{ cookiecutter.package_name }}.models import Base, Item
from {{ cookiecutter.package_name }}.settings import Settings

from ..support import add_holding_route, make_settings, requires_postgres, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def assert_pool_limits(settings: Settings, size: int, overflow: int, wait: float) -> None:
    """Hold size + overflow connections, then see one more checkout wait `wait` seconds and fail."""
    database = Database(settings, Base.metadata)
    try:
        assert database.engine.pool.size() == size
        held = [await database.engine.connect() for _ in range(size + overflow)]
        assert database.pool_status()["overflow"] == overflow
        started = time.monotonic()
        limit = f"size {size} overflow {overflow} reached, connection timed out, timeout {wait:.2f}"
        with pytest.raises(PoolTimeoutError, match=limit):
            await database.engine.connect()
        assert time.monotonic() - started >= wait
        for connection in held:
            await connection.close()
        assert database.pool_status()["checked_out"] == 0
    finally:
        await database.dispose()


async def test_pool_settings_reach_the_engine(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=3, max_overflow=2, pool_timeout=0.2)

    await assert_pool_limits(settings, size=3, overflow=2, wait=0.2)


async def test_pool_settings_come_from_environment_variables(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Values unlike the baked defaults, so that the test fails if the variables are ignored.
    baked = Settings.model_fields
    pre_ping_on = not baked["pool_pre_ping"].default
    recycle = baked["pool_recycle"].default + 7
    monkeypatch.setenv("POOL_SIZE", str(baked["pool_size"].default + 1))
    monkeypatch.setenv("MAX_OVERFLOW", "1")
    monkeypatch.setenv("POOL_TIMEOUT", "0.3")
    monkeypatch.setenv("POOL_PRE_PING", str(pre_ping_on).lower())
    monkeypatch.setenv("POOL_RECYCLE", str(recycle))
    settings = make_settings(database_url)

    database = Database(settings, Base.metadata)
    try:
        # POOL_PRE_PING is the app's own checks, hooked on the engine the pool was made by.
        hooked = event.contains(
            database.read_engine.sync_engine, "checkin", pre_ping.remember_when_returned
        )
        assert hooked is pre_ping_on
        assert database.engine.pool._recycle == recycle
    finally:
        await database.dispose()
    await assert_pool_limits(settings, size=baked["pool_size"].default + 1, overflow=1, wait=0.3)


async def test_file_sqlite_gets_a_queue_pool_with_the_settings(tmp_path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/app.db", pool_size=4)

    database = Database(settings, Base.metadata)
    try:
        assert isinstance(database.engine.pool, AsyncAdaptedQueuePool)
        assert database.engine.pool.size() == 4
    finally:
        await database.dispose()


async def test_memory_sqlite_serves_concurrent_writes_from_one_database() -> None:
    settings = make_settings("sqlite+aiosqlite:///:memory:", pool_size=7, max_overflow=3)
    async with serve(settings) as (app, client):
        created = await asyncio.gather(
            *(client.post("/items", json={"name": f"item-{n}"}) for n in range(20))
        )
        listed = await client.get("/items", params={"limit": 100})

        assert [response.status_code for response in created] == [201] * 20
        assert len(listed.json()) == 20
        # One connection holds the one database, whatever the pool settings say.
        assert app.state.database.pool_status() == {
            "size": 1,
            "checked_out": 0,
            "checked_in": 1,
            "overflow": 0,
            "max_overflow": 0,
            "waiting": 0,
        }


async def test_pool_is_empty_after_concurrent_mixed_requests(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=2, max_overflow=1, pool_timeout=10)
    async with serve(settings) as (app, client):

        @app.get("/boom")
        async def boom(session: SessionDep) -> None:
            await session.execute(select(Item).limit(1))
            raise RuntimeError("handler failed after a query")

        requests = []
        for n in range(15):
            requests += [
                client.post("/items", json={"name": f"item-{n}"}),
                client.get("/items"),
                client.get("/items/999999"),
                client.post("/items", json={"name": ""}),
                client.get("/boom"),
            ]
        responses = await asyncio.gather(*requests)

        assert sorted({response.status_code for response in responses}) == [200, 201, 404, 422, 500]
        assert app.state.database.pool_status()["checked_out"] == 0
        assert len((await client.get("/items", params={"limit": 100})).json()) == 15


@requires_postgres
async def test_sequential_requests_reuse_pooled_server_connections(
    app: FastAPI, client: AsyncClient
) -> None:
    @app.get("/backend-pid")
    async def backend_pid(session: SessionDep) -> int:
        return await session.scalar(text("SELECT pg_backend_pid()"))

    pids = {(await client.get("/backend-pid")).json() for _ in range(20)}

    # The readiness check at startup already opened one connection; requests reuse it.
    assert len(pids) == 1


async def test_failed_commit_is_an_error_response_and_stores_nothing(
    app: FastAPI, client: AsyncClient
) -> None:
    def fail_commit(session: Session) -> None:
        if session.info.get("fail_commit"):
            raise RuntimeError("commit failed")

    @app.post("/items-failing-commit", status_code=201)
    async def create_with_failing_commit(session: SessionDep) -> None:
        session.add(Item(name="never stored"))
        session.info["fail_commit"] = True

    event.listen(Session, "before_commit", fail_commit)
    try:
        response = await client.post("/items-failing-commit")
    finally:
        event.remove(Session, "before_commit", fail_commit)

    # The commit runs before the response is sent, so its failure is what the client sees.
    assert response.status_code == 500
    assert (await client.get("/items")).json() == []
    assert app.state.database.pool_status()["checked_out"] == 0


@requires_postgres
async def test_workers_starting_together_create_the_schema_once(database_url: str) -> None:
    databases = [Database(make_settings(database_url), Base.metadata) for _ in range(6)]
    try:
        await asyncio.gather(*(database.check() for database in databases))
    finally:
        for database in databases:
            await database.dispose()


@requires_postgres
@pytest.mark.parametrize(
    ("workers", "pool_size", "max_overflow", "warned"),
    [(1, 5, 10, False), (20, 5, 5, True)],
    ids=["within-budget", "over-budget"],
)
async def test_startup_warns_when_workers_pools_exceed_max_connections(
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    workers: int,
    pool_size: int,
    max_overflow: int,
    warned: bool,
) -> None:
    settings = make_settings(
        database_url,
        workers=workers,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connection_pooler="none",  # behind PgBouncer, PgBouncer keeps the budget
    )
    async with serve(settings):
        pass

    warnings = [r.getMessage() for r in caplog.records if "Connection budget" in r.getMessage()]
    assert bool(warnings) is warned
    if warned:
        assert f"= {workers} x ({pool_size} + {max_overflow}) = {workers * 10}" in warnings[0]
        assert "max_connections=" in warnings[0]


@pytest.mark.parametrize("pooler", ["none", "pgbouncer"])
def test_pgbouncer_mode_turns_off_prepared_statement_caches(pooler: str) -> None:
    settings = make_settings("postgresql+asyncpg://app@db/app", connection_pooler=pooler)

    args = connect_args(make_url(settings.database_url.get_secret_value()), settings)

    behind_pgbouncer = pooler == "pgbouncer"
    assert (args.get("statement_cache_size") == 0) is behind_pgbouncer
    assert (args.get("prepared_statement_cache_size") == 0) is behind_pgbouncer
    # PgBouncer refuses unknown startup parameters such as statement_timeout.
    assert ("statement_timeout" in args["server_settings"]) is not behind_pgbouncer
    assert args["timeout"] == settings.connect_timeout


async def test_admission_is_first_come_first_served_and_counts_back_to_zero() -> None:
    admission = Admission(capacity=1, timeout=0.3, wait_warning=10)
    order: list[str] = []

    async def request(name: str, hold: float) -> None:
        async with admission.admit():
            order.append(name)
            await asyncio.sleep(hold)

    holder = asyncio.create_task(request("holder", 0.1))
    await asyncio.sleep(0.01)
    queued = []
    for name in ("first", "second", "third"):
        queued.append(asyncio.create_task(request(name, 0.01)))
        await asyncio.sleep(0.01)
    await asyncio.gather(holder, *queued)

    assert order == ["holder", "first", "second", "third"]
    assert admission.waiting == 0


async def test_admission_timeouts_and_cancellations_give_their_places_back() -> None:
    admission = Admission(capacity=1, timeout=0.1, wait_warning=10)
    async with admission.admit():
        with pytest.raises(PoolBusyError):
            async with admission.admit():
                pass
        cancelled = asyncio.create_task(admission.admit().__aenter__())
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert admission.waiting == 0

    async with asyncio.timeout(1), admission.admit():  # the one place is free again
        assert admission.waiting == 0


# The request path


def driver_in_transaction(driver_connection: object) -> bool:
    """Whether the driver itself has a transaction open (asyncpg or aiosqlite)."""
    if hasattr(driver_connection, "is_in_transaction"):  # asyncpg
        return driver_connection.is_in_transaction()
    return driver_connection.in_transaction  # aiosqlite


async def test_sessions_write_in_a_transaction_and_reads_run_without_one(
    database_url: str,
) -> None:
    async with serve(make_settings(database_url, pool_size=1, max_overflow=0)) as (app, client):
        database: Database = app.state.database
        assert (await client.get("/items")).status_code == 200  # a read used the connection
        async with database.session() as session:
            session.add(Item(name="never committed"))
            await session.flush()
            raw = await (await session.connection()).get_raw_connection()
            assert driver_in_transaction(raw.driver_connection)
        # The same, only, connection back from the session: the write was rolled back and
        # the connection is in autocommit mode again.
        async with database.read_session() as session:
            assert (await session.scalars(select(Item))).all() == []
            raw = await (await session.connection()).get_raw_connection()
            assert not driver_in_transaction(raw.driver_connection)
        assert database.connections.opened == 1


async def test_a_burst_uses_the_overflow_and_queues_beyond_pool_size_plus_max_overflow(
    database_url: str,
) -> None:
    settings = make_settings(database_url, pool_size=2, max_overflow=3, pool_timeout=10)
    async with serve(settings) as (app, client):
        database: Database = app.state.database
        add_holding_route(app, seconds=0.1)

        statuses = await asyncio.gather(*(client.get("/hold") for _ in range(12)))
        seen = [response.json() for response in statuses]

        assert {response.status_code for response in statuses} == {200}
        assert max(status["checked_out"] for status in seen) == 2 + 3
        assert max(status["overflow"] for status in seen) == 3
        assert max(status["waiting"] for status in seen) > 0
        assert database.connections.opened == 2 + 3


async def test_overflow_connections_are_reused_while_load_swings_then_close_when_idle(
    database_url: str,
) -> None:
    """SQLAlchemy would close each overflow connection on return, and open it again."""
    settings = make_settings(
        database_url, pool_size=1, max_overflow=2, pool_overflow_idle_timeout=1
    )
    async with serve(settings) as (app, client):
        database: Database = app.state.database
        add_holding_route(app, seconds=0.05)
        for _ in range(4):  # a burst, a lull, a burst...
            assert {r.status_code for r in await asyncio.gather(
                *(client.get("/hold") for _ in range(3)))} == {200}  # fmt: skip
            assert (await client.get("/items")).status_code == 200

        assert database.connections.opened == 3
        assert database.pool_status()["overflow"] == 2  # idle, open, checked in
        assert database.pool_status()["checked_in"] == 3
        for _ in range(100):  # the timeout, then the close, on a busy machine: up to 10 s
            if not database.pool_status()["overflow"]:
                break
            await asyncio.sleep(0.1)

        assert database.pool_status() | {"waiting": 0} == {
            "size": 1, "checked_out": 0, "checked_in": 1, "overflow": 0,
            "max_overflow": 2, "waiting": 0,
        }  # fmt: skip
        assert database.connections.closed == 2


async def test_dispose_closes_idle_overflow_connections_too(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=2)
    async with serve(settings) as (app, client):
        database: Database = app.state.database
        add_holding_route(app, seconds=0.05)
        await asyncio.gather(*(client.get("/hold") for _ in range(3)))
        assert database.pool_status()["overflow"] == 2  # lingering, for 10 s

    assert database.connections.opened == 3
    assert database.connections.closed == 3


async def test_overflow_idle_timeout_zero_closes_overflow_on_return_as_sqlalchemy_does(
    database_url: str,
) -> None:
    settings = make_settings(
        database_url, pool_size=1, max_overflow=2, pool_overflow_idle_timeout=0
    )
    async with serve(settings) as (app, client):
        database: Database = app.state.database
        add_holding_route(app, seconds=0.05)
        await asyncio.gather(*(client.get("/hold") for _ in range(3)))

        assert database.pool_status()["overflow"] == 0
        assert database.connections.closed == 2


async def test_pre_ping_tests_only_connections_that_sat_idle(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pre_ping, "PING_AFTER_IDLE_SECONDS", 0.3)
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    async with serve(settings) as (app, client):
        dialect = app.state.database.read_engine.dialect
        pings = []
        ping = dialect.do_ping
        monkeypatch.setattr(dialect, "do_ping", lambda conn: pings.append(1) or ping(conn))

        for _ in range(5):
            assert (await client.get("/items")).status_code == 200
        assert pings == []  # in use a moment ago

        await asyncio.sleep(0.4)
        assert (await client.get("/items")).status_code == 200
        assert pings == [1]


async def test_objects_made_at_startup_are_frozen_out_of_garbage_collection(
    database_url: str,
) -> None:
    gc.unfreeze()
    async with serve(make_settings(database_url)):
        assert gc.get_freeze_count() > 0
    gc.unfreeze()
