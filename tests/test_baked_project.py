"""Each variant's baked project passes its own test suite, and a baked app serves over HTTP."""

import json
import os
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .support import BakedVenv, run
from .variants import POSTGRES_URL, VARIANTS

pytestmark = pytest.mark.slow

SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "POOL_SIZE",
    "MAX_OVERFLOW",
    "POOL_TIMEOUT",
    "POOL_RECYCLE",
    "POOL_PRE_PING",
    "TEST_DATABASE_URL",
)


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any setting that could mask the baked defaults."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    return env | extra


def package_name(project: Path) -> str:
    (package,) = (project / "src").iterdir()
    return package.name


def bake_and_install(cookies, venv: BakedVenv, context: dict) -> Path:
    result = cookies.bake(extra_context=context)
    assert result.exit_code == 0, result.exception
    venv.install(result.project_path)
    return result.project_path


def run_baked_suite(venv: BakedVenv, project: Path, **env: str) -> dict[str, list[str]]:
    """Run the project's pytest; return the test ids by outcome."""
    report = project / "report.xml"
    suite = run(
        venv.python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}",
        cwd=project,
        env=clean_environment(**env),
    )  # fmt: skip
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    outcomes: dict[str, list[str]] = {"passed": [], "skipped": []}
    for case in ElementTree.parse(report).iter("testcase"):
        outcome = "skipped" if case.find("skipped") is not None else "passed"
        outcomes[outcome].append(f"{case.get('classname')}.{case.get('name')}")
        if outcome == "skipped":
            assert "needs PostgreSQL" in case.find("skipped").get("message", "")
    return outcomes


@pytest.mark.parametrize("context", VARIANTS)
def test_baked_suite_passes_on_postgres_with_nothing_skipped(
    cookies, baked_venv: BakedVenv, postgres_url: str, context: dict
) -> None:
    project = bake_and_install(cookies, baked_venv, context)

    outcomes = run_baked_suite(baked_venv, project, TEST_DATABASE_URL=postgres_url)

    assert outcomes["skipped"] == []
    assert len(outcomes["passed"]) >= 30


@pytest.mark.parametrize("context", VARIANTS)
def test_baked_suite_passes_on_sqlite_skipping_only_postgres_tests(
    cookies, baked_venv: BakedVenv, context: dict
) -> None:
    project = bake_and_install(cookies, baked_venv, context)

    outcomes = run_baked_suite(baked_venv, project)

    assert len(outcomes["passed"]) >= 30
    assert sorted(outcomes["skipped"]) == [
        "tests.test_pool.test_sequential_requests_reuse_pooled_server_connections",
        "tests.test_pool.test_workers_starting_together_create_the_schema_once",
    ]


@pytest.mark.parametrize("context", VARIANTS)
def test_baked_answers_are_the_settings_defaults(
    cookies, baked_venv: BakedVenv, context: dict
) -> None:
    project = bake_and_install(cookies, baked_venv, context)
    answers = {
        "database_url": "sqlite+aiosqlite:///./app.db",
        "pool_size": 5,
        "max_overflow": 10,
        "pool_timeout": 30,
        "pool_recycle": 1800,
        "pool_pre_ping": True,
    } | {key: value for key, value in context.items() if key in SETTINGS_KEYS}
    package = package_name(project)
    script = (
        f"from {package}.settings import Settings; s = Settings(); "
        "print(s.model_dump_json() + '\\n' + s.database_url.get_secret_value())"
    )

    printed = run(baked_venv.python, "-c", script, cwd=project, env=clean_environment())

    assert printed.returncode == 0, printed.stderr
    dumped, database_url = printed.stdout.splitlines()
    settings = json.loads(dumped)
    # The .env file (written for a URL with a password) gives the app the full URL.
    assert database_url == answers.pop("database_url")
    assert settings["database_url"] == "**********"
    assert {key: settings[key] for key in answers} == answers


SETTINGS_KEYS = ("database_url", "pool_size", "max_overflow", "pool_timeout", "pool_recycle",
                 "pool_pre_ping")  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def uvicorn_server(venv: BakedVenv, project: Path, env: dict[str, str]) -> Iterator[str]:
    """Serve the baked app with uvicorn on a free loopback port; stop it afterwards."""
    port = free_port()
    package = package_name(project)
    server = subprocess.Popen(
        [
            str(venv.bin("uvicorn")),
            f"{package}.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                httpx.get(f"{base_url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
                time.sleep(0.2)
        yield base_url
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
        # uvicorn shuts down gracefully, then exits by the signal it got (uvicorn >= 0.29).
        assert server.returncode in (0, -signal.SIGTERM), output
        assert "Application shutdown complete." in output, output
        assert "Traceback" not in output, output


def exercise_items_api(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        created = client.post("/items", json={"name": "smoke", "description": "over real HTTP"})
        assert created.status_code == 201, created.text
        listed = client.get("/items")
        assert listed.status_code == 200
        assert created.json() in listed.json()
        health = client.get("/health/db")
        assert health.status_code == 200, health.text
        assert health.json()["pool"]["checked_out"] == 0


def test_default_bake_serves_items_over_http_on_sqlite(cookies, baked_venv: BakedVenv) -> None:
    project = bake_and_install(cookies, baked_venv, {})

    with uvicorn_server(baked_venv, project, clean_environment()) as base_url:
        exercise_items_api(base_url)

    assert (project / "app.db").is_file()


@pytest.fixture
def scratch_postgres_database(baked_venv: BakedVenv, postgres_url: str) -> Iterator[str]:
    """A database of the test's own on the PostgreSQL server, dropped afterwards."""
    name = f"smoke_{uuid.uuid4().hex[:12]}"
    admin = (
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        "    connection = await asyncpg.connect(sys.argv[1])\n"
        "    await connection.execute(sys.argv[2])\n"
        "    await connection.close()\n"
        "asyncio.run(main())\n"
    )
    server_url = postgres_url.replace("postgresql+asyncpg://", "postgresql://")

    def execute(statement: str) -> None:
        done = run(baked_venv.python, "-c", admin, server_url, statement)
        assert done.returncode == 0, done.stderr

    execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_postgres_bake_serves_items_over_http(
    cookies, baked_venv: BakedVenv, scratch_postgres_database: str
) -> None:
    project = bake_and_install(cookies, baked_venv, {"database_url": POSTGRES_URL})
    env = clean_environment(DATABASE_URL=scratch_postgres_database)

    with uvicorn_server(baked_venv, project, env) as base_url:
        exercise_items_api(base_url)
        health = httpx.get(f"{base_url}/health/db").json()

    assert health["dialect"] == "postgresql"
    assert health["driver"] == "asyncpg"
