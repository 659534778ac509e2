"""Read replicas (REPLICA_URLS), against a primary and a streaming replica of the tests'
own (replication.py): where reads and writes go, read-your-writes, a lagging or stopped
replica, a stopped primary, the connection budget, /health/db, and multi-host URLs."""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import text

from {{ cookiecutter.package_name }}.dependencies import ReadSessionDep, SessionDep

{% if cookiecutter.metrics -%}
from ..support import (
    TEST_DATABASE_URL,
    make_settings,
    requires_postgres,
    sample,
    scrape,
    serve,
)
{% else -%}
from ..support import TEST_DATABASE_URL, make_settings, requires_postgres, serve
{% endif -%}
from .replication import ReplicationCluster, replication_cluster, wait_until

# With the other PostgreSQL-only tests: a project tested on SQLite has no use for them.
pytestmark = [pytest.mark.anyio, pytest.mark.slow, requires_postgres]

# Fast checks, so that the tests see a replica's state change within a fraction of a second.
CHECK_INTERVAL = 0.1


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide, for the module's cluster


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[ReplicationCluster]:
    async with replication_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
async def urls(cluster: ReplicationCluster) -> tuple[str, str]:
    """The app's database on the primary and on the replica."""
    return await cluster.create_database("app")


@asynccontextmanager
async def serve_with_replicas(
    primary_url: str, replica_urls: list[str], wait: bool = True, **overrides: object
) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """The app with replicas, and two routes that say which server answered; with
    ``wait``, once every replica is in use."""
    options = {"replica_check_interval": CHECK_INTERVAL} | overrides
    settings = make_settings(primary_url, replica_urls=replica_urls, **options)
    async with serve(settings) as (app, client):

        @app.get("/server/read")
        async def read_server(session: ReadSessionDep) -> dict[str, object]:
            row = (await session.execute(text(SERVER))).one()
            return {"port": row[0], "name": row[1], "replica": row[2]}

        @app.get("/server/write")
        async def write_server(session: SessionDep) -> dict[str, object]:
            row = (await session.execute(text(SERVER))).one()
            return {"port": row[0], "name": row[1], "replica": row[2]}

        if wait:
            await until_replicas(client, "ok")
        yield app, client


def serve_on(
    urls: tuple[str, str], **overrides: object
) -> AbstractAsyncContextManager[tuple[FastAPI, AsyncClient]]:
    """``serve_with_replicas`` on the module's primary, with its replica as the one replica."""
    primary_url, replica_url = urls
    return serve_with_replicas(primary_url, [replica_url], **overrides)


SERVER = "SELECT inet_server_port(), current_setting('application_name'), pg_is_in_recovery()"


async def replica_states(client: AsyncClient) -> list[str]:
    return [replica["status"] for replica in (await client.get("/health/db")).json()["replicas"]]


async def until_replicas(client: AsyncClient, state: str, within: float = 10) -> None:
    async def reached() -> bool:
        return all(status == state for status in await replica_states(client))

    await wait_until(reached, f"every replica {state!r} on /health/db", within)


