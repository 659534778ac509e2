"""Does pooling pay, and how close does the baked app come to the tutorial and the raw driver?

Bakes a project with a PostgreSQL URL, serves it with uvicorn against the real server and
drives it with wrk, next to reference apps served by the same uvicorn options:

    pooled     the baked app with its pool (the baked defaults), plus a slow read written
               as a user of the baked project writes one (bench/baked_app.py)
    nullpool   the same app with POOL_CLASS=null: a new server connection per request
    tutorial   the tutorial's app with the same pool settings (bench/tutorial_app.py)
    raw plain  the same queries on a raw asyncpg pool, returning dicts (bench/floor_app.py)
    raw typed  the same, with a declared Pydantic return type; the faster of the two at
               each point is the raw floor
    ping       an endpoint without a database: the HTTP ceiling of this machine

through four workloads:

    fast-list  GET /items?limit=10, the 10 seeded rows (every case)
    slow-read  the same rows from a query that takes 50 ms on the server
    writes     POST /items, one new row per request
    bursty     the fast list from 64 clients, then 4, in turns: what a pool does when the
               load comes and goes

Every case runs at each number of clients, the cases taking turns, ``--repeats`` times; the
report shows the medians and how far the runs spread, new server connections per request,
the most server connections each app held (pg_stat_activity, polled while wrk runs) and
the server's CPU time per request, checks the targets (``--check``: exit 1 on a miss) and
draws a plot per workload. Loopback only; every server is stopped at the end.

Run it as ``bench/run`` (which installs what it needs); ``--help`` lists the knobs. The
default run (1 worker) takes about 20 minutes on 2 cores; ``--workers 1,2`` adds as much
again for 2 workers; ``--workloads slow-read --repeats 1`` is a quick look at one workload.
"""

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

BENCH_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = BENCH_DIR.parent
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVER = "postgres@127.0.0.1:5432"
DATABASE = "bench"
PACKAGE = "bench_app"
# NullPool runs the baked app too, so it logs in as a role of its own to have its server
# connections counted apart from the pooled app's (same application_name).
NULLPOOL_ROLE = "bench_nullpool"
SEED_ITEMS = 10
RESULTS_START = "<!-- bench:start -->"
RESULTS_END = "<!-- bench:end -->"

# How often pg_stat_activity is read while wrk runs, for each app's peak of connections.
POLL_SECONDS = 0.025
# Unmeasured load before each measured run (but bursty ones), at the same number of clients:
# caches warm and pools grown to the load, so that the run measures a steady load, though
# the cases take turns and spare connections close in between.
LEAD_IN_SECONDS = 1
# The bursty workload: many clients, then few, this many times over.
BURST_CLIENTS = (64, 4)
BURST_CYCLES = 5

# The figures bench/RESULTS.md is held to (issues 5 and 11): medians, 1 worker.
SLOW_RATIO_TARGET = 0.9
SLOW_TAIL_TARGET = 2.5
LIST_RATIO_TARGET = 0.70
LIST_TAIL_TARGET = 3.0
WRITE_RATIO_TARGET = 0.6
POOLED_OVER_NULLPOOL_TARGET = 5.0
CHURN_TARGET = 0.01

LIST_PATH = f"/items?limit={SEED_ITEMS}"


@dataclass(frozen=True)
class Workload:
    """What every request of a workload is, and the path each case requests it at."""

    name: str  # in --workloads, in the report, and the plot's file name
    request: str  # for the report
    paths: dict[str, str]  # case -> path, in the order the cases take turns
    script: Path | None = None  # a wrk script, for requests other than GET


WORKLOADS = {
    workload.name: workload
    for workload in (
        Workload(
            "fast-list",
            f"`GET {LIST_PATH}`, the {SEED_ITEMS} seeded rows",
            {
                "pooled": LIST_PATH,
                "nullpool": LIST_PATH,
                "tutorial": LIST_PATH,
                "raw plain": LIST_PATH,
                "raw typed": f"/typed{LIST_PATH}",
                "ping": "/ping",
            },
        ),
        Workload(
            "slow-read",
            "`GET /slow-items`, the same rows from a query that takes 50 ms on the server "
            "(`pg_sleep(0.05)` in its FROM)",
            {
                "pooled": "/slow-items",
                "tutorial": "/slow-items",
                "raw plain": "/slow-items",
                "raw typed": "/typed/slow-items",
            },
        ),
        Workload(
            "writes",
            "`POST /items`, one new row per request, committed (`bench/post.lua`)",
            {
                "pooled": "/items",
                "tutorial": "/items",
                "raw plain": "/items",
                "raw typed": "/typed/items",
            },
            script=BENCH_DIR / "post.lua",
        ),
        Workload(
            "bursty",
            f"`GET {LIST_PATH}` from {BURST_CLIENTS[0]} clients, then {BURST_CLIENTS[1]}, in turns",
            {"pooled": LIST_PATH, "tutorial": LIST_PATH, "raw typed": f"/typed{LIST_PATH}"},
        ),
    )
}
# The server that serves each case: the raw server answers raw plain, raw typed and ping.
CASE_SERVERS = {
    "pooled": "pooled",
    "nullpool": "nullpool",
    "tutorial": "tutorial",
    "raw plain": "raw",
    "raw typed": "raw",
    "ping": "raw",
}
# The workloads that are drawn as lines against clients; bursty is drawn as bars.
PLOTTED_AGAINST_CLIENTS = ("fast-list", "slow-read", "writes")

