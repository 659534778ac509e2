"""A primary and a streaming replica of the tests' own, for the read-replica tests.

``replication_cluster()`` makes a primary with initdb, a replica of it with
``pg_basebackup -R``, starts both on free 127.0.0.1 ports (their Unix sockets in a
temporary directory of their own), waits until the replica streams, and removes both
on exit, also when the test fails. The servers run as the user "postgres" when the
tests run as root (PostgreSQL refuses to run as root), as the servers of
test_connection_failures.py do. Every user gets in without a password (trust), from
127.0.0.1 only; the URLs are ``postgresql+asyncpg://postgres@127.0.0.1:<port>/<db>``.

The controls make the faults the replica tests need: a replica or a primary stopped
(an immediate stop, as a crash) and started again, and WAL replay paused on the replica
so that it lags, by a number of bytes and of seconds that can be read. Every wait is
bounded and says, when it gives up, what it waited for and the end of the server's log.
The machine's own PostgreSQL (on 5432) is never touched: each server has its own data
directory, port and socket directory, and the PG* environment variables are not
passed to the programs.

Usage::

    async with replication_cluster() as cluster:
        await cluster.primary.execute("CREATE TABLE t (n int)")
        await cluster.wait_caught_up()
        await cluster.pause_replay()
        ...
"""

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ..support import free_port, postgres_bindir, running_as_root

# How long one server program (initdb, pg_ctl, pg_basebackup) may take, in seconds.
PROGRAM_TIMEOUT = 60.0
# The default for the waits of the controls, in seconds: a start, a replica to stream.
WAIT_TIMEOUT = 30.0
# How long to wait for a connection, in seconds: a server that is up answers at once.
CONNECT_TIMEOUT = 5.0
# Seconds between two looks while waiting.
POLL_INTERVAL = 0.05
# The replica's name: its cluster_name, which its WAL receiver gives the primary as
# application_name (PostgreSQL 12 or later), so that pg_stat_replication names it.
REPLICA_NAME = "replica"
# How much of a server's log a failure message quotes, in characters.
LOG_TAIL_CHARS = 3000
# Errors of a connection or a query that a wait tries again after.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError)


def skip_unless_servers_can_be_started() -> Path:
    """The bindir of postgres_bindir(); a skip, saying why, where there is none."""
    bindir = postgres_bindir(("initdb", "pg_ctl", "pg_basebackup"))
    if os.name != "posix" or bindir is None:
        pytest.skip("needs PostgreSQL's initdb, pg_ctl and pg_basebackup: starts servers")
    if running_as_root() and not shutil.which("runuser"):
        pytest.skip("needs runuser, as root: PostgreSQL's servers run as the user postgres")
    return bindir


