"""Read replicas: a pool on each PostgreSQL streaming replica, and which one a read uses.

``REPLICA_URLS`` lists the replicas. Each gets a pool of its own, sized like the
primary's (``POOL_SIZE``, ``MAX_OVERFLOW``, ...), with its own admission queue. A read
session (``ReadSessionDep``) goes to the next replica in turn that is usable; a session
that writes (``SessionDep``) always goes to the primary, and so does a read when no
replica is usable.

A background task checks every ``REPLICA_CHECK_INTERVAL`` seconds, each server over one
connection of its own (outside the pools and their queues, so that a replica busy with
reads is measured all the same): it notes the primary's WAL position, and asks each
replica how far it has replayed. A replica's lag is how long ago the primary was at the
first position the replica has not replayed yet: 0 when it has replayed all that the
primary had, whether or not anything was written since, and growing, whatever the
replica believes, when it stopped receiving WAL. A replica that does not answer is
"down"; one that lags more than ``REPLICA_MAX_LAG`` is "lagging"; either is left out
until a check finds it back. While the primary cannot be reached, the replicas are not
held to its position: they serve what they have. A read that fails on a replica marks
it down at once, and replica_fallback.py runs that read again on the primary, so the
client sees no error.
"""

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from .admission import Admission
from .connection_budget import warn_if_over_budget
from .connection_failures import exception_chain, name_failure, sqlstate_of
from .engine import connect_args, create_engines, engine_url
from .pool_status import ConnectionCounter, pool_capacity, pool_name, pool_status
from .pre_ping import RETRY_READS
from .read_session import ReadOnlySession
from .settings import Settings

logger = logging.getLogger(__name__)

ReplicaState = Literal["starting", "ok", "lagging", "down"]

# The key a request's scope carries when its read must go to the primary
# (replica_fallback.py runs a read again with it).
READ_FROM_PRIMARY = "database.read_from_primary"
# The primary's WAL position (flushed: a replica can receive nothing further), and how far
# a server has received and replayed WAL (a server not in recovery is a primary, and lags
# nothing, whatever it once replayed), in bytes since the start of the WAL.
PRIMARY_POSITION = text("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint")
REPLICA_POSITION = text(
    "SELECT pg_is_in_recovery(),"
    " pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,"
    " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint"
)
# Which cluster a server belongs to: a replica's is its primary's (superusers and
# pg_monitor may read it; others are not checked).
SYSTEM_IDENTIFIER = text("SELECT system_identifier FROM pg_control_system()")
# Seconds of the primary's positions kept: how far back a lag can be told.
POSITIONS_KEPT = 3600.0
# Seconds between two log lines saying that reads a replica failed ran on the primary.
READ_FAILURE_LOG_INTERVAL = 60.0


class ReplicaPosition(NamedTuple):
    """What a check read on a replica: in recovery, and bytes of WAL replayed and received
    (None where the server has none to tell)."""

    in_recovery: bool
    replayed: int | None
    received: int | None


def check_engine(url: URL, settings: Settings) -> AsyncEngine:
    """One connection to the server of ``url``, for the checks alone: it never waits behind
    requests for a pooled one. Each server then has one more connection per worker, named
    "<application_name> replica check" in pg_stat_activity."""
    args = connect_args(url, settings)
    name = args["server_settings"].get("application_name", "")
    args["server_settings"]["application_name"] = f"{name} replica check".strip()
    return create_async_engine(
        engine_url(url),
        connect_args=args,
        isolation_level="AUTOCOMMIT",
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=settings.pool_recycle,
    )