# A point: (workload, case, clients). The bursty workload's clients are BURST_CLIENTS[0].
Key = tuple[str, str, int]


@dataclass(frozen=True)
class Server:
    """One uvicorn server, and the login its server connections are counted by."""

    app: str  # uvicorn's APP argument
    env: dict[str, str]
    ready_path: str  # answers 200 once the app can serve
    application_name: str
    role: str = "postgres"
    factory: bool = False
    cwd: Path = BENCH_DIR


@dataclass
class Run:
    """One wrk run, with what the server did meanwhile."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float  # NaN for a bursty run: its phases' latencies cannot be merged
    p99_ms: float
    errors: int
    new_connections: int = 0
    cpu_seconds: float = 0.0
    peak_connections: int = 0


@dataclass
class Point:
    """Every run of one case at one number of clients."""

    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(run, name) for run in self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median of requests/s, the noise of this point."""
        rates = [run.rps for run in self.runs]
        return (max(rates) - min(rates)) / statistics.median(rates) if rates else 0.0

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)

    @property
    def new_connections_per_request(self) -> float:
        requests = sum(run.requests for run in self.runs)
        return sum(run.new_connections for run in self.runs) / requests if requests else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        requests = sum(run.requests for run in self.runs)
        return 1000 * sum(run.cpu_seconds for run in self.runs) / requests if requests else 0.0

    @property
    def peak_connections(self) -> int:
        """The most server connections the app held in any of the runs."""
        return max((run.peak_connections for run in self.runs), default=0)


@dataclass(frozen=True)
class Check:
    """One figure of the Targets table; ``met`` is None when not measured or not a target."""

    figure: str
    value: float | None
    target: str
    met: bool | None


def main() -> int:
    options = parse_arguments()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run bench/run, which installs it", file=sys.stderr)
        return 2
    if options.plots and importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is missing: run bench/run (which installs it) or pass --no-plots",
              file=sys.stderr)  # fmt: skip
        return 2
    work = Path(options.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = bake(work, options.template)
    python = install(work, project)
    asyncio.run(recreate_database())
    settings = baked_settings(python, project)
    started = time.monotonic()
    results: dict[int, dict[Key, Point]] = {}
    for workers in options.workers:
        results[workers] = measure(python, project, settings, workers, options)
    elapsed = time.monotonic() - started
    results_path = Path(options.results)
    plots = draw_plots(results, results_path.parent / "plots") if options.plots else []
    report = render_report(results, settings, options, python, elapsed, plots, results_path)
    print(report)
    write_results(results_path, report)
    if options.check and not targets_met(results, settings):
        return 1
    return 0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=7, help="seconds per run (7)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (3)")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"which workloads to run ({','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--connections", default="1,16,64", help="wrk connections for the fast list (1,16,64)"
    )
    parser.add_argument(
        "--slow-connections", default="15,64", help="wrk connections for the slow read (15,64)"
    )
    parser.add_argument(
        "--write-connections", default="16,64", help="wrk connections for writes (16,64)"
    )
    parser.add_argument(
        "--workers", default="1", help="uvicorn worker counts, e.g. 1,2 (1; targets: 1)"
    )
    parser.add_argument(
        "--template",
        default=str(TEMPLATE_DIR),
        help="template folder to bake, or a git revision of this repository (an earlier state)",
    )
    parser.add_argument("--work-dir", default=str(BENCH_DIR / "out"), help="bake and venv here")
    parser.add_argument(
        "--results",
        default=str(BENCH_DIR / "RESULTS.md"),
        help="file to write the report to; the plots go to plots/ beside it",
    )
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="draw no plots")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    options = parser.parse_args()
    for name in ("connections", "slow_connections", "write_connections", "workers"):
        value = getattr(options, name)
        flag = "--" + name.replace("_", "-")
        try:
            numbers = [int(number) for number in value.split(",")]
        except ValueError:
            parser.error(f"{flag}={value!r}: expected whole numbers separated by commas")
        if min(numbers) < 1:
            parser.error(f"{flag}: every count must be at least 1")
        setattr(options, name, list(dict.fromkeys(numbers)))  # each once, in the order given
    workloads = options.workloads.split(",")
    if not workloads or set(workloads) - set(WORKLOADS):
        parser.error(f"--workloads={options.workloads!r}: expected some of {', '.join(WORKLOADS)}")
    options.workloads = [name for name in WORKLOADS if name in workloads]
    if options.duration < 1 or options.repeats < 1:
        parser.error("--duration and --repeats must be at least 1")
    return options


