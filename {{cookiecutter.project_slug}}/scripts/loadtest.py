"""Drive the running service at a few concurrencies and say what limits it.

    uv run python scripts/loadtest.py http://127.0.0.1:8000 --clients 1,4,16,64 --seconds 5

(or ``.venv/bin/python scripts/loadtest.py ...`` with pip).

For each number of clients it sends requests for ``--seconds`` (at most ``--max-requests``),
then prints requests/s, p50/p99 latency, errors, and the pool's peak use read from
``/health/db`` while the load ran, with one line saying what to change. The load comes from
this machine: on a small one, this script takes CPU from the service it measures.
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

# How often the pool's numbers are read from /health/db while the load runs.
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
        return [await run_level(client, options, clients) for clients in options.clients]


async def run_level(client: httpx.AsyncClient, options: argparse.Namespace, clients: int) -> Level:
    level = Level(clients)
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

    started = time.monotonic()
    sampler = asyncio.create_task(sample_pool(client, level))
    try:
        await asyncio.gather(*(one_client() for _ in range(clients)))
    finally:
        sampler.cancel()
    level.seconds = time.monotonic() - started
    return level


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


def render(levels: list[Level], path: str) -> str:
    lines = [
        f"GET {path}",
        f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f"  {'pool in use (peak)':>18} {'waiting (peak)':>14}",
    ]
    for level in levels:
        in_use = str(level.peak_checked_out)
        if level.pool_capacity:
            in_use += f" of {level.pool_capacity}"
        lines.append(
            f"{level.clients:>7} {level.requests_per_second:>9.0f} {level.percentile_ms(50):>8.1f}"
            f" {level.percentile_ms(99):>8.1f} {sum(level.errors.values()):>7}"
            f"  {in_use:>18} {level.peak_waiting:>14}"
        )
    lines.append(reading(levels))
    return "\n".join(lines)


def reading(levels: list[Level]) -> str:
    """One line: the first thing that limits the service, and what to change."""
    for level in levels:
        if level.errors:
            kinds = ", ".join(f"{count} x {kind}" for kind, count in level.errors.most_common())
            return f"errors at {level.clients} clients ({kinds}): see the service's log"
    for level in levels:
        if level.pool_saturated:
            return (
                f"pool saturated at {level.clients} clients ({level.peak_checked_out} of "
                f"{level.pool_capacity} connections in use, up to {level.peak_waiting} requests "
                "waiting): raise pool_size or max_overflow if the database has room, or add"
                " workers"
            )
    for previous, level in itertools.pairwise(levels):
        if level.requests_per_second < 1.1 * previous.requests_per_second:
            return (
                f"throughput stopped growing at {level.clients} clients while the pool had room:"
                " CPU is the limit (the app's, or this script's on the same machine); add"
                " workers, keeping workers x pool within the database's max_connections"
            )
    return f"no limit reached up to {levels[-1].clients} clients: the pool has room"


if __name__ == "__main__":
    sys.exit(main())
