"""A real Prometheus scrapes a baked app whose one connection is held: what it stores is
what happened (pending requests rose, each 503 is one timeout, the connection came back)."""

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from .conftest import need
from .support import (
    BakedVenv,
    Prometheus,
    bake_and_install,
    clean_environment,
    uvicorn_server,
)

pytestmark = pytest.mark.slow

QUEUED = 6  # requests that queue behind the one held connection
POOL_TIMEOUT = 2  # seconds they wait before their 503


@pytest.fixture
def prometheus_executable() -> Iterator[str]:
    executable = shutil.which("prometheus")
    if executable is None:
        need("Prometheus is not installed (.ci/run installs Debian's prometheus)")
    yield executable


async def hold_the_pool(base_url: str, database_url: str) -> Counter:
    """Lock the items table, so that the first ``GET /items`` holds the pool's one
    connection, and send ``QUEUED`` more behind it; release the lock once they timed out."""
    statuses: Counter = Counter()
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    locker = await asyncpg.connect(dsn)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        limits = httpx.Limits(max_connections=QUEUED + 1)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

            async def get_items() -> None:
                statuses[(await client.get("/items")).status_code] += 1

            holder = asyncio.create_task(get_items())
            await asyncio.sleep(0.5)  # it has the connection, and waits for the lock
            await asyncio.gather(*(get_items() for _ in range(QUEUED)))
            # Two more scrapes with the connection still in use, then let it go.
            await asyncio.sleep(2 * Prometheus.SCRAPE_SECONDS)
            await transaction.rollback()
            await holder
    finally:
        await locker.close()
    return statuses


def eventually(prometheus: Prometheus, expression: str, expected: float) -> float | None:
    """The value of ``expression`` once it equals ``expected``, or the last one after 20 s."""
    deadline = time.monotonic() + 20
    while True:
        value = prometheus.value(expression)
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_prometheus_sees_the_pool_exhausted_and_recovered(
    cookies, baked_venv: BakedVenv, scratch_database: str, prometheus_executable: str
) -> None:
    context = {"database_url": scratch_database, "pool_size": 1, "max_overflow": 0,
               "pool_timeout": POOL_TIMEOUT}  # fmt: skip
    project = bake_and_install(cookies, baked_venv, context)
    with uvicorn_server(baked_venv, project, clean_environment()) as server:
        prometheus = Prometheus(prometheus_executable, server.base_url.removeprefix("http://"))
        prometheus.start()
        try:
            assert eventually(prometheus, 'up{job="app"}', 1) == 1, prometheus.log()
            statuses = asyncio.run(hold_the_pool(server.base_url, scratch_database))
            # Every queued request timed out; the one that held the connection was served.
            assert statuses == Counter({503: QUEUED, 200: 1})

            pending = prometheus.value("max_over_time(db_client_connection_pending_requests[5m])")
            assert pending is not None and pending >= 1
            assert eventually(prometheus, "db_client_connection_timeouts_total", QUEUED) == QUEUED
            served_503 = (
                'sum(http_server_request_duration_seconds_count{http_route="/items",'
                'http_response_status_code="503"})'
            )
            assert eventually(prometheus, served_503, QUEUED) == QUEUED
            used = 'db_client_connection_count{state="used"}'
            assert prometheus.value(f"max_over_time({used}[5m])") == 1
            assert eventually(prometheus, used, 0) == 0
            # The holder kept its connection at least as long as the others waited in vain.
            use_time = prometheus.value("db_client_connection_use_time_seconds_sum")
            assert use_time is not None and use_time >= POOL_TIMEOUT
            assert prometheus.value("db_client_connection_max") == 1
        finally:
            prometheus.stop()