def bake(work: Path, template: str) -> Path:
    """A fresh bake with the template's defaults and the benchmark database."""
    output = work / "bake"
    shutil.rmtree(output, ignore_errors=True)
    if not Path(template).is_dir():  # a git revision: bake the template as it was then
        exported = work / "template"
        shutil.rmtree(exported, ignore_errors=True)
        exported.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(TEMPLATE_DIR), "archive", template], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise SystemExit(f"--template {template!r}: not a folder or a git revision")
        subprocess.run(["tar", "-x", "-C", str(exported)], input=archive.stdout, check=True)
        template = str(exported)
    context = {
        "project_name": "Bench App",
        "database_url": f"postgresql+asyncpg://{SERVER}/{DATABASE}",
        "git_init": "no",
    }
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    answers = [f"{key}={value}" for key, value in context.items()]
    with tempfile.TemporaryDirectory() as home:  # keeps the replay file out of ~
        run([str(cookiecutter), template, "--no-input", "-o", str(output), *answers],
            env={**os.environ, "HOME": home})  # fmt: skip
    return output / "bench-app"


def install(work: Path, project: Path) -> Path:
    """The baked project installed, as a user would, into a venv of its own."""
    venv = work / "venv"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(project)])
    return venv / "bin" / "python"


def baked_settings(python: Path, project: Path) -> dict[str, object]:
    """The baked defaults, read from the installed app's Settings where its server runs."""
    code = (
        f"from {PACKAGE}.settings import Settings; import json; "
        "s = Settings(); print(json.dumps({'pool_size': s.pool_size, "
        "'max_overflow': s.max_overflow, 'pool_pre_ping': s.pool_pre_ping}))"
    )
    return json.loads(run([str(python), "-c", code], capture=True, cwd=project))