async def test_reads_go_to_the_replicas_in_turn_and_writes_to_the_primary(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    primary_url, replica_url = urls
    # Two pools on the one replica, told apart by their application_name.
    replicas = [f"{replica_url}?application_name=first", f"{replica_url}?application_name=second"]
    async with serve_with_replicas(primary_url, replicas) as (_, client):
        reads = [(await client.get("/server/read")).json() for _ in range(6)]
        writes = [(await client.get("/server/write")).json() for _ in range(2)]
        created = await client.post("/items", json={"name": "on the primary"})

    assert {read["port"] for read in reads} == {cluster.replica.port}
    assert all(read["replica"] for read in reads)
    assert Counter(read["name"] for read in reads) == {"first": 3, "second": 3}
    assert {write["port"] for write in writes} == {cluster.primary.port}
    assert not any(write["replica"] for write in writes)
    assert created.status_code == 201


async def test_a_client_reads_its_own_writes_whatever_the_lag(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    # A replica far behind, but within the bound: it stays in use for reads.
    async with serve_on(urls, replica_max_lag=600) as (_, client):
        await cluster.pause_replay()
        try:
            created = [
                (await client.post("/items", json={"name": f"written {n}"})).json()
                for n in range(5)
            ]
            reads = [await client.get(f"/items/{item['id']}") for item in created]
            missing = await client.get("/items/987654321")
            on_replica = await cluster.replica.fetchval(
                "SELECT count(*) FROM items WHERE id = $1", created[0]["id"], database="app"
            )
            still_in_use = (await client.get("/server/read")).json()
        finally:
            await cluster.resume_replay()

    assert on_replica == 0  # the replica has not replayed the writes
    assert [read.status_code for read in reads] == [200] * 5
    assert [read.json()["name"] for read in reads] == [f"written {n}" for n in range(5)]
    assert missing.status_code == 404  # confirmed on the primary
    assert still_in_use["replica"]


async def test_a_lagging_replica_is_left_out_until_it_catches_up(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    async with serve_on(urls, replica_max_lag=0.5) as (_, client):
        await cluster.pause_replay()
        try:
            # Commits the replica receives and does not replay: its lag grows.
            deadline = time.monotonic() + 10
            while await replica_states(client) != ["lagging"]:
                assert time.monotonic() < deadline, await client.get("/health/db")
                await client.post("/items", json={"name": "lag"})
                await asyncio.sleep(0.1)
            lagging = (await client.get("/server/read")).json()
            health = (await client.get("/health/db")).json()
        finally:
            await cluster.resume_replay()
        await until_replicas(client, "ok")
        caught_up = (await client.get("/server/read")).json()

    assert not lagging["replica"]  # read on the primary meanwhile
    assert health["replicas"][0]["lag_seconds"] > 0.5
    assert "REPLICA_MAX_LAG" in health["replicas"][0]["detail"]
    assert caught_up["replica"]


async def until_lagging(client: AsyncClient, write: bool = True, within: float = 10) -> dict:
    """Write (through the app) until /health/db shows the replica lagging; its report."""
    deadline = time.monotonic() + within
    while True:
        health = (await client.get("/health/db")).json()
        if health["replicas"][0]["status"] == "lagging":
            return health
        assert time.monotonic() < deadline, health
        if write:
            assert (await client.post("/items", json={"name": "lag"})).status_code == 201
        await asyncio.sleep(0.1)


async def test_a_replica_cut_off_from_the_primary_is_left_out_while_it_falls_behind(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    """Its WAL receiver cannot reach the primary (a broken network path, a lost slot): the
    replica has replayed all it received and believes it lags nothing."""
    conninfo = await cluster.replica.fetchval("SHOW primary_conninfo")
    async with serve_on(urls, replica_max_lag=0.5) as (_, client):
        await cluster.replica.execute(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'",
            "SELECT pg_reload_conf()",
        )
        try:
            health = await until_lagging(client)
            meanwhile = (await client.get("/server/read")).json()
        finally:
            quoted = conninfo.replace("'", "''")
            await cluster.replica.execute(
                f"ALTER SYSTEM SET primary_conninfo = '{quoted}'", "SELECT pg_reload_conf()"
            )
            await cluster.wait_streaming()
        await until_replicas(client, "ok")

    assert health["replicas"][0]["lag_seconds"] > 0.5
    assert not meanwhile["replica"]


async def test_a_replica_busy_with_reads_is_measured_all_the_same(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    primary_url, replica_url = urls
    options = {"replica_max_lag": 0.5, "pool_size": 1, "max_overflow": 0}
    async with serve_with_replicas(primary_url, [replica_url], **options) as (app, client):

        @app.get("/hold")
        async def hold(session: ReadSessionDep) -> dict[str, bool]:
            replica = (await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one()
            await asyncio.sleep(3)  # the replica pool's one connection, held
            return {"replica": replica}

        holding = asyncio.create_task(client.get("/hold"))
        await asyncio.sleep(0.2)
        await cluster.pause_replay()
        try:
            health = await until_lagging(client)
        finally:
            await cluster.resume_replay()
        held = await holding

    assert held.json() == {"replica": True}
    assert health["replicas"][0]["pool"]["checked_out"] == 1


async def test_a_table_the_replica_has_not_replayed_yet_is_read_on_the_primary(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    """A migration applied a moment ago: the replica does not have the table yet."""
    async with serve_on(urls, replica_max_lag=600) as (app, client):

        @app.get("/fresh")
        async def fresh(session: ReadSessionDep) -> dict[str, int]:
            return {"rows": (await session.execute(text("SELECT count(*) FROM fresh"))).one()[0]}

        await cluster.pause_replay()
        try:
            await cluster.primary.execute(
                "CREATE TABLE fresh (n int)", "INSERT INTO fresh VALUES (1)", database="app"
            )
            answer = await client.get("/fresh")
            still_in_use = (await client.get("/server/read")).json()
        finally:
            await cluster.resume_replay()
            await cluster.primary.execute("DROP TABLE fresh", database="app")

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"rows": 1}
    assert still_in_use["replica"]  # a query error does not take the replica out


async def reads_for(client: AsyncClient, seconds: float, path: str = "/items") -> Counter:
    statuses: Counter = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses[(await client.get(path)).status_code] += 1
        await asyncio.sleep(0.01)
    return statuses


@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "no-pre-ping"])
async def test_a_replica_that_stops_costs_reads_nothing(
    cluster: ReplicationCluster,
    urls: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    pre_ping: bool,
) -> None:
    primary_url, replica_url = urls
    caplog.set_level(logging.WARNING)
    # A tight bound, and nothing written: a replica restarted while the primary is idle
    # lags nothing, however long ago its last replayed transaction was.
    options = {"pool_pre_ping": pre_ping, "replica_max_lag": 0.5}
    async with serve_with_replicas(primary_url, [replica_url], **options) as (_, client):
        await reads_for(client, 0.2)  # connections open on the replica
        await cluster.stop_replica()
        try:
            while_down = await reads_for(client, 1)
            health = (await client.get("/health/db")).json()
            meanwhile = (await client.get("/server/read")).json()
        finally:
            await cluster.start_replica()
        await until_replicas(client, "ok")
        # Without pre-ping, the first read on each connection from before the stop finds
        # it dead (and runs again on the primary); the pool then replaces them all.
        back = [(await client.get("/server/read")).json() for _ in range(1 if pre_ping else 3)]

    assert set(while_down) == {200}, while_down
    assert health["status"] == "ok"
    assert health["replicas"][0]["status"] == "down"
    assert health["replicas"][0]["detail"] == "connection refused"
    assert not meanwhile["replica"]
    assert back[-1]["replica"]
    # Named as the first failure found it: a read's lost connection, or a check's refusal.
    assert any(" is down (" in record.getMessage() for record in caplog.records)


async def test_with_the_primary_down_reads_go_on_and_writes_get_503(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    primary_url, replica_url = urls
    async with serve_with_replicas(primary_url, [replica_url]) as (_, client):
        item = (await client.post("/items", json={"name": "before the outage"})).json()
        await cluster.wait_caught_up()
        await cluster.stop_primary()
        try:
            reads = await reads_for(client, 0.5)
            read_item = await client.get(f"/items/{item['id']}")
            missing = await client.get("/items/987654321")
            writes = [await client.post("/items", json={"name": "lost?"}) for _ in range(3)]
            health = await client.get("/health/db")
        finally:
            await cluster.start_primary()
        # Back: writes are stored again.
        await wait_until(
            lambda: primary_answers(client), "a write to succeed after the restart", 20
        )

    assert set(reads) == {200}, reads
    assert read_item.status_code == 200
    assert missing.status_code == 404  # the replica's answer: the primary cannot confirm it
    for write in writes:
        assert write.status_code == 503, write.text
        assert write.headers["Retry-After"] == "1"
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert "reads are served by the replicas" in health.json()["detail"]


async def test_with_the_primary_down_a_lagging_replica_stays_out(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    """It has received writes it has not replayed: no data is better than wrong data."""
    async with serve_on(urls, replica_max_lag=0.5) as (_, client):
        await cluster.pause_replay()
        try:
            item = (await client.post("/items", json={"name": "not replayed"})).json()
            await until_lagging(client, write=False)
            await cluster.stop_primary()
            try:
                await asyncio.sleep(5 * CHECK_INTERVAL)  # checks that find the primary gone
                health = (await client.get("/health/db")).json()
                read = await client.get(f"/items/{item['id']}")
            finally:
                await cluster.start_primary(wait=False)
        finally:
            await cluster.resume_replay()
            await cluster.wait_streaming()

    assert health["replicas"][0]["status"] == "lagging"
    assert read.status_code == 503, read.text  # never a 404 for a stored item


async def test_a_server_of_another_cluster_is_not_used_as_a_replica(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    primary_url, _ = urls
    # The tests' own database server: up, but no replica of this primary.
    async with serve_with_replicas(primary_url, [TEST_DATABASE_URL], wait=False) as (_, client):
        await until_replicas(client, "down")
        health = (await client.get("/health/db")).json()

    assert health["replicas"][0]["detail"] == "not a replica of the primary (another cluster)"


async def test_the_checks_connections_are_named_and_few(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    primary_url, replica_url = urls
    async with serve_with_replicas(primary_url, [replica_url]):
        names = {
            server: await node.fetchval(
                "SELECT array_agg(application_name) FROM pg_stat_activity"
                " WHERE application_name LIKE '% replica check'"
            )
            for server, node in (("primary", cluster.primary), ("replica", cluster.replica))
        }

    app = "{{ cookiecutter.package_name }} replica check"
    assert names == {"primary": [app], "replica": [app]}


async def primary_answers(client: AsyncClient) -> bool:
    return (await client.post("/items", json={"name": "after"})).status_code == 201


async def test_health_metrics_and_budget_count_every_pool_by_name(
    cluster: ReplicationCluster, urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    primary_url, replica_url = urls
    caplog.set_level(logging.WARNING)
    # 100 workers x 15 connections exceed each server's max_connections (100 by default).
    sizes = {"workers": 100, "pool_size": 5, "max_overflow": 10}
    async with serve_with_replicas(primary_url, [replica_url], **sizes) as (_, client):
        health = (await client.get("/health/db")).json()
{%- if cookiecutter.metrics %}
        before = await scrape(client)
        assert (await client.get("/items/987654321")).status_code == 404  # run twice
        samples = await scrape(client)
{%- endif %}

    primary_name = f"127.0.0.1:{cluster.primary.port}/app"
    replica_name = f"127.0.0.1:{cluster.replica.port}/app"
    assert health["pool_name"] == primary_name
    assert [replica["pool_name"] for replica in health["replicas"]] == [replica_name]
    assert set(health["replicas"][0]["pool"]) == set(health["pool"])
{%- if cookiecutter.metrics %}
    metered = {dict(labels)["pool_name"] for name, labels in samples if name.startswith("db_")}
    assert {primary_name, replica_name} <= metered
    # A read run again on the primary is one request, under its route.
    requests = "http_server_request_duration_seconds_count"
    labels = {
        "http_request_method": "GET",
        "http_route": "/items/{item_id}",
        "http_response_status_code": "404",
    }
    assert sample(samples, requests, **labels) - sample(before, requests, **labels) == 1
{%- endif %}
    budget = [r.getMessage() for r in caplog.records if "Connection budget" in r.getMessage()]
    for name in (primary_name, replica_name):
        assert any(f"exceeded on {name}: WORKERS x" in line for line in budget), budget


async def test_a_replica_on_the_primarys_server_counts_in_its_budget(
    cluster: ReplicationCluster, urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    primary_url, _ = urls
    caplog.set_level(logging.WARNING)
    # 4 workers x 15 = 60 fit in 100 connections; two pools on one server, each with a
    # connection for the replica checks (2 x 4 x 16 = 128), do not.
    sizes = {"workers": 4, "pool_size": 5, "max_overflow": 10}  # whatever the bake's defaults
    async with serve_with_replicas(primary_url, [primary_url], **sizes):
        pass

    budget = [r.getMessage() for r in caplog.records if "Connection budget" in r.getMessage()]
    counted = "pools x WORKERS x (POOL_SIZE + MAX_OVERFLOW + 1 for the replica checks) = 2 x 4 x"
    assert any(counted in line for line in budget), budget


async def test_a_multi_host_url_finds_the_primary(
    cluster: ReplicationCluster, urls: tuple[str, str]
) -> None:
    replica_first = (
        f"postgresql+asyncpg://postgres@/app?host=127.0.0.1:{cluster.replica.port}"
        f"&host=127.0.0.1:{cluster.primary.port}&target_session_attrs=read-write"
    )
    standby = (
        f"postgresql+asyncpg://postgres@/app?host=127.0.0.1:{cluster.primary.port}"
        f"&host=127.0.0.1:{cluster.replica.port}&target_session_attrs=standby"
    )
    async with serve_with_replicas(replica_first, [standby]) as (_, client):
        created = await client.post("/items", json={"name": "found the primary"})
        write = (await client.get("/server/write")).json()
        read = (await client.get("/server/read")).json()
        health = (await client.get("/health/db")).json()

    assert created.status_code == 201
    assert write["port"] == cluster.primary.port
    assert read["port"] == cluster.replica.port
    hosts = f"127.0.0.1:{cluster.replica.port},127.0.0.1:{cluster.primary.port}"
    assert health["pool_name"] == f"{hosts}/app"