class Replica:
    """One replica's pool, admission queue and read sessions, and what its checks found.

    ``state`` is "starting" until the first check, then "ok", "lagging" or "down";
    ``lag`` is in seconds (None until a check measured it); ``detail`` names why it is
    left out. The attributes ``url``, ``engine`` and ``admission`` are those of
    ``Database`` too, so that the error handlers treat both alike.
    """

    def __init__(self, url: URL, settings: Settings, index: int) -> None:
        self.url = url
        self.name = pool_name(url)
        self.setting = f"REPLICA_URLS[{index}]"
        engines = create_engines(url, settings, setting=self.setting)
        self.engine = engines.read_engine  # autocommit: replicas are only read
        self.admission = Admission(
            pool_capacity(self.engine.pool), settings.pool_timeout, settings.pool_wait_warning
        )
        self.session_factory = async_sessionmaker(
            self.engine,
            sync_session_class=ReadOnlySession,
            autoflush=False,
            close_resets_only=False,
            info={RETRY_READS: engines.pre_ping},
        )
        self.connections = ConnectionCounter(self.engine)
        self.check_engine = check_engine(url, settings)
        self.state: ReplicaState = "starting"
        self.lag: float | None = None
        self.detail: str | None = "not checked yet"
        self.budget_checked = False
        self.system_identifier: int | None = None
        self._next_failure_log = 0.0

    @property
    def usable(self) -> bool:
        return self.state == "ok"

    def pool_status(self) -> dict[str, int]:
        """The pool's numbers right now (pool_status.py)."""
        return pool_status(self.engine.pool, self.connections, self.admission.waiting)

    def mark(self, state: ReplicaState, detail: str | None = None) -> None:
        """Record what a check or a failed read found; log each change once."""
        if state != self.state:
            if state == "ok":
                again = "" if self.state == "starting" else "back: reads go to it again"
                logger.info("Read replica %s is %s", self.url, again or "in use for reads")
            elif state == "down":
                logger.warning(
                    "Read replica %s is down (%s): reads go to the other replicas or the "
                    "primary until it is back", self.url, detail,
                )  # fmt: skip
            elif state == "lagging":
                logger.warning(
                    "Read replica %s is %s: reads go to the other replicas or the primary "
                    "until it has caught up", self.url, detail,
                )  # fmt: skip
        self.state = state
        self.detail = detail

    def failed(self, error: BaseException) -> None:
        """A read on this replica failed, and runs again on the primary: if it could not
        connect, leave the replica out until a check finds it back; else say so, at most
        once a minute (a grant or a table the replica lacks doubles every such read)."""
        failure = name_failure(error, self.url)
        if failure is not None and failure.connect:
            self.mark("down", failure.kind)
            return
        now = time.monotonic()
        if now >= self._next_failure_log:
            self._next_failure_log = now + READ_FAILURE_LOG_INTERVAL
            logger.warning(
                "A read on read replica %s failed (%s): it ran again on the primary",
                self.url, kind_of(error),
            )  # fmt: skip


