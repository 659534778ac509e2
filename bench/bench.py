"""Does pooling pay, and how close does the baked app come to the raw driver?

Bakes a project with a PostgreSQL URL, serves it with uvicorn against the real server and
drives it with wrk, next to three references served by the same uvicorn:

    pooled    the baked app's GET /items with its pool (the baked defaults)
    nullpool  the same app with POOL_CLASS=null: a new server connection per request
    raw       the same query on a raw asyncpg pool (bench/floor_app.py): the floor
    ping      an endpoint without a database: the HTTP ceiling of this machine

Every case runs at each concurrency, in turn, ``--repeats`` times; the table shows the
medians and how far the runs spread. Loopback only; every server is stopped at the end.
Run it as ``bench/run`` (which installs what it needs); ``--help`` lists the knobs.
"""

import argparse
import asyncio
import contextlib
import json
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

BENCH_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = BENCH_DIR.parent
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "bench"
PACKAGE = "bench_app"
SEED_ITEMS = 10
CASES = ("pooled", "nullpool", "raw", "ping")
RESULTS_START = "<!-- bench:start -->"
RESULTS_END = "<!-- bench:end -->"

# The figures bench/RESULTS.md is held to (issue 5).
RATIO_TO_RAW_TARGET = 0.70
TAIL_TARGET = 3.0
POOLED_OVER_NULLPOOL_TARGET = 5.0


@dataclass
class Run:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    new_connections: int
    cpu_seconds: float


@dataclass
class Point:
    """Every run of one case at one concurrency."""

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