async def recreate_database() -> None:
    """An empty benchmark database, and NullPool's role (a member of postgres)."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", NULLPOOL_ROLE):
            await admin.execute(f"CREATE ROLE {NULLPOOL_ROLE} LOGIN IN ROLE postgres")
    finally:
        await admin.close()


def server_specs(project: Path, settings: dict[str, object]) -> dict[str, Server]:
    """Every server the cases need, the pooled one first: it creates the tables."""
    pool_size, max_overflow = str(settings["pool_size"]), str(settings["max_overflow"])

    def baked(pool_class: str, role: str) -> Server:
        return Server(
            app="baked_app:create_app",
            factory=True,
            env={"DATABASE_URL": f"postgresql+asyncpg://{role}@127.0.0.1:5432/{DATABASE}",
                 "POOL_CLASS": pool_class, "LOG_LEVEL": "WARNING"},
            ready_path="/health/db",
            application_name=PACKAGE,
            role=role,
            cwd=project,  # where its .env is, as a user runs it
        )  # fmt: skip

    return {
        "pooled": baked("queue", "postgres"),
        "nullpool": baked("null", NULLPOOL_ROLE),
        "tutorial": Server(
            app="tutorial_app:app",
            env={
                "TUTORIAL_DATABASE_URL": f"postgresql+asyncpg://{SERVER}/{DATABASE}",
                "TUTORIAL_POOL_SIZE": pool_size,
                "TUTORIAL_MAX_OVERFLOW": max_overflow,
            },
            ready_path=LIST_PATH,
            application_name="tutorial",
        ),
        "raw": Server(
            app="floor_app:app",
            env={
                "FLOOR_DSN": f"postgresql://{SERVER}/{DATABASE}",
                "FLOOR_POOL_SIZE": pool_size,
                "FLOOR_MAX_OVERFLOW": max_overflow,
            },
            ready_path="/ping",
            application_name="raw",
        ),
    }


def clients_of(workload: str, options: argparse.Namespace) -> list[int]:
    """The numbers of clients a workload runs at (bursty: the many of its turns)."""
    return {
        "fast-list": options.connections,
        "slow-read": options.slow_connections,
        "writes": options.write_connections,
        "bursty": [BURST_CLIENTS[0]],
    }[workload]


def phases(workload: str, clients: int, duration: int) -> list[tuple[int, int]]:
    """(clients, seconds) of each wrk run that makes one measured run.

    Bursty: up to BURST_CYCLES turns of many clients then few, each for about a quarter of
    ``duration`` (at least 1 s), so it lasts two to three times ``duration``.
    """
    if workload != "bursty":
        return [(clients, duration)]
    seconds = max(1, round(duration / 4))
    many, few = BURST_CLIENTS
    return [(many, seconds), (few, seconds)] * min(BURST_CYCLES, duration)


def measure(
    python: Path,
    project: Path,
    settings: dict[str, object],
    workers: int,
    options: argparse.Namespace,
) -> dict[Key, Point]:
    """Every case at every number of clients, taking turns so that drift hits all alike."""
    print(f"== {workers} worker(s)", flush=True)
    workloads = [WORKLOADS[name] for name in options.workloads]
    points = {
        (workload.name, case, clients): Point()
        for workload in workloads
        for clients in clients_of(workload.name, options)
        for case in workload.paths
    }
    needed = {CASE_SERVERS[case] for workload in workloads for case in workload.paths}
    specs = {name: spec for name, spec in server_specs(project, settings).items() if name in needed}
    with contextlib.ExitStack() as servers:
        urls = {
            name: servers.enter_context(serve(name, spec, python, workers, project.parent))
            for name, spec in specs.items()
        }
        seed(urls["pooled"])
        for repeat in range(options.repeats):
            for workload in workloads:
                for clients in clients_of(workload.name, options):
                    for case, path in workload.paths.items():
                        server = CASE_SERVERS[case]
                        if case == "nullpool":
                            asyncio.run(wait_for_room(clients))
                        run_ = asyncio.run(
                            measured_run(
                                urls[server] + path,
                                specs[server],
                                phases(workload.name, clients, options.duration),
                                workload.script,
                                lead_in=workload.name != "bursty",
                            )
                        )
                        points[workload.name, case, clients].runs.append(run_)
                        print(
                            f"   run {repeat + 1} {workload.name:>9} {case:>9} c={clients:<3}"
                            f" {run_.rps:7.0f} req/s  p50 {run_.p50_ms:7.2f} ms"
                            f"  p99 {run_.p99_ms:7.2f} ms  errors {run_.errors}"
                            f"  new conns {run_.new_connections}"
                            f"  peak conns {run_.peak_connections}",
                            flush=True,
                        )
    return points


@contextlib.contextmanager
def serve(name: str, spec: Server, python: Path, workers: int, log_dir: Path) -> Iterator[str]:
    """A uvicorn server for ``spec`` on a free loopback port, stopped on exit; yields its URL."""
    port = free_port()
    command = [
        str(python.parent / "uvicorn"), *(["--factory"] if spec.factory else []), spec.app,
        "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log = open(log_dir / f"{name}-{workers}.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        command, env=os.environ | spec.env, stdout=log, stderr=subprocess.STDOUT, cwd=spec.cwd
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base + spec.ready_path, server, Path(log.name))
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def wait_until_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server for {url} exited with {server.returncode}: see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"server for {url} did not become ready in 30 s: see {log}")


async def wait_for_room(connections: int) -> None:
    """Wait, up to 30 s, until the server has room for ``connections`` more connections.

    NullPool opens a connection for each request in flight, up to one per client, next to
    those that the other apps keep at rest. Their spare connections close after some
    seconds unused (the raw pool's above pool_size, and the baked pool's overflow if it
    lets them linger); with 2 workers at 64 clients, max_connections = 100 needs them gone.
    NullPool logs in as a role without superuser's reserved connections.
    """
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        room = await admin.fetchval(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
        )
        started = time.monotonic()
        while time.monotonic() < started + 30:
            used = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
            if used + connections <= room:
                break
            await asyncio.sleep(0.5)
        if (waited := time.monotonic() - started) >= 0.5:
            print(f"   waited {waited:.1f} s for room for {connections} connections", flush=True)
    finally:
        await admin.close()


def seed(base_url: str) -> None:
    """The rows every read returns, written through the baked app's own API.

    They take ids 1 to SEED_ITEMS, and every read asks for the first SEED_ITEMS rows by id,
    so the rows that the writes workload adds later are never read.
    """
    with httpx.Client(base_url=base_url, timeout=10) as client:
        if client.get(LIST_PATH).json():
            return
        for number in range(1, SEED_ITEMS + 1):
            body = {"name": f"item {number}", "description": f"the item numbered {number}"}
            client.post("/items", json=body).raise_for_status()


async def measured_run(
    url: str, server: Server, wrk_runs: list[tuple[int, int]], script: Path | None, lead_in: bool
) -> Run:
    """wrk against ``url`` for each (clients, seconds) in turn, as one run.

    Around it: the server connections opened to the benchmark database meanwhile (by any
    app, but only this one has work), the CPU time of the server's processes, and the most
    connections ``server`` held, from a connection to another database. ``lead_in``: first
    LEAD_IN_SECONDS of the first wrk run's load, unmeasured.
    """
    port = int(url.split(":")[2].split("/")[0])
    pids = server_pids(port)
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        if lead_in:
            await watched_wrk(admin, server, url, wrk_runs[0][0], LEAD_IN_SECONDS, script)
        sessions_before = await server_sessions(admin)
        cpu_before = cpu_seconds(pids)
        runs, peak = [], 0
        for clients, seconds in wrk_runs:
            output, most = await watched_wrk(admin, server, url, clients, seconds, script)
            runs.append(parse_wrk(output))
            peak = max(peak, most)
        cpu_used = cpu_seconds(pids) - cpu_before
        sessions_after = await server_sessions(admin)
    finally:
        await admin.close()
    return replace(
        runs[0] if len(runs) == 1 else combine(runs),
        new_connections=sessions_after - sessions_before,
        cpu_seconds=cpu_used,
        peak_connections=peak,
    )


async def watched_wrk(
    admin: asyncpg.Connection,
    server: Server,
    url: str,
    clients: int,
    seconds: int,
    script: Path | None,
) -> tuple[str, int]:
    """wrk's output, and the most server connections ``server`` held while it ran."""
    process = await asyncio.create_subprocess_exec(
        *wrk_command(url, clients, seconds, script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    finished = asyncio.ensure_future(process.communicate())
    peak = 0
    while not finished.done():
        peak = max(peak, await server_connections(admin, server))
        await asyncio.wait([finished], timeout=POLL_SECONDS)
    stdout, stderr = finished.result()
    if process.returncode != 0:
        raise SystemExit(f"wrk failed against {url}:\n{stdout.decode()}{stderr.decode()}")
    output = stdout.decode()
    for line in output.splitlines():  # which errors, for the console: the report counts them
        if line.lstrip().startswith(("Socket errors", "Non-2xx")):
            print(f"   {clients} clients: {line.strip()}", flush=True)
    return output, peak


def wrk_command(url: str, connections: int, duration: int, script: Path | None) -> list[str]:
    # One wrk thread: the load generator shares this machine's cores with the server.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    return command + (["-s", str(script)] if script else []) + [url]


def parse_wrk(output: str) -> Run:
    found = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    requests, seconds = int(found.group(1)), milliseconds(found.group(2)) / 1000
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Run(
        requests=requests,
        seconds=seconds,
        rps=rps,
        p50_ms=milliseconds(percentiles["50"]),
        p99_ms=milliseconds(percentiles["99"]),
        errors=errors,
    )


def combine(runs: list[Run]) -> Run:
    """The wrk runs of a bursty sequence as one: its requests over its whole time."""
    requests = sum(run.requests for run in runs)
    seconds = sum(run.seconds for run in runs)
    return Run(
        requests=requests,
        seconds=seconds,
        rps=requests / seconds if seconds else 0.0,
        p50_ms=math.nan,
        p99_ms=math.nan,
        errors=sum(run.errors for run in runs),
    )


def milliseconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]


async def server_sessions(admin: asyncpg.Connection) -> int:
    """Connections ever opened to the benchmark database (pg_stat_database.sessions)."""
    query = "SELECT sessions FROM pg_stat_database WHERE datname = $1"
    return await admin.fetchval(query, DATABASE)


async def server_connections(admin: asyncpg.Connection, server: Server) -> int:
    """The connections ``server``'s processes hold to the benchmark database right now."""
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = $1 AND usename = $2 AND application_name = $3"
    )
    return await admin.fetchval(query, DATABASE, server.role, server.application_name)


