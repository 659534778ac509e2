"""The metrics tell the truth about a pool under load, in one process and across workers."""

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import multiprocess
from sqlalchemy import make_url, select

from {{ cookiecutter.package_name }}.dependencies import SessionDep
from {{ cookiecutter.package_name }}.metrics import pool_name
from {{ cookiecutter.package_name }}.models import Item

from ..support import make_settings, sample, scrape, serve, uvicorn_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

POOL_TIMEOUT = 0.5
REQUESTS = 40


def add_route_held_until(app: FastAPI, release: asyncio.Event) -> None:
    """GET /held: takes the connection, and keeps it until ``release`` is set."""

    @app.get("/held")
    async def held(session: SessionDep) -> None:
        await session.execute(select(Item).limit(1))
        await release.wait()


async def wait_for(client: httpx.AsyncClient, name: str, value: float, **labels: str) -> dict:
    """Scrape until the sample has ``value``; the samples seen then."""
    async with asyncio.timeout(5):
        while True:
            samples = await scrape(client)
            if sample(samples, name, **labels) == value:
                return samples
            await asyncio.sleep(0.01)


async def test_an_exhausted_pool_shows_its_queue_timeouts_and_waits(database_url: str) -> None:
    settings = make_settings(database_url, pool_size=1, max_overflow=0, pool_timeout=POOL_TIMEOUT)
    async with serve(settings) as (app, client):
        release = asyncio.Event()
        add_route_held_until(app, release)
        pool = pool_name(app.state.database.url)
        before = await scrape(client)

        holder = asyncio.create_task(client.get("/held"))
        await wait_for(client, "db_client_connection_count", 1, pool_name=pool, state="used")
        # Two requests queue behind it and time out; /metrics answers all the while.
        timing_out = [asyncio.create_task(client.get("/items")) for _ in range(2)]
        while_full = await wait_for(
            client, "db_client_connection_pending_requests", 2, pool_name=pool
        )
        busy = await asyncio.gather(*timing_out)
        # Two more queue, and get the connection when the holder lets it go.
        admitted = [asyncio.create_task(client.get("/items")) for _ in range(2)]
        await wait_for(client, "db_client_connection_pending_requests", 2, pool_name=pool)
        await asyncio.sleep(0.05)
        release.set()
        served = await asyncio.gather(holder, *admitted)
        used = {"pool_name": pool, "state": "used"}
        after = await wait_for(client, "db_client_connection_count", 0, **used)

    assert [response.json()["error"] for response in busy] == ["database_busy"] * 2
    assert [response.status_code for response in served] == [200] * 3
    assert sample(while_full, "db_client_connection_count", pool_name=pool, state="used") == 1

    def grew(name: str, **labels: str) -> float:
        labels["pool_name"] = pool
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("db_client_connection_timeouts_total") == 2
    # Every admission is one wait observed: the holder's (none), and the two queued.
    assert grew("db_client_connection_wait_time_seconds_count") == 3
    assert grew("db_client_connection_wait_time_seconds_bucket", le="0.001") == 1
    assert grew("db_client_connection_wait_time_seconds_sum") >= 0.05 * 2
    assert grew("db_client_connection_use_time_seconds_count") == 3
    assert sample(after, "db_client_connection_pending_requests", pool_name=pool) == 0
    assert sample(after, "db_client_connection_count", pool_name=pool, state="idle") == 1
    assert sample(after, "db_client_connection_create_time_seconds_count", pool_name=pool) >= 1


def requests_in(worker_file: Path) -> float:
    """How many requests one worker counted, from its own file of histograms."""
    return sum(
        sample.value
        for metric in multiprocess.MultiProcessCollector.merge([str(worker_file)])
        for sample in metric.samples
        if sample.name == "http_server_request_duration_seconds_count"
    )


async def test_workers_numbers_add_up_in_every_scrape(database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    env = {
        "DATABASE_URL": database_url,
        "POOL_SIZE": "2",
        "MAX_OVERFLOW": "1",
        "WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    pool = pool_name(make_url(database_url))
    async with uvicorn_server(env, workers=2) as server:
        # No keep-alive: a new TCP connection per request, so both workers take some.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
            # Both workers started: each keeps its startup check's connection, idle.
            await wait_for(client, "db_client_connection_count", 2, pool_name=pool, state="idle")
            responses = await asyncio.gather(*(client.get("/items") for _ in range(REQUESTS)))
            scrapes = [await scrape(client) for _ in range(4)]
        served_by_each = [
            requests_in(worker_file) for worker_file in directory.glob("histogram_*.db")
        ]

    assert [response.status_code for response in responses] == [200] * REQUESTS, server.output
    assert len(served_by_each) == 2 and all(served_by_each), served_by_each
    route = {"http_request_method": "GET", "http_route": "/items"}
    for samples in scrapes:
        assert sample(samples, "http_server_request_duration_seconds_count",
                      http_response_status_code="200", **route) == REQUESTS  # fmt: skip
        assert sample(samples, "db_client_connection_max", pool_name=pool) == 2 * (2 + 1)
        assert sample(samples, "db_client_connection_count", pool_name=pool, state="used") == 0
        waits = sample(samples, "db_client_connection_wait_time_seconds_count", pool_name=pool)
        assert waits == REQUESTS  # one admission each: /health/db does not queue
    # A worker that stops takes its gauges out of the sums; its counters stay.
    assert not list(directory.glob("gauge_live*.db")), server.output