def main() -> int:
    options = parse_arguments()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run bench/run, which installs it", file=sys.stderr)
        return 2
    work = Path(options.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = bake(work, options.template)
    python = install(work, project)
    asyncio.run(recreate_database())
    settings = baked_settings(python)
    started = time.monotonic()
    results: dict[int, dict[tuple[str, int], Point]] = {}
    for workers in options.workers:
        results[workers] = measure(python, project, settings, workers, options)
    elapsed = time.monotonic() - started
    report = render_report(results, settings, options, python, elapsed)
    print(report)
    write_results(Path(options.results), report)
    if options.check and not targets_met(results):
        return 1
    return 0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (3)")
    parser.add_argument("--connections", default="1,16,64", help="wrk connections (1,16,64)")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts (1,2)")
    parser.add_argument(
        "--template",
        default=str(TEMPLATE_DIR),
        help="template folder to bake, or a git revision of this repository (an earlier state)",
    )
    parser.add_argument("--work-dir", default=str(BENCH_DIR / "out"), help="bake and venv here")
    parser.add_argument(
        "--results", default=str(BENCH_DIR / "RESULTS.md"), help="file to write the table to"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    options = parser.parse_args()
    for name in ("connections", "workers"):
        value = getattr(options, name)
        try:
            setattr(options, name, [int(number) for number in value.split(",")])
        except ValueError:
            parser.error(f"--{name}={value!r}: expected whole numbers separated by commas")
    if min(options.workers) < 1:
        parser.error("--workers: every count must be at least 1")
    if options.duration < 1 or options.repeats < 1 or min(options.connections) < 1:
        parser.error("--duration, --repeats and every connection count must be at least 1")
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
        "database_url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
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


def baked_settings(python: Path) -> dict[str, object]:
    """The baked defaults, read from the installed app's Settings."""
    code = (
        f"from {PACKAGE}.settings import Settings; import json; "
        "s = Settings(); print(json.dumps({'pool_size': s.pool_size, "
        "'max_overflow': s.max_overflow, 'pool_pre_ping': s.pool_pre_ping}))"
    )
    return json.loads(run([str(python), "-c", code], capture=True))


async def recreate_database() -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()


def measure(
    python: Path,
    project: Path,
    settings: dict[str, object],
    workers: int,
    options: argparse.Namespace,
) -> dict[tuple[str, int], Point]:
    """Every case at every concurrency, the cases taking turns so that drift hits all alike."""
    print(f"== {workers} worker(s)", flush=True)
    points = {(case, c): Point() for case in CASES for c in options.connections}
    with contextlib.ExitStack() as servers:
        urls = {}
        for case in CASES:
            urls[case] = servers.enter_context(serve(case, python, project, settings, workers))
        seed(urls["pooled"])
        for url in urls.values():  # warm up: caches, prepared statements, the pools
            wrk(url, connections=16, duration=2)
        for repeat in range(options.repeats):
            for connections in options.connections:
                for case in CASES:
                    run_ = measured_run(urls[case], connections, options.duration)
                    points[case, connections].runs.append(run_)
                    print(
                        f"   run {repeat + 1} {case:>8} c={connections:<3} {run_.rps:8.0f} req/s"
                        f"  p50 {run_.p50_ms:7.2f} ms  p99 {run_.p99_ms:7.2f} ms"
                        f"  errors {run_.errors}",
                        flush=True,
                    )
    return points


@contextlib.contextmanager
def serve(
    case: str, python: Path, project: Path, settings: dict[str, object], workers: int
) -> Iterator[str]:
    """One uvicorn server for ``case`` on a free loopback port, stopped on exit."""
    port = free_port()
    bin_dir = python.parent
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    if case in ("pooled", "nullpool"):
        app, app_dir = f"{PACKAGE}.main:app", project
        env["POOL_CLASS"] = "queue" if case == "pooled" else "null"
        ready = "/health/db"
    else:
        # The raw pool holds what the baked one lets requests use: pool_size connections.
        app, app_dir = "floor_app:app", BENCH_DIR
        env["FLOOR_DSN"] = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
        env["FLOOR_POOL_SIZE"] = str(settings["pool_size"])
        ready = "/ping"
    command = [
        str(bin_dir / "uvicorn"), app, "--app-dir", str(app_dir),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    log = open(project.parent / f"{case}-{workers}.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=app_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base + ready, server)
        yield base + ("/items" if case != "ping" else "/ping")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def wait_until_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server for {url} exited with {server.returncode}: see its log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"server for {url} did not become ready in 30 s")


def seed(items_url: str) -> None:
    """Items for GET /items to list, written through the app's own API."""
    with httpx.Client(timeout=10) as client:
        if client.get(items_url).json():
            return
        for number in range(1, SEED_ITEMS + 1):
            body = {"name": f"item {number}", "description": f"the item numbered {number}"}
            client.post(items_url, json=body).raise_for_status()


def measured_run(url: str, connections: int, duration: int) -> Run:
    port = int(url.split(":")[2].split("/")[0])
    pids = server_pids(port)
    cpu_before = cpu_seconds(pids)
    sessions_before = asyncio.run(server_sessions())
    output = wrk(url, connections, duration)
    sessions_after = asyncio.run(server_sessions())
    cpu_used = cpu_seconds(pids) - cpu_before
    return parse_wrk(output, sessions_after - sessions_before, cpu_used)


def wrk(url: str, connections: int, duration: int) -> str:
    # One wrk thread: the load generator shares this machine's cores with the server.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    return run([*command, url], capture=True)


def parse_wrk(output: str, new_connections: int, cpu_used: float) -> Run:
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", output, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Run(
        requests=requests,
        rps=rps,
        p50_ms=milliseconds(percentiles["50"]),
        p99_ms=milliseconds(percentiles["99"]),
        errors=errors,
        new_connections=new_connections,
        cpu_seconds=cpu_used,
    )


def milliseconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


async def server_sessions() -> int:
    """Connections ever opened to the benchmark database (pg_stat_database.sessions)."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        query = "SELECT sessions FROM pg_stat_database WHERE datname = $1"
        return await admin.fetchval(query, DATABASE)
    finally:
        await admin.close()


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


def run(command: list[str], capture: bool = False, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout if capture else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def targets(results: dict[int, dict[tuple[str, int], Point]]) -> list[tuple[str, float, str, bool]]:
    """(figure, value, target, met) for the targets that the 1-worker run is held to."""
    points = results.get(1)
    if points is None:
        return []
    checks = []

    def point(case: str, c: int) -> Point | None:
        return points.get((case, c))

    for c in (16, 64):
        pooled, raw = point("pooled", c), point("raw", c)
        if pooled and raw:
            ratio = pooled.median("rps") / raw.median("rps")
            checks.append((f"pooled / raw asyncpg, req/s at {c}", ratio,
                           f">= {RATIO_TO_RAW_TARGET}", ratio >= RATIO_TO_RAW_TARGET))  # fmt: skip
    if pooled := point("pooled", 64):
        tail = pooled.median("p99_ms") / pooled.median("p50_ms")
        checks.append(("pooled p99 / p50 at 64", tail, f"<= {TAIL_TARGET}", tail <= TAIL_TARGET))
    pooled, nullpool = point("pooled", 16), point("nullpool", 16)
    if pooled and nullpool:
        ratio = pooled.median("rps") / nullpool.median("rps")
        target = POOLED_OVER_NULLPOOL_TARGET
        checks.append(("pooled / NullPool, req/s at 16", ratio, f">= {target}", ratio >= target))
    pooled_points = [p for (case, _), p in points.items() if case == "pooled"]
    churn = max(p.new_connections_per_request for p in pooled_points)
    checks.append(("pooled new server connections per request", churn, "0", churn == 0))
    errors = sum(p.errors for (case, _), p in points.items() if case != "nullpool")
    checks.append(("errors (pooled, raw, ping)", errors, "0", errors == 0))
    return checks


def targets_met(results: dict[int, dict[tuple[str, int], Point]]) -> bool:
    return all(met for *_, met in targets(results))


def render_report(
    results: dict[int, dict[tuple[str, int], Point]],
    settings: dict[str, object],
    options: argparse.Namespace,
    python: Path,
    elapsed: float,
) -> str:
    connections = ",".join(map(str, options.connections))
    worker_counts = ",".join(map(str, options.workers))
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {elapsed / 60:.0f} min: `bench/run "
        f"--duration {options.duration} --repeats {options.repeats} --connections "
        f"{connections} --workers {worker_counts}"
        + (f" --template {options.template}`" if options.template != str(TEMPLATE_DIR) else "`"),
        "",
        f"Machine: {machine()}; {versions(python)}.",
        f"Baked defaults: pool_size {settings['pool_size']}, max_overflow "
        f"{settings['max_overflow']}, pool_pre_ping {str(settings['pool_pre_ping']).lower()}; "
        f"the raw asyncpg pool holds {settings['pool_size']} connections. "
        f"`GET /items` returns {SEED_ITEMS} rows. Medians of {options.repeats} run(s) of "
        f'{options.duration} s; "spread" is (max - min) / median of req/s over the runs.',
    ]
    for workers, points in results.items():
        lines += ["", f"### {workers} uvicorn worker(s)", ""]
        lines += ["| case | conns | req/s | spread | p50 ms | p99 ms | p99/p50 | errors "
                  "| new conns/req | server CPU ms/req |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for case in CASES:
            for c in options.connections:
                p = points[case, c]
                lines.append(
                    f"| {case} | {c} | {p.median('rps'):,.0f} | {p.spread:.0%} "
                    f"| {p.median('p50_ms'):.2f} | {p.median('p99_ms'):.2f} "
                    f"| {p.median('p99_ms') / p.median('p50_ms'):.1f} | {p.errors} "
                    f"| {p.new_connections_per_request:.3f} | {p.cpu_ms_per_request:.2f} |"
                )
        lines += ["", "| ratio | " + " | ".join(f"c={c}" for c in options.connections) + " |",
                  "|---|" + "---|" * len(options.connections)]  # fmt: skip
        for name, numerator, denominator in (("pooled / NullPool", "pooled", "nullpool"),
                                             ("pooled / raw asyncpg", "pooled", "raw"),
                                             ("raw asyncpg / ping", "raw", "ping")):  # fmt: skip
            cells = [points[numerator, c].median("rps") / points[denominator, c].median("rps")
                     for c in options.connections]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |")
    checks = targets(results)
    if checks:
        lines += ["", "### Targets (1 worker)", "", "| figure | measured | target | met |",
                  "|---|---|---|---|"]  # fmt: skip
        for name, value, target, met in checks:
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {name} | {shown} | {target} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


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
