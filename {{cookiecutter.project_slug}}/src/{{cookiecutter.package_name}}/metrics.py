"""Prometheus metrics at ``GET /metrics``: the pool's and the HTTP requests'.

Named by OpenTelemetry's semantic conventions as Prometheus writes them (dots become
underscores, the unit is appended, a counter ends in ``_total``): the connection pool's
``db.client.connection.*`` and the HTTP server's ``http.server.request.duration``. Every
pool metric has the label ``pool_name``, ``host:port/database`` (the conventions' form for
a pool without a name of its own) or the SQLite file.

Where the numbers come from: SQLAlchemy's pool events (connections opened, checked out,
returned, closed) and the app's queue in front of the pool (admission.py: waits and
timeouts). Nothing here takes a connection, so ``/metrics`` answers at once even while
every connection is in use.

Under ``uvicorn --workers N`` set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before the workers start: each worker then writes its numbers there and ``/metrics``
adds them up, whichever worker answers (prometheus_client's multiprocess mode; the
README's "Metrics" says how to set the directory up).

Loaded only when ``METRICS`` is on (app.py); endpoints need nothing from it.
"""

import contextlib
import glob
import logging
import os
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .database import Database
from .pool import LingeringOverflowPool
from .pool_status import pool_capacity, pool_name
from .replicas import Replica
from .settings import Settings

logger = logging.getLogger(__name__)

# prometheus_client reads it when it is imported: it cannot come from .env.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
# OpenTelemetry's advice for database durations (db.client.operation.duration), seconds.
DATABASE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
# OpenTelemetry's advice for http.server.request.duration, seconds.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

# Where a connection's pool record keeps when its connect began.
CONNECT_STARTED = "metrics_connect_started"
# A `_created` series beside each counter and histogram would only add names to read.
disable_created_metrics()

# Gauges: in multiprocess mode, the sum over the workers that are alive.
CONNECTIONS = Gauge(
    "db_client_connection_count",
    "Connections open now, by state: used (checked out by a request) or idle (in the pool)",
    ["pool_name", "state"],
    multiprocess_mode="livesum",
)
MAX_CONNECTIONS = Gauge(
    "db_client_connection_max",
    "The most connections the pool may open: pool_size + max_overflow (absent: no limit)",
    ["pool_name"],
    multiprocess_mode="livesum",
)
MAX_IDLE = Gauge(
    "db_client_connection_idle_max",
    "The most connections that may sit open and idle: pool_size, plus max_overflow while "
    "overflow lingers (POOL_OVERFLOW_IDLE_TIMEOUT > 0)",
    ["pool_name"],
    multiprocess_mode="livesum",
)
PENDING_REQUESTS = Gauge(
    "db_client_connection_pending_requests",
    "Requests queued for a connection now",
    ["pool_name"],
    multiprocess_mode="livesum",
)
TIMEOUTS = Counter(
    "db_client_connection_timeouts",
    "Requests that waited POOL_TIMEOUT for a connection in vain (each got a 503 database_busy)",
    ["pool_name"],
)
WAIT_TIME = Histogram(
    "db_client_connection_wait_time_seconds",
    "Seconds a request queued before it got its turn at the pool (0 when nobody was queued)",
    ["pool_name"],
    buckets=DATABASE_BUCKETS,
)
USE_TIME = Histogram(
    "db_client_connection_use_time_seconds",
    "Seconds from a connection's checkout to its return to the pool",
    ["pool_name"],
    buckets=DATABASE_BUCKETS,
)
CREATE_TIME = Histogram(
    "db_client_connection_create_time_seconds",
    "Seconds to open a new connection, its connect-time setup included",
    ["pool_name"],
    buckets=DATABASE_BUCKETS,
)
REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Seconds from a request's arrival to its response's start, by route template and status",
    ["http_request_method", "http_route", "http_response_status_code"],
    buckets=HTTP_BUCKETS,
)


