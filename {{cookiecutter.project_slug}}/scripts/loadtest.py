"""Drive the running service at a few concurrencies and say what limits it.

    uv run python scripts/loadtest.py http://127.0.0.1:8000 --clients 1,4,16,64 --seconds 5

(or ``.venv/bin/python scripts/loadtest.py ...`` with pip).

For each number of clients it sends requests for ``--seconds`` (at most ``--max-requests``),
{%- if cookiecutter.metrics %}
then prints requests/s, p50/p99 latency, errors, and the pool's peak use and queue, with one
line saying what to change. The load comes from this machine: on a small one, this script
takes CPU from the service it measures.

The pool's numbers come from ``GET /metrics`` when the service answers it (``METRICS`` on),
else from ``/health/db``, each read every 50 ms while the load runs. From ``/metrics`` they
are summed over the pools (``pool_name``) and, under ``uvicorn --workers`` with
``PROMETHEUS_MULTIPROC_DIR``, over the workers, where ``/health/db`` shows only the worker
that answers it; reading them takes no connection from the pool. Two more columns come from
``/metrics`` read before and after each level: the requests that waited ``POOL_TIMEOUT`` for
a connection in vain (``db_client_connection_timeouts_total``: each was a 503), and the
99th percentile of the others' wait for a connection, estimated from the histogram's
buckets as Prometheus's ``histogram_quantile`` does (and the Grafana dashboard's panel): 0
when no request waited at all, else linearly within the bucket it falls in. The buckets end
at 1, 5, 10, 50, 100 and 500 ms, 1, 5 and 10 s, and the estimate is no finer: with
``POOL_TIMEOUT=0.2`` it may read 490 ms, the 99th wait lying somewhere in (100, 500] ms.
Both numbers count the whole service: other traffic during a level counts too.
{%- else %}
then prints requests/s, p50/p99 latency, errors, and the pool's peak use read from
``/health/db`` while the load ran, with one line saying what to change. The load comes from
this machine: on a small one, this script takes CPU from the service it measures.
{%- endif %}
"""

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
{%- if cookiecutter.metrics %}
from prometheus_client.parser import text_string_to_metric_families

# How often the pool's numbers are read from /metrics or /health/db while the load runs.
{%- else %}

# How often the pool's numbers are read from /health/db while the load runs.
{%- endif %}
POOL_SAMPLE_SECONDS = 0.05


@dataclass
class Level:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    peak_checked_out: int = 0
    peak_waiting: int = 0
    # Connections requests may hold at once: pool_size + max_overflow; 0 = unknown or no limit.
    pool_capacity: int = 0
{%- if cookiecutter.metrics %}
    # Read from /metrics (False: from /health/db, which has neither of the numbers below).
    from_metrics: bool = False
    # Requests that timed out waiting for a connection (None: unknown).
    timeouts: int | None = None
    # The 99th percentile of the others' wait for a connection, in seconds (None: unknown).
    wait_p99: float | None = None
{%- endif %}

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, percent: int) -> float:
        if len(self.latencies) < 2:
            return 1000 * self.latencies[0] if self.latencies else 0.0
        return 1000 * statistics.quantiles(self.latencies, n=100)[percent - 1]

    @property
    def pool_saturated(self) -> bool:
        return self.peak_waiting > 0 and self.peak_checked_out >= self.pool_capacity > 0
{%- if cookiecutter.metrics %}


@dataclass
class PoolMetrics:
    """One read of /metrics: the pool's numbers, summed over pools and workers."""

    used: int = 0
    pending: int = 0
    capacity: int = 0  # 0: no db_client_connection_max series, no limit
    timeouts: int = 0
    # The wait histogram: cumulative counts by upper bound (le, +Inf last), and their sum.
    wait_buckets: dict[float, float] = field(default_factory=dict)
    wait_sum: float = 0.0
{%- endif %}


