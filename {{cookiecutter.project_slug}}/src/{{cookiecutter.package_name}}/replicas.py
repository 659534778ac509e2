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
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from .admission import Admission
from .connection_budget import warn_if_over_budget
from .connection_failures import name_failure
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
# The primary's WAL position, and how far a replica has replayed (NULL on a server that is
# not in recovery: a primary, which lags nothing), in bytes since the start of the WAL.
PRIMARY_POSITION = text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
REPLAYED_POSITION = text("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint")


def check_engine(url: URL, settings: Settings) -> AsyncEngine:
    """One connection to the server of ``url``, for the checks alone: it never waits behind
    requests for a pooled one. Each server then has one more connection per worker."""
    return create_async_engine(
        engine_url(url),
        connect_args=connect_args(url, settings),
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
        """A read on this replica could not connect: leave it out until a check finds it."""
        failure = name_failure(error, self.url)
        if failure is not None and failure.connect:
            self.mark("down", failure.kind)


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

    async def dispose(self) -> None:
        await self.stop()
        engines = [replica.engine for replica in self.replicas]
        engines += [replica.check_engine for replica in self.replicas]
        if self._primary_check is not None:
            engines.append(self._primary_check)
        for engine in engines:
            await engine.dispose()

    async def _check_forever(self) -> None:
        while True:
            await self.note_primary_position()
            await asyncio.gather(*(self.check(replica) for replica in self.replicas))
            await asyncio.sleep(self.settings.replica_check_interval)

    async def note_primary_position(self) -> None:
        """Add the primary's WAL position now to ``positions``; when the primary does not
        answer, ``primary_answers`` is False and the replicas serve what they have."""
        assert self._primary_check is not None
        try:
            async with asyncio.timeout(self.settings.connect_timeout + 1):
                async with self._primary_check.connect() as connection:
                    position = (await connection.execute(PRIMARY_POSITION)).scalar_one()
        except Exception:  # whatever it is, the primary does not answer
            self.primary_answers = False
            return
        self.primary_answers = True
        now = time.monotonic()
        self.positions.append((now, position))
        # A replica further behind than the oldest position kept is lagging all the same.
        kept = self.settings.replica_max_lag + 2 * self.settings.replica_check_interval + 1
        while self.positions[0][0] < now - kept:
            self.positions.popleft()

    def lag(self, replayed: int | None) -> float:
        """Seconds since the primary was at the first position not replayed by a replica
        that has replayed ``replayed`` bytes of WAL (None: not in recovery, no lag)."""
        if replayed is None or not self.primary_answers:
            return 0.0
        for noted, position in self.positions:
            if position > replayed:
                return time.monotonic() - noted
        return 0.0

    async def check(self, replica: Replica) -> None:
        """One check of ``replica``: does it answer, and how far behind is it."""
        try:
            # Bounded: a replica that stopped answering must not hold the checks up.
            async with asyncio.timeout(self.settings.connect_timeout + 1):
                async with replica.check_engine.connect() as connection:
                    replayed = (await connection.execute(REPLAYED_POSITION)).scalar_one()
                    if not replica.budget_checked:
                        await warn_if_over_budget(
                            connection,
                            self.settings,
                            self.pools_on(replica.name),
                            replica.name,
                            with_replica_checks=True,
                        )
                        replica.budget_checked = True
        except Exception as error:  # whatever it is, the replica is left out until it passes
            failure = name_failure(error, replica.url)
            replica.mark("down", failure.kind if failure else f"no answer ({type(error).__name__})")
            return
        replica.lag = self.lag(replayed)
        limit = self.settings.replica_max_lag
        if replica.lag > limit:
            replica.mark("lagging", f"{replica.lag:.1f} s behind (REPLICA_MAX_LAG={limit:g})")
        else:
            replica.admission.note_reachable()  # reads need not fail fast any more
            replica.mark("ok")

    def pools_on(self, name: str) -> int:
        """How many of this process's pools reach a server of the pool named ``name``: two
        URLs with a host:port in common share its max_connections."""
        servers = hosts(name)
        names = [self.primary_name, *(replica.name for replica in self.replicas)]
        return sum(1 for other in names if hosts(other) & servers)


def hosts(name: str) -> set[str]:
    """The host:port pairs of a pool's name (several for a failover URL)."""
    return set(name.rsplit("/", 1)[0].split(","))