def program_environment() -> dict[str, str]:
    """The environment without PG* variables (PGHOST, PGPORT, ...), so that no program
    reaches for a server that is not one of ours."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


class Node:
    """One server of the cluster: its data directory, log, port, and how to start it,
    stop it and ask it something (as the superuser "postgres", over TCP)."""

    def __init__(self, name: str, bindir: Path, base: Path, port: int) -> None:
        self.name = name
        self.bindir = bindir
        self.base = base  # the cluster's directory, also where the Unix sockets are
        self.data = base / name
        self.log = base / f"{name}.log"
        self.port = port

    def url(self, database: str = "postgres") -> str:
        """The URL the app uses for this server's ``database``: no password (trust)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def command(self, program: str, *args: str) -> list[str]:
        """The command line for one of PostgreSQL's programs, as the user "postgres" when
        this is root."""
        command = [str(self.bindir / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if running_as_root() else command

    def log_tail(self) -> str:
        """The end of the server's log (the last LOG_TAIL_CHARS characters), or ""."""
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    async def run(self, program: str, *args: str, within: float = PROGRAM_TIMEOUT) -> str:
        """Run one of PostgreSQL's programs for this server, within ``within`` seconds;
        what it printed, or a RuntimeError with that and the end of the server's log."""
        command = self.command(program, *args)
        process = await asyncio.create_subprocess_exec(
            *command, env=program_environment(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            printed, _ = await asyncio.wait_for(process.communicate(), within)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"{' '.join(command)} did not finish within {within} s\n"
                f"{self.name}'s log ends with:\n{self.log_tail()}"
            ) from None
        finally:
            if process.returncode is None:  # cancelled
                process.kill()
        output = printed.decode(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed (exit status {process.returncode}):\n{output}\n"
                f"{self.name}'s log ends with:\n{self.log_tail()}"
            )
        return output

    def is_running(self) -> bool:
        """Whether the server's postmaster runs (its postmaster.pid exists)."""
        return (self.data / "postmaster.pid").exists()

    async def start(self, within: float = WAIT_TIMEOUT) -> None:
        """Start the server and wait, at most ``within`` seconds, until it takes
        connections (a replica: once it is consistent, it may not stream yet)."""
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        await self.run(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(round(within)), within=within + 5,
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop the server at once (``pg_ctl -m immediate``, as a crash: the next start
        recovers); nothing when it does not run. It refuses connections afterwards."""
        if self.is_running():
            await self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def stop_now(self) -> None:
        """stop(), blocking: for the removal, which must work even when cancelled."""
        if self.is_running():
            stop = self.command("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
            # Whatever happens, the removal goes on.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    stop, env=program_environment(), capture_output=True, timeout=PROGRAM_TIMEOUT
                )

    async def connect(self, database: str = "postgres") -> asyncpg.Connection:
        """A connection of the superuser to ``database``, over 127.0.0.1; asyncpg's
        ConnectionRefusedError (an OSError) when the server is stopped. Close it."""
        return await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", database=database,
            timeout=CONNECT_TIMEOUT, command_timeout=WAIT_TIMEOUT,
        )  # fmt: skip

    async def fetchval(self, query: str, *args: object, database: str = "postgres") -> Any:
        """The first value of the first row of ``query``, on a connection of its own."""
        connection = await self.connect(database)
        try:
            return await connection.fetchval(query, *args)
        finally:
            await connection.close()

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run the statements, each in a transaction of its own (autocommit)."""
        connection = await self.connect(database)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, within: float, node: Node | None = None
) -> None:
    """Look every POLL_INTERVAL seconds until ``check()`` is true; a connection or query
    error counts as not yet. A TimeoutError after ``within`` seconds, naming ``what``,
    the last error and the end of ``node``'s log."""
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while True:
        try:
            if await check():
                return
            last_error = None
        except CONNECTION_ERRORS as error:
            last_error = error
        if time.monotonic() >= deadline:
            message = f"{what}: not within {within} s"
            if last_error is not None:
                message += f" (last error: {type(last_error).__name__}: {last_error})"
            if node is not None:
                message += f"\n{node.name}'s log ends with:\n{node.log_tail()}"
            raise TimeoutError(message)
        await asyncio.sleep(POLL_INTERVAL)


class ReplicationCluster:
    """A primary and its streaming replica (see the module's docstring). Made and removed
    by replication_cluster(); every control is a coroutine."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="replication-pg-"))
        self.primary = Node("primary", bindir, self.base, free_port())
        replica_port = free_port()
        while replica_port == self.primary.port:
            replica_port = free_port()
        self.replica = Node(REPLICA_NAME, bindir, self.base, replica_port)

    @property
    def primary_url(self) -> str:
        """The primary's URL, database "postgres"."""
        return self.primary.url()

    @property
    def replica_url(self) -> str:
        """The replica's URL, database "postgres"."""
        return self.replica.url()

    async def make(self, within: float = WAIT_TIMEOUT) -> None:
        """initdb the primary, configure it for streaming replication and start it; make
        the replica with ``pg_basebackup -R`` and start it; wait until it streams."""
        if running_as_root():
            shutil.chown(self.base, "postgres")
        primary = self.primary
        await primary.run(
            "initdb", "-D", str(primary.data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self.configure_primary()
        await primary.start(within)

        replica = self.replica
        await replica.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(replica.data), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync",
        )  # fmt: skip
        self.configure_replica()
        await replica.start(within)
        await self.wait_streaming(within)

    def configure_primary(self) -> None:
        """The primary's settings (which pg_basebackup copies to the replica) and its
        pg_hba.conf."""
        primary = self.primary
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tests/pool/replication.py\n"
                f"port = {primary.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                "cluster_name = 'primary'\n"
                "fsync = off\n"
                "shared_buffers = 32MB\n"
                "wal_level = replica\n"
                "max_wal_senders = 4\n"
                "hot_standby = on\n"
                # The replica reports its positions every second (not every 10 s) and
                # tries the primary again 0.1 s after losing it (not 5 s).
                "wal_receiver_status_interval = 1s\n"
                "wal_retrieve_retry_interval = 100ms\n"
            )
        # Everyone without a password, from the Unix socket and 127.0.0.1 only; the
        # replication line is what pg_basebackup and the replica's WAL receiver use.
        (primary.data / "pg_hba.conf").write_text(
            "# tests/pool/replication.py\n"
            "local all         all                trust\n"
            "host  all         all  127.0.0.1/32  trust\n"
            "host  replication all  127.0.0.1/32  trust\n"
        )

    def configure_replica(self) -> None:
        """The replica's own port and name, after the primary's settings it copied."""
        replica = self.replica
        with (replica.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {replica.port}\ncluster_name = '{REPLICA_NAME}'\n")

    def remove(self) -> None:
        """Stop both servers at once and remove their directory; blocking, never raises."""
        try:
            self.replica.stop_now()
        finally:
            try:
                self.primary.stop_now()
            finally:
                shutil.rmtree(self.base, ignore_errors=True)

    async def wait_streaming(self, within: float = WAIT_TIMEOUT) -> None:
        """Wait, at most ``within`` seconds, until the primary's pg_stat_replication shows
        the replica streaming and the replica is in recovery (pg_is_in_recovery())."""

        async def streaming() -> bool:
            return bool(
                await self.primary.fetchval(
                    "SELECT count(*) FROM pg_stat_replication "
                    "WHERE application_name = $1 AND state = 'streaming'",
                    REPLICA_NAME,
                )
            )

        async def in_recovery() -> bool:
            return bool(await self.replica.fetchval("SELECT pg_is_in_recovery()"))

        await wait_until(in_recovery, "the replica in recovery", within, self.replica)
        await wait_until(streaming, "the replica streaming from the primary", within, self.replica)

    async def wait_caught_up(self, within: float = WAIT_TIMEOUT) -> None:
        """Wait, at most ``within`` seconds, until the replica has replayed all the WAL
        the primary has written (replay_lag_bytes() is 0): what was committed on the
        primary before the call can then be read on the replica."""
        target = await self.primary.fetchval("SELECT pg_current_wal_lsn()::text")

        async def replayed() -> bool:
            behind = await self.replica.fetchval(
                "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())", target
            )
            return behind is not None and behind <= 0

        try:
            await wait_until(replayed, f"the replica replaying up to {target}", within)
        except TimeoutError as error:
            state = await self.replay_pause_state()
            raise TimeoutError(
                f"{error} (replay {state})\nreplica's log ends with:\n{self.replica.log_tail()}"
            ) from None

    async def create_database(self, name: str, within: float = WAIT_TIMEOUT) -> tuple[str, str]:
        """Create the database ``name`` on the primary and wait, at most ``within``
        seconds, until the replica has it; its URLs on the primary and on the replica."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        await self.primary.execute(f"CREATE DATABASE {name}")
        await self.wait_caught_up(within)
        return self.primary.url(name), self.replica.url(name)

    async def stop_replica(self) -> None:
        """Stop the replica at once: it refuses connections until start_replica()."""
        await self.replica.stop()

    async def start_replica(self, within: float = WAIT_TIMEOUT, wait: bool = True) -> None:
        """Start the replica and, with ``wait``, wait until it streams again (at most
        ``within`` seconds for each)."""
        await self.replica.start(within)
        if wait:
            await self.wait_streaming(within)

    async def stop_primary(self) -> None:
        """Stop the primary at once, as a crash: it refuses connections, and the replica
        goes on answering reads (and tries the primary again every 0.1 s)."""
        await self.primary.stop()

    async def start_primary(self, within: float = WAIT_TIMEOUT, wait: bool = True) -> None:
        """Start the primary (it recovers from the crash) and, with ``wait``, wait until
        the replica streams from it again (at most ``within`` seconds for each)."""
        await self.primary.start(within)
        if wait:
            await self.wait_streaming(within)

    async def pause_replay(self) -> None:
        """Pause WAL replay on the replica (``pg_wal_replay_pause()``): it goes on
        receiving WAL but applies none, so that what the primary commits from now on
        does not appear on it, and its lag grows, until resume_replay(). The pause holds
        across a stop and start of the primary, not across a restart of the replica."""
        await self.replica.execute("SELECT pg_wal_replay_pause()")

    async def resume_replay(self) -> None:
        """Resume WAL replay on the replica (``pg_wal_replay_resume()``)."""
        await self.replica.execute("SELECT pg_wal_replay_resume()")

    async def replay_pause_state(self) -> str:
        """The replica's ``pg_get_wal_replay_pause_state()``: "not paused", "pause
        requested" (paused before the next WAL record it receives) or "paused"."""
        return await self.replica.fetchval("SELECT pg_get_wal_replay_pause_state()")

    async def replay_lag_bytes(self) -> int:
        """How far, in bytes of WAL, the replica's replay is behind the primary:
        ``pg_wal_lsn_diff(primary's pg_current_wal_lsn(), replica's
        pg_last_wal_replay_lsn())``, never below 0. Both servers must be up."""
        primary_lsn = await self.primary.fetchval("SELECT pg_current_wal_lsn()::text")
        behind = await self.replica.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())", primary_lsn
        )
        return max(0, int(behind))

    async def replay_lag_seconds(self) -> float:
        """How far, in seconds, the replica's replay is behind, as the replica sees it: 0
        when it has replayed all the WAL it received (or more: after a restart it may have
        replayed past where its receiver starts again), else the seconds since the commit
        of the last transaction it replayed (``now() - pg_last_xact_replay_timestamp()``;
        the usual measure, which counts from that commit, however long ago, not from
        the first commit not yet replayed). Needs only the replica up."""
        seconds = await self.replica.fetchval(
            "SELECT CASE WHEN pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() THEN 0 "
            "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
        )
        return float(seconds or 0)


@asynccontextmanager
async def replication_cluster(within: float = WAIT_TIMEOUT) -> AsyncIterator[ReplicationCluster]:
    """A primary and a replica streaming from it, made and started, waited for (at most
    ``within`` seconds for each step); both stopped and removed on exit, also on
    failure. A skip, saying why, where PostgreSQL's programs are missing."""
    bindir = skip_unless_servers_can_be_started()
    cluster = ReplicationCluster(bindir)
    try:
        await cluster.make(within)
        yield cluster
    finally:
        cluster.remove()