def server_pids(port: int) -> list[int]:
    """The uvicorn process listening on ``port`` and its worker processes."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    listening = [pid for pid in parents if f"--port\0{port}\0" in cmdline(pid)]
    return listening + [pid for pid, parent in parents.items() if parent in listening]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def run(
    command: list[str],
    capture: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout if capture else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rate(points: dict[Key, Point], workload: str, case: str, clients: int) -> float | None:
    """The median req/s of a case, None if it was not measured.

    ``raw floor`` is the faster of raw plain and raw typed: neither is faster everywhere.
    """
    if case == "raw floor":
        rates = [rate(points, workload, raw, clients) for raw in ("raw plain", "raw typed")]
        return max((r for r in rates if r is not None), default=None)
    point = points.get((workload, case, clients))
    return point.median("rps") if point and point.runs else None


def ratio(
    points: dict[Key, Point], workload: str, numerator: str, denominator: str, clients: int
) -> float | None:
    above = rate(points, workload, numerator, clients)
    below = rate(points, workload, denominator, clients)
    return above / below if above is not None and below else None


def tail(points: dict[Key, Point], workload: str, case: str, clients: int) -> float | None:
    """p99 ÷ p50 of a case, None if it was not measured."""
    point = points.get((workload, case, clients))
    return point.median("p99_ms") / point.median("p50_ms") if point and point.runs else None


def at_least(figure: str, value: float | None, bound: float) -> Check:
    return Check(figure, value, f"≥ {bound:g}", None if value is None else value >= bound)


def at_most(figure: str, value: float | None, bound: float) -> Check:
    return Check(figure, value, f"≤ {bound:g}", None if value is None else value <= bound)


def targets(results: dict[int, dict[Key, Point]], settings: dict[str, object]) -> list[Check]:
    """The figures the 1-worker run is held to, then the bursty figures to read."""
    points = results.get(1)
    if points is None:
        return []
    checks = []
    for clients in (15, 64):
        for other in ("tutorial", "raw floor"):
            value = ratio(points, "slow-read", "pooled", other, clients)
            figure = f"slow read, pooled ÷ {other}, req/s at {clients}"
            checks.append(at_least(figure, value, SLOW_RATIO_TARGET))
    value = tail(points, "slow-read", "pooled", 64)
    checks.append(at_most("slow read, pooled p99 ÷ p50 at 64", value, SLOW_TAIL_TARGET))
    for clients in (16, 64):
        value = ratio(points, "fast-list", "pooled", "raw floor", clients)
        figure = f"fast list, pooled ÷ raw floor, req/s at {clients}"
        checks.append(at_least(figure, value, LIST_RATIO_TARGET))
    value = tail(points, "fast-list", "pooled", 64)
    checks.append(at_most("fast list, pooled p99 ÷ p50 at 64", value, LIST_TAIL_TARGET))
    value = ratio(points, "writes", "pooled", "raw floor", 16)
    checks.append(at_least("writes, pooled ÷ raw floor, req/s at 16", value, WRITE_RATIO_TARGET))
    value = ratio(points, "fast-list", "pooled", "nullpool", 16)
    figure = "fast list, pooled ÷ NullPool, req/s at 16"
    checks.append(at_least(figure, value, POOLED_OVER_NULLPOOL_TARGET))

    pooled = {key: p for key, p in points.items() if key[1] == "pooled" and p.runs}
    steady = {key: p for key, p in pooled.items() if key[0] != "bursty"}
    key, value = worst(steady, lambda p: p.new_connections_per_request)
    figure = f"pooled new server connections per request, steady load{where(key)}"
    checks.append(at_most(figure, value, CHURN_TARGET))
    key, value = worst(pooled, lambda p: p.peak_connections)
    figure = f"pooled peak server connections per worker{where(key)}"
    limit = int(settings["pool_size"]) + int(settings["max_overflow"])
    checks.append(at_most(figure, value, limit))
    errors = sum(p.errors for (_, case, _), p in points.items() if case != "nullpool")
    checks.append(Check("errors, every case but nullpool", errors, "0", errors == 0))

    for (workload, case, _), point in points.items():
        if workload == "bursty" and point.runs:
            figure = f"bursty, {case} new server connections per request"
            checks.append(Check(figure, point.new_connections_per_request, "no target", None))
    return checks


def worst(
    points: dict[Key, Point], figure: Callable[[Point], float]
) -> tuple[Key | None, float | None]:
    """The point with the highest ``figure``, and that figure; (None, None) if none."""
    if not points:
        return None, None
    key = max(points, key=lambda key: figure(points[key]))
    return key, figure(points[key])


def where(key: Key | None) -> str:
    return f" (most: {key[0].replace('-', ' ')} at {key[2]})" if key else ""


def targets_met(results: dict[int, dict[Key, Point]], settings: dict[str, object]) -> bool:
    """No target missed; a figure that was not measured misses nothing."""
    return all(check.met is not False for check in targets(results, settings))


def draw_plots(results: dict[int, dict[Key, Point]], directory: Path) -> list[Path]:
    """One PNG per workload that was run, into ``directory``; returns their paths."""
    import charts  # matplotlib is needed only here (bench/run installs it)

    directory.mkdir(parents=True, exist_ok=True)
    ran = {workload for points in results.values() for workload, _, _ in points}
    drawn = []
    for workload in (workload for name, workload in WORKLOADS.items() if name in ran):
        path = directory / f"{workload.name}.png"
        title = f"{workload.name.replace('-', ' ')}: {workload.request}".replace("`", "")
        if workload.name in PLOTTED_AGAINST_CLIENTS:
            lines = []
            for workers, points in results.items():
                for case in workload.paths:
                    measured = sorted(
                        ((clients, p) for (w, k, clients), p in points.items()
                         if (w, k) == (workload.name, case) and p.runs),
                        key=lambda item: item[0],
                    )  # fmt: skip
                    if not measured:
                        continue
                    lines.append(
                        charts.Line(
                            case,
                            workers,
                            clients=[clients for clients, _ in measured],
                            rps=[p.median("rps") for _, p in measured],
                            rps_low=[min(run.rps for run in p.runs) for _, p in measured],
                            rps_high=[max(run.rps for run in p.runs) for _, p in measured],
                            p99_ms=[p.median("p99_ms") for _, p in measured],
                        )
                    )
            charts.draw_lines(path, title, lines)
        else:
            bars = [
                charts.Bar(case, workers, p.median("rps"), p.new_connections_per_request)
                for workers, points in results.items()
                for (w, case, _), p in points.items()
                if w == workload.name and p.runs
            ]
            charts.draw_bars(path, title, bars)
        drawn.append(path)
    return drawn


def render_report(
    results: dict[int, dict[Key, Point]],
    settings: dict[str, object],
    options: argparse.Namespace,
    python: Path,
    elapsed: float,
    plots: list[Path],
    results_path: Path,
) -> str:
    """The section of RESULTS.md between the markers."""
    pool_size, max_overflow = int(settings["pool_size"]), int(settings["max_overflow"])
    limit = pool_size + max_overflow
    burst = phases("bursty", BURST_CLIENTS[0], options.duration)

    def listed(numbers: list[int]) -> str:
        return ",".join(map(str, numbers))

    command = (
        f"bench/run --duration {options.duration} --repeats {options.repeats} "
        f"--workloads {','.join(options.workloads)} --connections {listed(options.connections)} "
        f"--slow-connections {listed(options.slow_connections)} "
        f"--write-connections {listed(options.write_connections)} "
        f"--workers {listed(options.workers)}"
        + (f" --template {options.template}" if options.template != str(TEMPLATE_DIR) else "")
    )
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {elapsed / 60:.0f} min: `{command}`",
        "",
        f"Machine: {machine()}; {versions(python)}.",
        "",
        f"Baked defaults: pool_size {pool_size}, max_overflow {max_overflow}, pool_pre_ping "
        f"{str(settings['pool_pre_ping']).lower()}. The tutorial's engine has the same "
        f"pool_size and max_overflow, the raw asyncpg pool {pool_size} to {limit} connections: "
        f"each app may hold {limit} server connections per worker. Medians of "
        f"{options.repeats} run(s) of {options.duration} s, the cases taking turns; each run "
        f"but bursty ones follows {LEAD_IN_SECONDS} s of the same load, unmeasured.",
        "",
        "- *spread*: (max - min) / median of req/s over the runs.",
        "- *new conns/req*: the rise of `pg_stat_database.sessions` over a run, per request.",
        "- *peak conns*: the most connections of the case's server in `pg_stat_activity`, "
        f"read every {POLL_SECONDS * 1000:.0f} ms, over all runs; bold if above the limit. "
        "ping is answered by the raw app's server: its figure is raw's pool at rest.",
        "- *CPU ms/req*: CPU time of the uvicorn processes per request.",
        "- *raw floor*: the faster of raw plain (dicts, no return type) and raw typed "
        "(`-> list[ItemOut]`) at each point.",
        f"- *bursty*: a run is {len(burst) // 2} turns of {burst[0][0]} clients for "
        f"{burst[0][1]} s, then {burst[1][0]} for {burst[1][1]} s; its req/s is its "
        "requests over its whole time, its latencies are not merged.",
    ]
    checks = targets(results, settings)
    if checks:
        lines += ["", "### Targets (1 worker)", "", "| figure | measured | target | met |",
                  "|---|---|---|---|"]  # fmt: skip
        for check in checks:
            met = {True: "yes", False: "**no**", None: "—"}[check.met]
            lines.append(f"| {check.figure} | {shown(check.value)} | {check.target} | {met} |")
    for workers, points in results.items():
        lines += ["", f"### {workers} uvicorn worker(s)"]
        for workload in (WORKLOADS[name] for name in options.workloads):
            lines += ["", f"#### {workload.name.replace('-', ' ')}: {workload.request}", ""]
            clients = clients_of(workload.name, options)
            lines += workload_table(workload, points, limit * workers, clients)
            lines += ratio_table(workload, points, clients)
    if plots:
        lines += ["", "### Plots", ""]
        for path in plots:
            link = os.path.relpath(path, results_path.resolve().parent)
            lines.append(f"![{path.stem.replace('-', ' ')}]({link})")
    return "\n".join(lines)


def workload_table(
    workload: Workload, points: dict[Key, Point], limit: int, clients: list[int]
) -> list[str]:
    """A row per case and number of clients; ``limit``: the connections all workers may hold."""
    lines = [
        "| case | clients | req/s | spread | p50 ms | p99 ms | p99/p50 | errors "
        "| new conns/req | peak conns | CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in workload.paths:
        for count in clients:
            p = points[workload.name, case, count]
            shown_clients = f"{count} ↔ {BURST_CLIENTS[1]}" if workload.name == "bursty" else count
            p50, p99 = p.median("p50_ms"), p.median("p99_ms")
            peak = str(p.peak_connections)
            if p.peak_connections > limit and case != "nullpool":
                peak = f"**{peak}**"
            lines.append(
                f"| {case} | {shown_clients} | {p.median('rps'):,.0f} | {p.spread:.0%} "
                f"| {shown(p50, 2)} | {shown(p99, 2)} | {shown(p99 / p50, 1)} | {p.errors} "
                f"| {p.new_connections_per_request:.3f} | {peak} | {p.cpu_ms_per_request:.2f} |"
            )
    return lines


# The ratios of req/s shown under each workload's table, where both cases ran.
RATIOS = (
    ("pooled", "raw floor"),
    ("pooled", "tutorial"),
    ("tutorial", "raw floor"),
    ("pooled", "nullpool"),
    ("raw typed", "raw plain"),
    ("raw floor", "ping"),
)


def ratio_table(workload: Workload, points: dict[Key, Point], clients: list[int]) -> list[str]:
    cases = set(workload.paths) | ({"raw floor"} if "raw plain" in workload.paths else set())
    rows = [(a, b) for a, b in RATIOS if a in cases and b in cases]
    if not rows or workload.name == "bursty":
        return []
    lines = ["", "| ratio of req/s | " + " | ".join(f"c={c}" for c in clients) + " |",
             "|---|" + "---|" * len(clients)]  # fmt: skip
    for numerator, denominator in rows:
        cells = [ratio(points, workload.name, numerator, denominator, c) for c in clients]
        name = f"{numerator} ÷ {denominator}".replace("nullpool", "NullPool")
        lines.append(f"| {name} | " + " | ".join(shown(cell, 2) for cell in cells) + " |")
    return lines


def shown(value: float | None, decimals: int = 3) -> str:
    """A figure for the tables: ints as they are, "—" for what was not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.{decimals}f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}"