def main() -> int:
    options = parse_arguments()
    try:
        levels = asyncio.run(run_levels(options))
    except httpx.HTTPError as error:
        print(f"loadtest: cannot reach {options.url}: {error!r}", file=sys.stderr)
        return 2
    print(render(levels, options.path))
    return 0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8000", help="the service")
    parser.add_argument("--path", default="/items", help="what to request (GET /items)")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrencies (1,4,16,64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency (5)")
    parser.add_argument(
        "--max-requests", type=int, default=50_000, help="per concurrency, at most (50000)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per request (30 s)")
    options = parser.parse_args()
    try:
        options.clients = [int(value) for value in options.clients.split(",")]
    except ValueError:
        parser.error(f"--clients={options.clients!r}: expected numbers separated by commas")
    if min(options.clients) < 1 or not 0 < options.seconds <= 600 or options.max_requests < 1:
        parser.error("--clients must be at least 1, --seconds in (0, 600], --max-requests >= 1")
    options.url = options.url.rstrip("/")
    return options


async def run_levels(options: argparse.Namespace) -> list[Level]:
    limits = httpx.Limits(max_connections=max(options.clients) + 1)
    client = httpx.AsyncClient(base_url=options.url, limits=limits, timeout=options.timeout)
    async with client:
        await client.get(options.path)  # reachable, and warm
{%- if cookiecutter.metrics %}
        # 404: METRICS is off, the pool's numbers come from /health/db.
        from_metrics = (await client.get("/metrics")).status_code == 200
        return [
            await run_level(client, options, clients, from_metrics) for clients in options.clients
        ]


async def run_level(
    client: httpx.AsyncClient, options: argparse.Namespace, clients: int, from_metrics: bool
) -> Level:
    level = Level(clients, from_metrics=from_metrics)
    before = await read_metrics(client) if from_metrics else None
{%- else %}
        return [await run_level(client, options, clients) for clients in options.clients]


async def run_level(client: httpx.AsyncClient, options: argparse.Namespace, clients: int) -> Level:
    level = Level(clients)
{%- endif %}
    deadline = time.monotonic() + options.seconds
    remaining = options.max_requests

    async def one_client() -> None:
        nonlocal remaining
        while time.monotonic() < deadline and remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                response = await client.get(options.path)
            except httpx.HTTPError as error:
                level.errors[type(error).__name__] += 1
                continue
            if response.is_success:
                level.latencies.append(time.perf_counter() - started)
            else:
                level.errors[str(response.status_code)] += 1

{%- if cookiecutter.metrics %}

    started = time.monotonic()
    sampling = sample_metrics(client, level) if from_metrics else sample_pool(client, level)
    sampler = asyncio.create_task(sampling)
    try:
        await asyncio.gather(*(one_client() for _ in range(clients)))
    finally:
        sampler.cancel()
    level.seconds = time.monotonic() - started
    if before is not None:
        # Every request of the level has been answered: its timeout or wait is counted.
        after = await read_metrics(client)
        if after is not None:
            count_timeouts_and_waits(level, before, after)
    return level
{%- else %}

    started = time.monotonic()
    sampler = asyncio.create_task(sample_pool(client, level))
    try:
        await asyncio.gather(*(one_client() for _ in range(clients)))
    finally:
        sampler.cancel()
    level.seconds = time.monotonic() - started
    return level
{%- endif %}


async def sample_pool(client: httpx.AsyncClient, level: Level) -> None:
    """Keep the peaks of the pool's numbers; a service without /health/db reports none."""
    while True:
        try:
            response = await client.get("/health/db")
            pool = response.json()["pool"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        else:
            unlimited = pool["max_overflow"] < 0
            level.pool_capacity = 0 if unlimited else pool["size"] + pool["max_overflow"]
            level.peak_checked_out = max(level.peak_checked_out, pool["checked_out"])
            level.peak_waiting = max(level.peak_waiting, pool["waiting"])
        await asyncio.sleep(POOL_SAMPLE_SECONDS)
{%- if cookiecutter.metrics %}


async def sample_metrics(client: httpx.AsyncClient, level: Level) -> None:
    """Keep the peaks of the pool's numbers read from /metrics."""
    while True:
        pool = await read_metrics(client)
        if pool is not None:
            level.pool_capacity = pool.capacity
            level.peak_checked_out = max(level.peak_checked_out, pool.used)
            level.peak_waiting = max(level.peak_waiting, pool.pending)
        await asyncio.sleep(POOL_SAMPLE_SECONDS)


async def read_metrics(client: httpx.AsyncClient) -> PoolMetrics | None:
    """``GET /metrics``, the pool's numbers in it; None if it did not answer them."""
    try:
        response = await client.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def parse_metrics(text: str) -> PoolMetrics:
    pool = PoolMetrics()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = round(sample.value)
            match sample.name:
                case "db_client_connection_count" if sample.labels["state"] == "used":
                    pool.used += value
                case "db_client_connection_pending_requests":
                    pool.pending += value
                case "db_client_connection_max":
                    pool.capacity += value
                case "db_client_connection_timeouts_total":
                    pool.timeouts += value
                case "db_client_connection_wait_time_seconds_bucket":
                    bound = float(sample.labels["le"])
                    pool.wait_buckets[bound] = pool.wait_buckets.get(bound, 0) + sample.value
                case "db_client_connection_wait_time_seconds_sum":
                    pool.wait_sum += sample.value
    pool.wait_buckets = dict(sorted(pool.wait_buckets.items()))
    return pool


def count_timeouts_and_waits(level: Level, before: PoolMetrics, after: PoolMetrics) -> None:
    """The level's timeouts and wait p99: what the counters and the histogram gained in it."""
    level.timeouts = after.timeouts - before.timeouts
    buckets = {
        bound: count - before.wait_buckets.get(bound, 0)
        for bound, count in after.wait_buckets.items()
    }
    if after.wait_sum == before.wait_sum and any(buckets.values()):
        level.wait_p99 = 0.0  # requests got their connection, and none of them waited
    else:
        level.wait_p99 = histogram_quantile(0.99, buckets)


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float | None:
    """As Prometheus's histogram_quantile: from cumulative counts by ascending upper bound,
    +Inf last; None without observations."""
    bounds = list(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = quantile * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == bounds[-1]:  # the +Inf bucket: the highest finite bound
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return None
{%- endif %}


def render(levels: list[Level], path: str) -> str:
{%- if cookiecutter.metrics %}
    from_metrics = any(level.from_metrics for level in levels)
    header = (
        f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f"  {'pool in use (peak)':>18} {'waiting (peak)':>14}"
    )
    if from_metrics:
        header += f" {'timeouts':>8} {'wait p99 ms':>11}"
    source = "/metrics" if from_metrics else "/health/db"
    lines = [f"GET {path} (the pool's numbers from {source})", header]
{%- else %}
    lines = [
        f"GET {path}",
        f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f"  {'pool in use (peak)':>18} {'waiting (peak)':>14}",
    ]
{%- endif %}
    for level in levels:
        in_use = str(level.peak_checked_out)
        if level.pool_capacity:
            in_use += f" of {level.pool_capacity}"
{%- if cookiecutter.metrics %}
        line = (
            f"{level.clients:>7} {level.requests_per_second:>9.0f} {level.percentile_ms(50):>8.1f}"
            f" {level.percentile_ms(99):>8.1f} {sum(level.errors.values()):>7}"
            f"  {in_use:>18} {level.peak_waiting:>14}"
        )
        if from_metrics:
            timeouts = "-" if level.timeouts is None else str(level.timeouts)
            line += f" {timeouts:>8} {wait_p99_ms(level):>11}"
        lines.append(line)
{%- else %}
        lines.append(
            f"{level.clients:>7} {level.requests_per_second:>9.0f} {level.percentile_ms(50):>8.1f}"
            f" {level.percentile_ms(99):>8.1f} {sum(level.errors.values()):>7}"
            f"  {in_use:>18} {level.peak_waiting:>14}"
        )
{%- endif %}
    lines.append(reading(levels))
    return "\n".join(lines)
{%- if cookiecutter.metrics %}


def wait_p99_ms(level: Level) -> str:
    return "-" if level.wait_p99 is None else f"{1000 * level.wait_p99:.1f}"
{%- endif %}


def reading(levels: list[Level]) -> str:
    """One line: the first thing that limits the service, and what to change."""
    for level in levels:
{%- if cookiecutter.metrics %}
        if level.timeouts:
            return timeouts_reading(level)
{%- endif %}
        if level.errors:
            kinds = ", ".join(f"{count} x {kind}" for kind, count in level.errors.most_common())
            return f"errors at {level.clients} clients ({kinds}): see the service's log"
    for level in levels:
        if level.pool_saturated:
{%- if cookiecutter.metrics %}
            wait = "" if level.wait_p99 is None else f", wait p99 {wait_p99_ms(level)} ms"
            return (
                f"pool saturated at {level.clients} clients ({level.peak_checked_out} of "
                f"{level.pool_capacity} connections in use, up to {level.peak_waiting} requests "
                f"waiting{wait}): raise pool_size or max_overflow if the database has room, or"
                " add workers"
            )
{%- else %}
            return (
                f"pool saturated at {level.clients} clients ({level.peak_checked_out} of "
                f"{level.pool_capacity} connections in use, up to {level.peak_waiting} requests "
                "waiting): raise pool_size or max_overflow if the database has room, or add"
                " workers"
            )
{%- endif %}
    for previous, level in itertools.pairwise(levels):
        if level.requests_per_second < 1.1 * previous.requests_per_second:
            return (
                f"throughput stopped growing at {level.clients} clients while the pool had room:"
                " CPU is the limit (the app's, or this script's on the same machine); add"
                " workers, keeping workers x pool within the database's max_connections"
            )
    return f"no limit reached up to {levels[-1].clients} clients: the pool has room"
{%- if cookiecutter.metrics %}


def timeouts_reading(level: Level) -> str:
    """Requests waited POOL_TIMEOUT for a connection in vain: the pool is too small for the
    load, or POOL_TIMEOUT too short for the wait the clients would accept."""
    requests = "1 request" if level.timeouts == 1 else f"{level.timeouts} requests"
    others = sum(level.errors.values()) - (level.timeouts or 0)
    also = f"; {others} other errors, see the service's log" if others > 0 else ""
    in_use = str(level.peak_checked_out)
    if level.pool_capacity:
        in_use += f" of {level.pool_capacity}"
    return (
        f"{requests} timed out waiting for a connection at {level.clients} clients ({in_use}"
        f" connections in use, up to {level.peak_waiting} requests waiting): raise pool_size or"
        " max_overflow if the database has room, or add workers; or raise POOL_TIMEOUT if"
        f" clients may wait longer{also}"
    )
{%- endif %}


if __name__ == "__main__":
    sys.exit(main())