class PoolMetrics:
    """One process's pool, the primary's or a replica's, measured: from its events and
    from admission.py's queue.

    ``used`` counts the connections checked out now, ``idle`` the others that are open;
    both are kept from SQLAlchemy's pool events, since in multiprocess mode each worker
    must write its own numbers as they change (nothing reads a pool at scrape time).
    """

    def __init__(self, database: Database | Replica) -> None:
        name = pool_name(database.url)
        self._used = CONNECTIONS.labels(name, "used")
        self._idle = CONNECTIONS.labels(name, "idle")
        self._pending = PENDING_REQUESTS.labels(name)
        self._timeouts = TIMEOUTS.labels(name)
        self._wait_time = WAIT_TIME.labels(name)
        self._use_time = USE_TIME.labels(name)
        self._create_time = CREATE_TIME.labels(name)
        # Checkout time of each connection in use, by its pool record.
        self._checked_out: dict[ConnectionPoolEntry, float] = {}
        self._open = 0
        pool = database.engine.pool
        capacity = pool_capacity(pool)
        if isinstance(pool, NullPool):
            idle_max: int | None = 0
        elif isinstance(pool, LingeringOverflowPool) and pool.overflow_idle_timeout > 0:
            idle_max = capacity  # overflow lingers, idle, for a while
        else:
            idle_max = pool.size() if isinstance(pool, QueuePool) else None
        # No series at all where nothing limits the pool (MAX_OVERFLOW=-1, NullPool).
        if capacity is not None:
            MAX_CONNECTIONS.labels(name).set(capacity)
        if idle_max is not None:
            MAX_IDLE.labels(name).set(idle_max)
        self._show_connections()
        # Registered after the app's own connect listeners (engine.py), so that the
        # create time includes them: a new connection is usable once they have run.
        engine = database.engine.sync_engine
        event.listen(engine, "do_connect", self._connect_begins)
        event.listen(engine, "connect", self._connected)
        event.listen(engine, "checkout", self._checked_out_now)
        event.listen(engine, "checkin", self._returned)
        event.listen(engine, "invalidate", self._invalidated)
        event.listen(engine, "detach", self._detached)
        event.listen(engine, "close", self._closed)
        database.admission.observer = self

    # admission.py's AdmissionObserver
    def waiting_changed(self, waiting: int) -> None:
        self._pending.set(waiting)

    def admitted(self, waited: float) -> None:
        self._wait_time.observe(waited)

    def timed_out(self) -> None:
        self._timeouts.inc()

    # SQLAlchemy's pool and dialect events
    def _connect_begins(self, _: Any, record: ConnectionPoolEntry, *__: Any) -> None:
        # On the record, which a failed connect discards: nothing is left behind.
        record.info[CONNECT_STARTED] = time.perf_counter()

    def _connected(self, _: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(CONNECT_STARTED, None)
        if started is not None:
            self._create_time.observe(time.perf_counter() - started)
        self._open += 1
        self._show_connections()

    def _checked_out_now(self, _: Any, record: ConnectionPoolEntry, __: Any) -> None:
        self._checked_out[record] = time.perf_counter()
        self._show_connections()

    def _returned(self, _: Any, record: ConnectionPoolEntry) -> None:
        self._end_use(record)

    def _invalidated(self, _: Any, record: ConnectionPoolEntry, __: Any) -> None:
        # Closed while checked out (a dropped connection): no longer in use, nor open.
        self._end_use(record)

    def _detached(self, _: Any, record: ConnectionPoolEntry) -> None:
        self._end_use(record)
        self._open -= 1  # out of the pool for good; it closes without a "close" event
        self._show_connections()

    def _closed(self, _: Any, record: ConnectionPoolEntry) -> None:
        self._open -= 1
        self._show_connections()

    def _end_use(self, record: ConnectionPoolEntry) -> None:
        # A record SQLAlchemy returns without this process having seen its checkout (a
        # failed pre-ping's) was never counted as used.
        checked_out = self._checked_out.pop(record, None)
        if checked_out is not None:
            self._use_time.observe(time.perf_counter() - checked_out)
            self._show_connections()

    def _show_connections(self) -> None:
        used = len(self._checked_out)
        self._used.set(used)
        self._idle.set(max(self._open - used, 0))


class RequestMetrics:
    """ASGI middleware: each HTTP request's duration, by method, route template and status.

    The route is the template (``/items/{item_id}``), never the path, so that the number of
    series stays bounded; "" for a request no route matched (a 404). The duration ends when
    the response starts; an exception that escapes the app counts as a 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        responded = False

        async def send_timed(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start" and not responded:
                responded = True
                observe_request(scope, message["status"], started)
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        except BaseException:
            if not responded:  # the server answers 500 for it
                observe_request(scope, 500, started)
            raise


def observe_request(scope: Scope, status: int, started: float) -> None:
    route = scope.get("route")  # the router sets it on this same scope when a route matches
    REQUEST_DURATION.labels(scope["method"], getattr(route, "path", ""), str(status)).observe(
        time.perf_counter() - started
    )


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus's text format: this process's numbers, or every worker's added up."""
    if MULTIPROCESS_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY  # with the process's CPU, memory and garbage collector metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``/metrics`` and time every request."""
    if MULTIPROCESS_DIR:
        os.makedirs(MULTIPROCESS_DIR, exist_ok=True)
        forget_dead_workers(MULTIPROCESS_DIR)
    elif settings.workers > 1:
        logger.warning(
            "METRICS with WORKERS=%d but no PROMETHEUS_MULTIPROC_DIR: each scrape of "
            "/metrics shows the numbers of the one worker that answers it",
            settings.workers,
        )
    app.add_middleware(RequestMetrics)
    app.include_router(router)


def forget_dead_workers(directory: str) -> None:
    """Drop the gauges of worker processes that are gone (a crash, a restart), which would
    otherwise be added in for ever; their counters and histograms stay in the totals."""
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        if not process_is_alive(pid):
            with contextlib.suppress(FileNotFoundError):  # another worker was quicker
                multiprocess.mark_process_dead(pid, directory)


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def worker_stopped() -> None:
    """At shutdown: this worker's gauges leave the sums (its counters stay in the totals)."""
    if MULTIPROCESS_DIR:
        with contextlib.suppress(FileNotFoundError):
            multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)