def versions(python: Path) -> str:
    listing = json.loads(run([str(python), "-m", "pip", "list", "--format=json"], capture=True))
    installed = {package["name"].lower(): package["version"] for package in listing}
    wanted = ("fastapi", "sqlalchemy", "asyncpg", "pydantic", "uvicorn", "uvloop", "httptools")
    packages = ", ".join(f"{name} {installed[name]}" for name in wanted if name in installed)
    server = asyncio.run(server_version())
    # wrk prints its version with its usage, and exits 1.
    wrk_output = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    wrk_version = wrk_output.split()[1:2] or ["?"]
    return (f"Python {platform.python_version()}, PostgreSQL {server} on loopback, "
            f"wrk {wrk_version[0]}; {packages}")  # fmt: skip


async def server_version() -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        return await admin.fetchval("SHOW server_version")
    finally:
        await admin.close()


def write_results(path: Path, report: str) -> None:
    """Replace the measured part of RESULTS.md, keeping the notes written around it."""
    text = (
        path.read_text()
        if path.exists()
        else f"# Benchmark results\n\n{RESULTS_START}\n{RESULTS_END}\n"
    )
    before, _, rest = text.partition(RESULTS_START)
    _, _, after = rest.partition(RESULTS_END)
    path.write_text(f"{before}{RESULTS_START}\n{report}\n{RESULTS_END}{after}")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    sys.exit(main())
