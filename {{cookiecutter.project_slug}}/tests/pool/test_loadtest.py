"""scripts/loadtest.py, run briefly against the app served by a real uvicorn."""

import asyncio
import importlib.util
import re
import sys
import time
from collections import Counter

import pytest

from ..support import PROJECT_DIR, uvicorn_server

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


def table_rows(output: str) -> dict[int, list[str]]:
    """clients -> the other columns of the results table."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(.+?)\s+(\d+)$",
                      output, re.MULTILINE)  # fmt: skip
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
    for requests_per_second, p50, p99, errors, in_use, _ in rows.values():
        assert int(requests_per_second) > 0, output
        assert 0 < float(p50) <= float(p99), output
        assert errors == "0", output
        assert in_use.endswith("of 2"), output
    # Twelve clients on two connections: requests queued, and the reading says what to do.
    assert int(rows[12][-1]) > 0, output
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
