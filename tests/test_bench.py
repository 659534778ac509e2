"""bench/: its parsing and bookkeeping, and one short run of the whole benchmark."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
SETTINGS = {"pool_size": 5, "max_overflow": 10, "pool_pre_ping": True}

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


bench = load_bench()


def point(rps: float, p50: float = 10.0, p99: float = 20.0, new: int = 0, peak: int = 5,
          errors: int = 0) -> object:  # fmt: skip
    """Three runs alike of 1,000 requests each."""
    return bench.Point([bench.Run(1000, 10.0, rps, p50, p99, errors, new, 1.0, peak)] * 3)


def good_results() -> dict:
    """1-worker results that meet every target, with a little room."""
    return {
        **{("fast-list", "pooled", c): point(800) for c in (1, 16, 64)},
        **{("fast-list", "nullpool", c): point(100) for c in (1, 16, 64)},
        **{("fast-list", "tutorial", c): point(600) for c in (1, 16, 64)},
        **{("fast-list", "raw plain", c): point(1000) for c in (1, 16, 64)},
        **{("fast-list", "raw typed", c): point(900) for c in (1, 16, 64)},
        **{("fast-list", "ping", c): point(4000) for c in (1, 16, 64)},
        **{("slow-read", "pooled", c): point(280, p50=50, p99=60) for c in (15, 64)},
        **{("slow-read", "tutorial", c): point(290) for c in (15, 64)},
        **{("slow-read", "raw plain", c): point(300) for c in (15, 64)},
        **{("slow-read", "raw typed", c): point(300) for c in (15, 64)},
        ("writes", "pooled", 16): point(700),
        ("writes", "tutorial", 16): point(600),
        ("writes", "raw plain", 16): point(1000),
        ("writes", "raw typed", 16): point(950),
        ("bursty", "pooled", 64): point(900, p50=math.nan, p99=math.nan, new=30, peak=15),
        ("bursty", "tutorial", 64): point(500, p50=math.nan, p99=math.nan, new=90, peak=15),
        ("bursty", "raw typed", 64): point(1000, p50=math.nan, p99=math.nan, peak=15),
    }


def missed(results: dict) -> list[str]:
    return [check.figure for check in bench.targets({1: results}, SETTINGS) if check.met is False]


def test_wrk_output_becomes_one_run() -> None:
    run = bench.parse_wrk(WRK_OUTPUT)

    assert run.requests == 9062
    assert run.seconds == pytest.approx(10.0)
    assert run.rps == 905.91
    assert run.p50_ms == pytest.approx(16.95)
    assert run.p99_ms == pytest.approx(1210)
    assert run.errors == 2 + 3 + 4


def test_the_turns_of_a_bursty_run_add_up_to_one_run() -> None:
    turns = [bench.Run(2000, 2.0, 1000, 60, 90, 1), bench.Run(400, 2.0, 200, 18, 30, 0)]

    run = bench.combine(turns)

    assert (run.requests, run.seconds, run.rps, run.errors) == (2400, 4.0, 600, 1)
    assert math.isnan(run.p50_ms) and math.isnan(run.p99_ms)


def test_a_bursty_run_alternates_many_and_few_clients_for_about_twice_the_duration() -> None:
    assert bench.phases("fast-list", 16, 8) == [(16, 8)]
    assert bench.phases("bursty", 64, 8) == [(64, 2), (4, 2)] * 5
    assert bench.phases("bursty", 64, 1) == [(64, 1), (4, 1)]


def test_the_raw_floor_is_the_faster_of_plain_and_typed() -> None:
    points = {
        ("fast-list", "raw plain", 16): point(1000),
        ("fast-list", "raw typed", 16): point(1200),
        ("slow-read", "raw plain", 15): point(300),
        ("writes", "raw typed", 16): point(900),
    }

    assert bench.rate(points, "fast-list", "raw floor", 16) == 1200
    assert bench.rate(points, "slow-read", "raw floor", 15) == 300
    assert bench.rate(points, "writes", "raw floor", 16) == 900
    assert bench.rate(points, "writes", "raw floor", 64) is None


def test_results_that_meet_every_target_pass_the_check() -> None:
    checks = bench.targets({1: good_results()}, SETTINGS)

    assert bench.targets_met({1: good_results()}, SETTINGS)
    assert all(check.met for check in checks if check.target != "no target")
    assert {check.figure for check in checks if check.target == "no target"} == {
        f"bursty, {case} new server connections per request"
        for case in ("pooled", "tutorial", "raw typed")
    }


@pytest.mark.parametrize(
    ("key", "changed", "figure"),
    [
        pytest.param(("slow-read", "tutorial", 15), point(320),
                     "slow read, pooled ÷ tutorial, req/s at 15", id="slow-read-below-tutorial"),
        pytest.param(("slow-read", "raw typed", 64), point(320),
                     "slow read, pooled ÷ raw floor, req/s at 64",
                     id="slow-read-below-the-floor-when-typed-is-faster"),
        pytest.param(("slow-read", "pooled", 64), point(280, p50=100, p99=260),
                     "slow read, pooled p99 ÷ p50 at 64", id="slow-read-tail"),
        pytest.param(("fast-list", "raw plain", 16), point(1200),
                     "fast list, pooled ÷ raw floor, req/s at 16",
                     id="fast-list-below-the-floor-when-plain-is-faster"),
        pytest.param(("fast-list", "pooled", 64), point(800, p50=10, p99=31),
                     "fast list, pooled p99 ÷ p50 at 64", id="fast-list-tail"),
        pytest.param(("writes", "raw typed", 16), point(1200),
                     "writes, pooled ÷ raw floor, req/s at 16", id="writes-below-the-floor"),
        pytest.param(("fast-list", "nullpool", 16), point(200),
                     "fast list, pooled ÷ NullPool, req/s at 16", id="pooling-pays-too-little"),
        pytest.param(("writes", "pooled", 16), point(700, new=11),
                     "pooled new server connections per request, steady load (most: writes at 16)",
                     id="new-connections-under-steady-load"),
        pytest.param(("bursty", "pooled", 64), point(900, peak=16),
                     "pooled peak server connections per worker (most: bursty at 64)",
                     id="more-connections-than-pool-size-plus-max-overflow"),
        pytest.param(("slow-read", "tutorial", 15), point(290, errors=1),
                     "errors, every case but nullpool", id="an-error-in-a-reference-app"),
    ],
)  # fmt: skip
def test_each_target_is_missed_by_a_figure_beyond_it(
    key: tuple[str, str, int], changed: object, figure: str
) -> None:
    results = good_results() | {key: changed}

    assert missed(results) == [figure]
    assert not bench.targets_met({1: results}, SETTINGS)


@pytest.mark.parametrize(
    ("key", "changed"),
    [
        pytest.param(("slow-read", "pooled", 15), point(270), id="slow-read-at-0.9-of-the-floor"),
        pytest.param(("fast-list", "pooled", 16), point(700), id="fast-list-at-0.7-of-the-floor"),
        pytest.param(("writes", "pooled", 16), point(600), id="writes-at-0.6-of-the-floor"),
        pytest.param(("writes", "pooled", 16), point(700, new=10),
                     id="new-connections-at-0.01-per-request"),
        pytest.param(("bursty", "pooled", 64), point(900, new=500),
                     id="bursty-churn-has-no-target"),
        pytest.param(("fast-list", "pooled", 64), point(800, peak=15),
                     id="peak-at-pool-size-plus-max-overflow"),
        pytest.param(("fast-list", "tutorial", 64), point(600, peak=40),
                     id="only-the-pooled-peak-is-held-to-the-limit"),
        pytest.param(("fast-list", "nullpool", 64), point(100, errors=5),
                     id="nullpool-errors-count-for-nothing"),
    ],
)  # fmt: skip
def test_a_figure_at_or_within_its_target_meets_it(
    key: tuple[str, str, int], changed: object
) -> None:
    assert missed(good_results() | {key: changed}) == []


def test_a_figure_that_was_not_measured_is_shown_but_misses_nothing() -> None:
    results = {("fast-list", case, 4): point(800) for case in ("pooled", "raw plain")}

    checks = bench.targets({1: results}, SETTINGS)

    not_measured = [check.figure for check in checks if check.value is None]
    assert "slow read, pooled ÷ tutorial, req/s at 15" in not_measured
    assert "writes, pooled ÷ raw floor, req/s at 16" in not_measured
    assert all(check.met is None for check in checks if check.value is None)
    assert bench.targets_met({1: results}, SETTINGS)
    assert bench.shown(None) == "—"


def test_only_the_one_worker_run_is_held_to_the_targets() -> None:
    slow = good_results() | {("fast-list", "pooled", 16): point(100)}

    assert bench.targets_met({1: good_results(), 2: slow}, SETTINGS)
    assert bench.targets({2: slow}, SETTINGS) == []


def test_a_peak_above_the_limit_of_all_workers_is_shown_in_bold() -> None:
    points = {
        ("fast-list", case, 16): point(800, peak=16) for case in bench.WORKLOADS["fast-list"].paths
    }

    one_worker = "\n".join(bench.workload_table(bench.WORKLOADS["fast-list"], points, 15, [16]))
    two_workers = "\n".join(bench.workload_table(bench.WORKLOADS["fast-list"], points, 30, [16]))

    assert "| pooled | 16 | 800 | 0% | 10.00 | 20.00 | 2.0 | 0 | 0.000 | **16** |" in one_worker
    assert "| nullpool | 16 | 800 | 0% | 10.00 | 20.00 | 2.0 | 0 | 0.000 | 16 |" in one_worker
    assert "**" not in two_workers


def test_a_run_rewrites_only_its_own_section_of_the_results(tmp_path: Path) -> None:
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
    """A very short run of bench/run: bake, install, serve four apps, every workload, plots."""
    results = tmp_path / "RESULTS.md"
    command = [
        str(BENCH_DIR / "run"), "--duration", "1", "--repeats", "1", "--connections", "4",
        "--slow-connections", "4", "--write-connections", "4", "--workers", "1",
        "--work-dir", str(tmp_path / "work"), "--results", str(results),
    ]  # fmt: skip
    env = os.environ | {"HOME": str(tmp_path)}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = results.read_text()
    for workload in bench.WORKLOADS.values():
        clients = "64 ↔ 4" if workload.name == "bursty" else "4"
        for case in workload.paths:
            assert f"| {case} | {clients} |" in report, (workload.name, case)
        assert f"![{workload.name.replace('-', ' ')}](plots/{workload.name}.png)" in report
        assert (tmp_path / "plots" / f"{workload.name}.png").stat().st_size > 10_000
    assert "| pooled ÷ NullPool |" in report
    assert "| errors, every case but nullpool | 0 | 0 | yes |" in report
    assert "| pooled peak server connections per worker" in report


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--connections=16,many", "--connections='16,many': expected whole numbers"),
        ("--slow-connections=0", "--slow-connections: every count must be at least 1"),
        ("--workers=0", "--workers: every count must be at least 1"),
        ("--duration=0", "--duration and --repeats must be at least 1"),
        ("--workloads=fast-list,fast", "--workloads='fast-list,fast': expected some of"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(argument: str, message: str) -> None:
    command = [sys.executable, str(BENCH_DIR / "bench.py"), argument]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 2
    assert message in finished.stderr
    assert "Traceback" not in finished.stderr
