"""Read replicas: a pool on each PostgreSQL streaming replica, and which one a read uses.

``REPLICA_URLS`` lists the replicas. Each gets a pool of its own, sized like the
primary's (``POOL_SIZE``, ``MAX_OVERFLOW``, ...), with its own admission queue. A read
session (``ReadSessionDep``) goes to the next replica in turn that is usable; a session
that writes (``SessionDep``) always goes to the primary, and so does a read when no
replica is usable.

A background task checks every replica each ``REPLICA_CHECK_INTERVAL`` seconds, through
its own pool: whether it answers, and how far it lags (seconds since the last
transaction it replayed, 0 when it has replayed all the WAL it received, PostgreSQL's
usual measure). A replica that does not answer is "down"; one that lags more than
``REPLICA_MAX_LAG`` is "lagging"; either is left out until a check finds it back. A
read that fails on a replica marks it down at once, and replica_fallback.py runs that
read again on the primary, so the client sees no error.
"""

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import async_sessionmaker

from .admission import Admission, DatabaseUnreachableError, PoolBusyError
from .connection_budget import warn_if_over_budget
from .connection_failures import name_failure
from .engine import create_engines
from .pool_status import ConnectionCounter, pool_capacity, pool_name, pool_status
from .pre_ping import RETRY_READS
from .read_session import ReadOnlySession
from .settings import Settings

logger = logging.getLogger(__name__)

ReplicaState = Literal["starting", "ok", "lagging", "down"]

# The key a request's scope carries when its read must go to the primary
# (replica_fallback.py runs a read again with it).
READ_FROM_PRIMARY = "database.read_from_primary"
# One round trip: in recovery (a replica; false once promoted), and the lag in seconds.
REPLICA_CHECK = text(
    "SELECT pg_is_in_recovery(), CASE"
    " WHEN NOT pg_is_in_recovery() THEN 0"
    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
    " ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)"
    " END::float8"
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
                logger.info("Read replica %s is back: reads go to it again", self.url)
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
    """Every replica, the turn of the next read, and the task that checks them."""

    def __init__(self, urls: Sequence[str], settings: Settings, primary_name: str) -> None:
        self.settings = settings
        self.replicas = [Replica(make_url(url), settings, i) for i, url in enumerate(urls)]
        self.primary_name = primary_name
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
        for replica in self.replicas:
            await replica.engine.dispose()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self.check(replica) for replica in self.replicas))
            await asyncio.sleep(self.settings.replica_check_interval)

    async def check(self, replica: Replica) -> None:
        """One check of ``replica``, through its pool, in its queue with the requests."""
        if replica.admission.full and replica.state == "ok":
            return  # every connection is serving reads: it answers; measure it next time
        try:
            # Bounded: a replica that stopped answering must not hold the checks up.
            async with asyncio.timeout(self.settings.connect_timeout + 1):
                async with replica.admission.admit(), replica.engine.connect() as connection:
                    in_recovery, lag = (await connection.execute(REPLICA_CHECK)).one()
                    if not replica.budget_checked:
                        await warn_if_over_budget(
                            connection, self.settings, self.pools_on(replica.name), replica.name
                        )
                        replica.budget_checked = True
        except PoolBusyError:
            return  # a full queue: it is serving reads
        except DatabaseUnreachableError as error:
            replica.mark("down", error.failure.kind)
            return
        except Exception as error:  # whatever it is, the replica is left out until it passes
            failure = name_failure(error, replica.url)
            replica.mark("down", failure.kind if failure else f"no answer ({type(error).__name__})")
            return
        replica.lag = lag
        limit = self.settings.replica_max_lag
        if lag > limit:
            replica.mark("lagging", f"{lag:.1f} s behind (REPLICA_MAX_LAG={limit:g})")
        else:
            if not in_recovery and replica.state != "ok":
                logger.warning("Read replica %s is not in recovery: a primary", replica.url)
            replica.mark("ok")

    def pools_on(self, name: str) -> int:
        """How many of this process's pools reach the server of the pool named ``name``:
        two URLs of one server (host and port) share its max_connections."""
        server = name.rsplit("/", 1)[0]
        names = [self.primary_name, *(replica.name for replica in self.replicas)]
        return sum(1 for other in names if other.rsplit("/", 1)[0] == server)
