"""scripts/loadtest.py, run briefly against the app served by a real uvicorn."""

import asyncio
import importlib.util
import re
import sys
import time
from collections import Counter
{%- if cookiecutter.metrics %}
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url

from {{ cookiecutter.package_name }}.metrics import pool_name

from ..support import PROJECT_DIR, sample, scrape, uvicorn_server
{%- else %}

import pytest

from ..support import PROJECT_DIR, uvicorn_server
{%- endif %}

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCRIPT = PROJECT_DIR / "scripts" / "loadtest.py"


def load_script():
    spec = importlib.util.spec_from_file_location("loadtest", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run_script(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(process.communicate(), timeout=60))[0].decode()
    return process.returncode, output


{% if cookiecutter.metrics -%}
def table_rows(output: str) -> dict[int, list[str]]:
    """clients -> the other columns of the results table; with the pool's numbers from
    /metrics, the last two are the timeouts and the wait p99 (else both "")."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(.+?)\s+(\d+)"
                      r"(?:\s+(\d+|-)\s+([\d.]+|-))?$", output, re.MULTILINE)  # fmt: skip
{%- else -%}
def table_rows(output: str) -> dict[int, list[str]]:
    """clients -> the other columns of the results table."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(.+?)\s+(\d+)$",
                      output, re.MULTILINE)  # fmt: skip
{%- endif %}
    return {int(clients): rest for clients, *rest in rows}


async def test_loadtest_reports_a_saturated_pool_and_keeps_to_its_budget(
    database_url: str,
) -> None:
    # Requests that hold their connection for 50 ms: two connections serve 40 per second.
    env = {"DATABASE_URL": database_url, "POOL_SIZE": "2", "MAX_OVERFLOW": "0"}
    slow_app = ("tests.pool.apps:app_with_slow_route", "--factory")
    async with uvicorn_server(env | {"SLOW_SECONDS": "0.05"}, app=slow_app) as server:
        code, output = await run_script(
            server.url, "--path", "/slow", "--clients", "1,12", "--seconds", "0.6"
        )
        started = time.monotonic()
        budget_code, budget_output = await run_script(
            server.url, "--clients", "2", "--seconds", "60", "--max-requests", "20"
        )
        budget_elapsed = time.monotonic() - started

    assert code == 0, output + server.output
    rows = table_rows(output)
    assert set(rows) == {1, 12}, output
    for requests_per_second, p50, p99, errors, in_use, *_ in rows.values():
        assert int(requests_per_second) > 0, output
        assert 0 < float(p50) <= float(p99), output
        assert errors == "0", output
        assert in_use.endswith("of 2"), output
    # Twelve clients on two connections: requests queued, and the reading says what to do.
    assert int(rows[12][5]) > 0, output
    assert "pool saturated at 12 clients (2 of 2 connections in use" in output
    assert "raise pool_size" in output
    # The request budget ends a level long before its --seconds.
    assert budget_code == 0, budget_output
    assert budget_elapsed < 30
    assert int(table_rows(budget_output)[2][0]) > 0


async def test_loadtest_says_when_the_service_cannot_be_reached() -> None:
    code, output = await run_script("http://127.0.0.1:9", "--seconds", "1")

    assert code == 2
    assert output.startswith("loadtest: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in output


async def test_loadtest_refuses_bad_arguments_in_one_line() -> None:
    code, output = await run_script("--clients", "many")

    assert code == 2
    assert "--clients='many': expected numbers separated by commas" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ([(1, 100, {}, 1, 0), (16, 150, {"503": 3}, 5, 9)], "errors at 16 clients (3 x 503)"),
        ([(1, 100, {}, 1, 0), (16, 300, {}, 5, 11)], "pool saturated at 16 clients (5 of 5"),
        ([(1, 100, {}, 1, 0), (16, 105, {}, 3, 0)], "throughput stopped growing at 16 clients"),
        ([(1, 100, {}, 1, 0), (16, 900, {}, 4, 0)], "no limit reached up to 16 clients"),
    ],
    ids=["errors", "pool-saturated", "cpu-bound", "room"],
)
def test_reading_names_the_first_limit(levels: list[tuple], expected: str) -> None:
    loadtest = load_script()
    built = []
    for clients, requests, errors, peak_checked_out, peak_waiting in levels:
        level = loadtest.Level(clients, seconds=1.0, latencies=[0.01] * requests)
        level.errors = Counter(errors)
        level.pool_capacity = 5
        level.peak_checked_out, level.peak_waiting = peak_checked_out, peak_waiting
        built.append(level)

    assert loadtest.reading(built).startswith(expected)
{%- if cookiecutter.metrics %}


