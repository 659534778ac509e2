import asyncio
import logging
import threading
import time

import pytest
from httpx import AsyncClient

from .support import make_settings, serve

pytestmark = pytest.mark.anyio


async def sqlite_threads_stopped() -> None:
    """Let aiosqlite's worker threads finish while this test's event loop still runs.

    When a connection fails to open, aiosqlite stops its thread without waiting for it;
    a thread that finishes after the loop has closed raises in the thread.
    """
    deadline = time.monotonic() + 5
    while any("_connection_worker_thread" in thread.name for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "aiosqlite worker threads did not stop"
        await asyncio.sleep(0.01)


async def test_liveness_does_not_need_the_database(client: AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_reports_dialect_and_pool_numbers(
    client: AsyncClient, test_database_url: str
) -> None:
    response = await client.get("/health/db")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["dialect"] == test_database_url.split("+")[0]
    assert body["driver"] in {"asyncpg", "aiosqlite"}
    pool = body["pool"]
    assert pool["checked_out"] == 0  # the check's own connection is back
    assert pool["checked_in"] >= 1
    for number in ("size", "checked_out", "checked_in", "overflow", "max_overflow", "waiting"):
        assert isinstance(pool[number], int)


@pytest.mark.parametrize(
    "unreachable_url",
    [
        # Nothing listens on port 1: asyncpg raises a raw ConnectionRefusedError.
        "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/app",
        "sqlite+aiosqlite:///{tmp_path}/no-such-dir/app.db",
    ],
    ids=["postgres-refused", "sqlite-unopenable"],
)
async def test_app_starts_and_readiness_is_503_without_password_when_database_is_down(
    unreachable_url: str, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(unreachable_url.format(tmp_path=tmp_path))
    async with serve(settings) as (_, client):
        response = await client.get("/health/db")
        liveness = await client.get("/health")
    await sqlite_threads_stopped()

    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert liveness.status_code == 200
    assert "s3cret-pw" not in response.text
    assert "s3cret-pw" not in caplog.text