class Replicas:
    """Every replica, the turn of the next read, and the task that checks them.

    ``positions`` holds the primary's WAL positions of the last checks, as (monotonic
    seconds, bytes), for as long as a replica may lag and a little more.
    """

    def __init__(self, primary_url: URL, urls: Sequence[str], settings: Settings) -> None:
        self.settings = settings
        self.replicas = [Replica(make_url(url), settings, i) for i, url in enumerate(urls)]
        self.primary_name = pool_name(primary_url)
        self._primary_check = check_engine(primary_url, settings) if self.replicas else None
        self.positions: deque[tuple[float, int]] = deque()
        self.primary_answers = False
        self.primary_system_identifier: int | None = None
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def __bool__(self) -> bool:
        return bool(self.replicas)

    def choose(self) -> Replica | None:
        """The next usable replica in turn; None when there is none (read the primary)."""
        usable = [replica for replica in self.replicas if replica.usable]
        if not usable:
            return None
        return usable[next(self._turn) % len(usable)]

    def start(self) -> None:
        """Check every replica now and every REPLICA_CHECK_INTERVAL seconds after."""
        if self.replicas and self._task is None:
            self._task = asyncio.create_task(self._check_forever(), name="replica checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def engines(self) -> list[AsyncEngine]:
        """Every engine of the replicas and of their checks, to dispose of."""
        engines = [replica.engine for replica in self.replicas]
        engines += [replica.check_engine for replica in self.replicas]
        return engines + ([self._primary_check] if self._primary_check is not None else [])

    async def _check_forever(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.settings.replica_check_interval)

    async def check_all(self) -> None:
        """One round: the primary's position and every replica's, read at once (a server
        that does not answer holds up no other), then each replica judged."""
        found = await asyncio.gather(
            self.note_primary_position(), *(self.read_position(r) for r in self.replicas)
        )
        for replica, position in zip(self.replicas, found[1:], strict=True):
            if isinstance(position, ReplicaPosition):
                self.judge(replica, position)

    async def note_primary_position(self) -> None:
        """Add the primary's WAL position now to ``positions``; when the primary does not
        answer, ``primary_answers`` is False."""
        assert self._primary_check is not None
        try:
            async with asyncio.timeout(self.settings.connect_timeout + 1):
                async with self._primary_check.connect() as connection:
                    position = (await connection.execute(PRIMARY_POSITION)).scalar_one()
                    if self.primary_system_identifier is None:
                        self.primary_system_identifier = await system_identifier(connection)
        except Exception:  # whatever it is, the primary does not answer
            self.primary_answers = False
            return
        self.primary_answers = True
        now = time.monotonic()
        # When the primary was first at a position is what a lag counts from: an idle
        # primary adds nothing.
        if not self.positions or self.positions[-1][1] != position:
            self.positions.append((now, position))
        while self.positions[0][0] < now - POSITIONS_KEPT:
            self.positions.popleft()

    async def read_position(self, replica: Replica) -> ReplicaPosition | None:
        """What ``replica`` has received and replayed; None, and the replica marked down,
        when it does not answer."""
        try:
            # Bounded: a replica that stopped answering must not hold the checks up.
            async with asyncio.timeout(self.settings.connect_timeout + 1):
                async with replica.check_engine.connect() as connection:
                    row = (await connection.execute(REPLICA_POSITION)).one()
                    if replica.system_identifier is None:
                        replica.system_identifier = await system_identifier(connection)
                    if not replica.budget_checked:
                        await self.check_budget(connection, replica)
        except Exception as error:  # whatever it is, the replica is left out until it passes
            failure = name_failure(error, replica.url)
            replica.mark("down", failure.kind if failure else f"no answer ({type(error).__name__})")
            return None
        return ReplicaPosition(*row)

    def judge(self, replica: Replica, position: ReplicaPosition) -> None:
        """Mark ``replica`` from what its check read: another cluster's server is down for
        reads, one that lags past REPLICA_MAX_LAG lagging, any other ok."""
        primary, own = self.primary_system_identifier, replica.system_identifier
        if primary is not None and own is not None and primary != own:
            replica.mark("down", "not a replica of the primary (another cluster)")
            return
        replica.lag = self.lag(position)
        limit = self.settings.replica_max_lag
        if replica.lag > limit:
            replica.mark("lagging", f"{replica.lag:.1f} s behind (REPLICA_MAX_LAG={limit:g})")
        else:
            replica.admission.note_reachable()  # reads need not fail fast any more
            replica.mark("ok")

    def lag(self, position: ReplicaPosition) -> float:
        """Seconds since the primary was at the first position the replica has not
        replayed. While the primary does not answer, a replica that has replayed all it
        received lags nothing: it has all that can be had, and reads must go on."""
        if not position.in_recovery or position.replayed is None:
            return 0.0
        caught_up = position.received is None or position.replayed >= position.received
        if not self.primary_answers and caught_up:
            return 0.0
        for noted, primary_position in self.positions:
            if primary_position > position.replayed:
                return time.monotonic() - noted
        return 0.0

    async def check_budget(self, connection: AsyncConnection, replica: Replica) -> None:
        """The budget warning for ``replica``'s server, once per server: the primary's
        check (database.py) covers a server it shares with replicas."""
        servers = hosts(replica.name)
        same_server = [other for other in self.replicas if hosts(other.name) & servers]
        if not hosts(self.primary_name) & servers:
            pools = self.pools_on(replica.name)
            await warn_if_over_budget(
                connection, self.settings, pools, replica.name, with_replica_checks=True
            )
        for other in same_server:
            other.budget_checked = True

    def pools_on(self, name: str) -> int:
        """How many of this process's pools reach a server of the pool named ``name``: two
        URLs with a host:port in common share its max_connections."""
        servers = hosts(name)
        names = [self.primary_name, *(replica.name for replica in self.replicas)]
        return sum(1 for other in names if hosts(other) & servers)


def hosts(name: str) -> set[str]:
    """The host:port pairs of a pool's name (several for a failover URL)."""
    return set(name.rsplit("/", 1)[0].split(","))


async def system_identifier(connection: AsyncConnection) -> int | None:
    """The server's cluster identifier; None where the role may not read it. (The check
    connections are in autocommit mode: a refused statement leaves nothing to roll back.)"""
    try:
        return (await connection.execute(SYSTEM_IDENTIFIER)).scalar_one()
    except DBAPIError:
        return None


def kind_of(error: BaseException) -> str:
    """An error's types and SQLSTATE, never its message (which may quote data)."""
    code = next((code for cause in exception_chain(error) if (code := sqlstate_of(cause))), "")
    return type(error).__name__ + (f", SQLSTATE {code}" if code else "")