async def test_loadtest_counts_the_pools_timeouts_from_metrics(database_url: str) -> None:
    # One connection held 0.3 s, and requests that give up after 0.1 s in the queue.
    env = {"DATABASE_URL": database_url, "POOL_SIZE": "1", "MAX_OVERFLOW": "0"}
    env |= {"POOL_TIMEOUT": "0.1", "SLOW_SECONDS": "0.3"}
    slow_app = ("tests.pool.apps:app_with_slow_route", "--factory")
    async with uvicorn_server(env, app=slow_app) as server:
        code, output = await run_script(
            server.url, "--path", "/slow", "--clients", "1,4", "--seconds", "1"
        )

    assert code == 0, output + server.output
    assert output.startswith("GET /slow (the pool's numbers from /metrics)"), output
    rows = table_rows(output)
    # One client never queues: no timeouts, and no wait at all.
    *_, in_use, _, timeouts, wait_p99 = rows[1]
    assert (in_use, timeouts, wait_p99) == ("1 of 1", "0", "0.0"), output
    # Four: every 503 the script got is a pool timeout the service counted, none more.
    _, _, _, errors, in_use, waiting, timeouts, wait_p99 = rows[4]
    assert int(errors) > 0 and timeouts == errors, output
    assert in_use == "1 of 1" and int(waiting) > 0, output
    assert float(wait_p99) <= 100, output  # the others got their turn within POOL_TIMEOUT
    assert f"{errors} requests timed out waiting for a connection at 4 clients" in output
    assert "raise pool_size or max_overflow" in output


async def test_loadtest_adds_up_the_workers_pools_from_metrics(
    database_url: str, tmp_path: Path
) -> None:
    # /health/db would show the one pool, of 2, of the worker that answers it.
    env = {
        "DATABASE_URL": database_url,
        "POOL_SIZE": "2",
        "MAX_OVERFLOW": "0",
        "WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    pool = pool_name(make_url(database_url))
    async with uvicorn_server(env, workers=2) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            async with asyncio.timeout(15):  # until both workers have started
                while True:
                    samples = await scrape(client)
                    if sample(samples, "db_client_connection_max", pool_name=pool) == 4:
                        break
                    await asyncio.sleep(0.05)
        code, output = await run_script(server.url, "--clients", "1,8", "--seconds", "0.5")

    assert code == 0, output + server.output
    rows = table_rows(output)
    assert set(rows) == {1, 8}, output
    for _, _, _, errors, in_use, _, timeouts, wait_p99 in rows.values():
        assert errors == timeouts == "0", output
        assert in_use.endswith(" of 4"), output
        assert float(wait_p99) >= 0, output


async def test_loadtest_reads_health_db_when_metrics_are_off(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "POOL_SIZE": "2", "MAX_OVERFLOW": "1", "METRICS": "false"}
    async with uvicorn_server(env) as server:
        code, output = await run_script(server.url, "--clients", "1,4", "--seconds", "0.3")

    assert code == 0, output + server.output
    assert output.startswith("GET /items (the pool's numbers from /health/db)"), output
    assert "timeouts" not in output.splitlines()[1], output
    rows = table_rows(output)
    assert set(rows) == {1, 4}, output
    for *_, in_use, _, timeouts, wait_p99 in rows.values():
        assert in_use.endswith(" of 3"), output
        assert timeouts == wait_p99 == "", output


@pytest.mark.parametrize(
    ("timeouts", "errors", "expected"),
    [
        (3, {"503": 3}, "3 requests timed out waiting for a connection at 16 clients (5 of 5"
                        " connections in use, up to 9 requests waiting): raise pool_size or"
                        " max_overflow if the database has room, or add workers; or raise"
                        " POOL_TIMEOUT"),
        (1, {"503": 1, "500": 2}, "1 request timed out waiting for a connection at 16 clients"),
        (0, {"503": 2}, "errors at 16 clients (2 x 503): see the service's log"),
    ],
    ids=["timeouts", "timeouts-and-other-errors", "other-503s"],
)  # fmt: skip
def test_reading_names_the_pools_timeouts(timeouts: int, errors: dict, expected: str) -> None:
    loadtest = load_script()
    quiet = loadtest.Level(1, seconds=1.0, latencies=[0.01] * 100, timeouts=0, wait_p99=0.0)
    level = loadtest.Level(16, seconds=1.0, latencies=[0.01] * 100, errors=Counter(errors))
    level.timeouts, level.wait_p99 = timeouts, 0.25
    level.pool_capacity, level.peak_checked_out, level.peak_waiting = 5, 5, 9

    reading = loadtest.reading([quiet, level])

    assert reading.startswith(expected), reading
    assert ("2 other errors, see the service's log" in reading) == ("500" in errors), reading


def test_wait_p99_is_estimated_as_prometheus_does() -> None:
    loadtest = load_script()
    bounds = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, float("inf"))

    def histogram(*cumulative: float) -> dict[float, float]:
        return dict(zip(bounds, cumulative, strict=True))

    # 90 waits up to 0.5 s, 10 more up to 1 s: the 99th is 9/10 of the way through (0.5, 1].
    spread = histogram(0, 0, 0, 0, 0, 90, 100, 100, 100, 100)
    assert loadtest.histogram_quantile(0.99, spread) == pytest.approx(0.95)
    # Past the last finite bound: that bound, as Prometheus says.
    assert loadtest.histogram_quantile(0.99, histogram(*[0] * 9, 5)) == 10.0
    assert loadtest.histogram_quantile(0.99, histogram(*[0] * 10)) is None
    # Before and after a level: only what the level added counts; no wait at all is 0.
    before = loadtest.PoolMetrics(timeouts=2, wait_buckets=spread, wait_sum=40.0)
    after = loadtest.PoolMetrics(
        timeouts=5, wait_buckets={bound: count + 50 for bound, count in spread.items()},
        wait_sum=40.0,
    )  # fmt: skip
    level = loadtest.Level(4)
    loadtest.count_timeouts_and_waits(level, before, after)
    assert (level.timeouts, level.wait_p99) == (3, 0.0)
{%- endif %}
