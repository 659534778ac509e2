"""bench/: its parsing and bookkeeping, and one short run of the whole benchmark."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:40000/items
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    17.60ms    3.75ms  58.71ms   86.28%
    Req/Sec     0.91k    84.70     1.06k    76.00%
  Latency Distribution
     50%   16.95ms
     75%   18.50ms
     90%   21.41ms
     99%    1.21s
  9062 requests in 10.00s, 9.93MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:    905.91
Transfer/sec:      0.99MB
"""


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH_DIR / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wrk_output_becomes_one_run() -> None:
    bench = load_bench()

    run = bench.parse_wrk(WRK_OUTPUT, new_connections=7, cpu_used=9.0)

    assert run.requests == 9062
    assert run.rps == 905.91
    assert run.p50_ms == pytest.approx(16.95)
    assert run.p99_ms == pytest.approx(1210)
    assert run.errors == 2 + 3 + 4
    assert run.new_connections == 7


def test_targets_are_met_only_by_figures_that_meet_them() -> None:
    bench = load_bench()

    def point(rps: float, p50: float = 10, p99: float = 20, new: int = 0) -> object:
        return bench.Point([bench.Run(1000, rps, p50, p99, 0, new, 1.0)] * 3)

    good = {
        **{("pooled", c): point(800) for c in (1, 16, 64)},
        **{("nullpool", c): point(100) for c in (1, 16, 64)},
        **{("raw", c): point(1000) for c in (1, 16, 64)},
        **{("ping", c): point(4000) for c in (1, 16, 64)},
    }
    assert bench.targets_met({1: good})
    assert all(met for *_, met in bench.targets({1: good}))

    slow = good | {("pooled", 64): point(650)}  # 0.65 of raw
    tail = good | {("pooled", 64): point(800, p50=10, p99=31)}
    churn = good | {("pooled", 16): point(800, new=1)}
    for results in (slow, tail, churn):
        assert not bench.targets_met({1: results})


def test_a_run_rewrites_only_its_own_section_of_the_results(tmp_path: Path) -> None:
    bench = load_bench()
    results = tmp_path / "RESULTS.md"
    results.write_text(
        f"# Results\n\nintro\n\n{bench.RESULTS_START}\nold table\n{bench.RESULTS_END}\n\nnotes\n"
    )

    bench.write_results(results, "new table")

    assert results.read_text() == (
        f"# Results\n\nintro\n\n{bench.RESULTS_START}\nnew table\n{bench.RESULTS_END}\n\nnotes\n"
    )


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_with_one_command(postgres_url: str, tmp_path: Path) -> None:
    """A very short run of bench/run: bake, install, serve four apps, drive them with wrk."""
    results = tmp_path / "RESULTS.md"
    command = [
        str(BENCH_DIR / "run"), "--duration", "1", "--repeats", "1", "--connections", "4",
        "--workers", "1", "--work-dir", str(tmp_path / "work"), "--results", str(results),
    ]  # fmt: skip
    env = os.environ | {"HOME": str(tmp_path)}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    table = results.read_text()
    for case in ("pooled", "nullpool", "raw", "ping"):
        assert f"| {case} | 4 |" in table
    assert "| pooled / NullPool |" in table
    assert "| errors (pooled, raw, ping) | 0 | 0 | yes |" in table


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--connections=16,many", "--connections='16,many': expected whole numbers"),
        ("--workers=0", "--workers: every count must be at least 1"),
        ("--duration=0", "--duration, --repeats and every connection count must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(argument: str, message: str) -> None:
    command = [sys.executable, str(BENCH_DIR / "bench.py"), argument]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 2
    assert message in finished.stderr
    assert "Traceback" not in finished.stderr
