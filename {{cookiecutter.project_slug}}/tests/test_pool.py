import asyncio
import time

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, StaticPool

from {{ cookiecutter.package_name }}.database import Database, SessionDep
from {{ cookiecutter.package_name }}.models import Base, Item
from {{ cookiecutter.package_name }}.settings import Settings

from .support import make_settings, requires_postgres, serve

pytestmark = pytest.mark.anyio


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
    monkeypatch.setenv("POOL_SIZE", "2")
    monkeypatch.setenv("MAX_OVERFLOW", "1")
    monkeypatch.setenv("POOL_TIMEOUT", "0.3")
    monkeypatch.setenv("POOL_PRE_PING", "false")
    monkeypatch.setenv("POOL_RECYCLE", "600")
    settings = make_settings(database_url)

    database = Database(settings, Base.metadata)
    try:
        assert database.engine.pool._pre_ping is False
        assert database.engine.pool._recycle == 600
    finally:
        await database.dispose()
    await assert_pool_limits(settings, size=2, overflow=1, wait=0.3)


def test_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:s3cret@db.internal:5432/app")

    settings = Settings(_env_file=None)

    assert settings.database_url.get_secret_value().endswith("@db.internal:5432/app")
    assert "s3cret" not in repr(settings)


async def test_file_sqlite_gets_a_queue_pool_with_the_settings(tmp_path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/app.db", pool_size=4)

    database = Database(settings, Base.metadata)
    try:
        assert isinstance(database.engine.pool, AsyncAdaptedQueuePool)
        assert database.engine.pool.size() == 4
    finally:
        await database.dispose()


async def test_memory_sqlite_shares_one_database_across_sessions() -> None:
    # Pool sizes would be a TypeError for StaticPool; they must be left out, not fail.
    database = Database(make_settings("sqlite+aiosqlite:///:memory:", pool_size=7), Base.metadata)
    try:
        assert isinstance(database.engine.pool, StaticPool)
        await database.check()
        async with database.session_factory() as session:
            session.add(Item(name="kept"))
            await session.commit()
        async with database.session_factory() as session:
            assert (await session.scalars(select(Item.name))).all() == ["kept"]
        assert database.pool_status() == {
            "size": 1,
            "checked_out": 0,
            "checked_in": 1,
            "overflow": 0,
            "max_overflow": 0,
        }
    finally:
        await database.dispose()


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
