"""The primary and replica of replication.py, and each of its controls, do what they say:
the replica streams what the primary commits; a paused replay holds it back while the
lag grows, in bytes and seconds; a stopped server refuses connections and streams again
once started. One cluster for the module; each test leaves it streaming, replay on."""

from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
from sqlalchemy import text

from ..support import plain_engine, requires_postgres
from .replication import ReplicationCluster, replication_cluster, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow, requires_postgres]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-wide, for the module's cluster


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[ReplicationCluster]:
    async with replication_cluster() as cluster:
        await cluster.primary.execute("CREATE TABLE marks (name text PRIMARY KEY)")
        await cluster.wait_caught_up()
        yield cluster


async def write(cluster: ReplicationCluster, name: str) -> None:
    await cluster.primary.execute(f"INSERT INTO marks VALUES ('{name}')")


async def on_replica(cluster: ReplicationCluster, name: str) -> bool:
    return bool(await cluster.replica.fetchval("SELECT count(*) FROM marks WHERE name = $1", name))


async def received_all(cluster: ReplicationCluster) -> None:
    """Wait until the replica has received (not necessarily replayed) all of the
    primary's WAL, so that what it has not replayed is held back by the replay."""
    target = await cluster.primary.fetchval("SELECT pg_current_wal_lsn()::text")

    async def received() -> bool:
        behind = await cluster.replica.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_receive_lsn())", target
        )
        return behind <= 0

    await wait_until(received, "the replica receiving the primary's WAL", 10)


async def test_the_replica_streams_what_the_primary_commits(cluster: ReplicationCluster) -> None:
    assert (
        cluster.primary_url
        == f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.primary.port}/postgres"
    )
    assert (
        cluster.replica_url
        == f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.replica.port}/postgres"
    )
    assert 5432 not in (cluster.primary.port, cluster.replica.port)

    await write(cluster, "streamed")
    await cluster.wait_caught_up()

    # Read as the app reads: through its engine's connect arguments, on the replica's URL.
    engine = plain_engine(cluster.replica_url)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT pg_is_in_recovery()")) is True
            names = await connection.scalars(text("SELECT name FROM marks"))
            assert "streamed" in names.all()
    finally:
        await engine.dispose()
    assert await cluster.primary.fetchval("SELECT pg_is_in_recovery()") is False
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await cluster.replica.execute("INSERT INTO marks VALUES ('written on the replica')")
    assert await cluster.replay_lag_bytes() == 0
    assert await cluster.replay_lag_seconds() == 0


async def test_a_paused_replay_holds_rows_back_while_the_lag_grows(
    cluster: ReplicationCluster,
) -> None:
    await cluster.pause_replay()
    try:
        await write(cluster, "held back")
        await received_all(cluster)
        # "pause requested" until the replay reaches its next WAL record.
        assert await cluster.replay_pause_state() in ("pause requested", "paused")
        assert not await on_replica(cluster, "held back")
        bytes_behind = await cluster.replay_lag_bytes()
        seconds_behind = await cluster.replay_lag_seconds()
        assert bytes_behind > 0
        assert seconds_behind > 0

        await write(cluster, "held back too")
        await received_all(cluster)
        assert not await on_replica(cluster, "held back too")
        assert await cluster.replay_lag_bytes() > bytes_behind
        assert await cluster.replay_lag_seconds() > seconds_behind
    finally:
        await cluster.resume_replay()

    await cluster.wait_caught_up(within=10)
    assert await on_replica(cluster, "held back")
    assert await on_replica(cluster, "held back too")
    assert await cluster.replay_pause_state() == "not paused"
    assert await cluster.replay_lag_bytes() == 0
    assert await cluster.replay_lag_seconds() == 0


async def test_a_stopped_replica_refuses_connections_and_streams_again_once_started(
    cluster: ReplicationCluster,
) -> None:
    await cluster.stop_replica()
    with pytest.raises(OSError):  # ConnectionRefusedError
        await cluster.replica.connect()

    async def replica_gone() -> bool:
        return not await cluster.primary.fetchval("SELECT count(*) FROM pg_stat_replication")

    await wait_until(replica_gone, "the primary losing the replica", 10)
    await write(cluster, "while the replica was down")

    await cluster.start_replica(within=10)
    await cluster.wait_caught_up(within=10)
    assert await on_replica(cluster, "while the replica was down")


async def test_a_stopped_primary_refuses_connections_while_the_replica_answers_reads(
    cluster: ReplicationCluster,
) -> None:
    await cluster.stop_primary()
    with pytest.raises(OSError):
        await cluster.primary.connect()
    assert await on_replica(cluster, "streamed")
    assert await cluster.replica.fetchval("SELECT pg_is_in_recovery()") is True

    await cluster.start_primary(within=10)
    await write(cluster, "after the primary came back")
    await cluster.wait_caught_up(within=10)
    assert await on_replica(cluster, "after the primary came back")


async def test_a_database_created_on_the_primary_appears_on_the_replica(
    cluster: ReplicationCluster,
) -> None:
    primary_url, replica_url = await cluster.create_database("made_on_primary")

    assert primary_url == cluster.primary.url("made_on_primary")
    assert replica_url.endswith(f"127.0.0.1:{cluster.replica.port}/made_on_primary")
    assert (
        await cluster.replica.fetchval("SELECT current_database()", database="made_on_primary")
        == "made_on_primary"
    )


async def test_a_cluster_is_removed_on_exit_also_on_failure() -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        async with replication_cluster() as cluster:
            base = cluster.base
            assert base.is_dir()
            raise RuntimeError("the test failed")

    assert not await anyio.Path(base).exists()
    for node in (cluster.primary, cluster.replica):
        with pytest.raises(OSError):
            await node.connect()
