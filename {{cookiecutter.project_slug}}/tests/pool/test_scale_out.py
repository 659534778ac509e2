import asyncio
import time

import httpx
import pytest
from sqlalchemy import text

from {{ cookiecutter.package_name }}.dependencies import ReadSessionDep

from ..support import make_settings, plain_engine, requires_postgres, serve, uvicorn_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKERS, POOL_SIZE, MAX_OVERFLOW = 2, 2, 1


async def peak_app_connections(database_url: str, until: asyncio.Event) -> int:
    """The most connections the app held at once, sampled from pg_stat_activity."""
    admin = plain_engine(database_url, pool_size=1)
    peak = 0
    try:
        async with admin.connect() as connection:
            while not until.is_set():
                count = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name = :app"
                    ),
                    {"app": "{{ cookiecutter.package_name }}"},
                )
                peak = max(peak, count)
                await asyncio.sleep(0.02)
    finally:
        await admin.dispose()
    return peak


@requires_postgres
async def test_workers_together_stay_within_workers_times_pool_capacity(database_url: str):
    env = {
        "DATABASE_URL": database_url,
        "POOL_SIZE": str(POOL_SIZE),
        "MAX_OVERFLOW": str(MAX_OVERFLOW),
        "WORKERS": str(WORKERS),
    }
    statuses: list[int] = []
    async with uvicorn_server(env, workers=WORKERS) as server:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            done = asyncio.Event()
            sampler = asyncio.create_task(peak_app_connections(database_url, done))
            deadline = time.monotonic() + 3

            async def load(n: int) -> None:
                while time.monotonic() < deadline:
                    if n % 2:
                        response = await client.post("/items", json={"name": f"w{n}"})
                    else:
                        response = await client.get("/items")
                    statuses.append(response.status_code)

            await asyncio.gather(*(load(n) for n in range(40)))
            done.set()
            peak = await sampler

    assert set(statuses) <= {200, 201}, server.output
    assert len(statuses) > 100
    # Each worker has its own pool; together they never pass their sum.
    assert 1 <= peak <= WORKERS * (POOL_SIZE + MAX_OVERFLOW), server.output


@requires_postgres
async def test_slow_queries_open_overflow_connections_and_never_more_than_the_sum(
    database_url: str,
) -> None:
    """A burst of 50 ms queries gets the overflow it was given, on the server too."""
    settings = make_settings(database_url, pool_size=2, max_overflow=3, pool_timeout=10)
    async with serve(settings) as (app, client):

        @app.get("/slow")
        async def slow(session: ReadSessionDep) -> None:
            await session.execute(text("SELECT pg_sleep(0.05)"))

        done = asyncio.Event()
        sampler = asyncio.create_task(peak_app_connections(database_url, done))
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(40)))
        done.set()
        peak = await sampler

    assert {response.status_code for response in responses} == {200}
    assert 2 < peak <= 2 + 3


async def test_null_pool_opens_a_connection_per_request(database_url: str) -> None:
    async with serve(make_settings(database_url, pool_class="null")) as (app, client):
        opened_before = app.state.database.connections.opened
        for _ in range(5):
            assert (await client.get("/items")).status_code == 200

        assert app.state.database.connections.opened - opened_before == 5
        assert app.state.database.pool_status()["checked_out"] == 0


async def test_queue_pool_reuses_its_connection_across_requests(database_url: str) -> None:
    async with serve(make_settings(database_url)) as (app, client):
        for _ in range(20):
            assert (await client.get("/items")).status_code == 200

        assert app.state.database.connections.opened == 1
