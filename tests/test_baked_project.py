"""Each variant's baked project passes its own test suite, and baked apps serve over HTTP."""

import json
import re
import sys
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from .support import (
    BakedVenv,
    bake_and_install,
    clean_environment,
    package_name,
    postgres_admin,
    run,
    uvicorn_server,
)
from .variants import POSTGRES_URL, VARIANTS

pytestmark = pytest.mark.slow


def run_baked_suite(
    venv: BakedVenv, project: Path, *options: str, **env: str
) -> dict[str, list[str]]:
    """Run the project's pytest; return the test ids by outcome, and the skip reasons."""
    report = project / "report.xml"
    suite = run(
        venv.python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", *options,
        cwd=project,
        env=clean_environment(**env),
    )  # fmt: skip
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    outcomes: dict[str, list[str]] = {"passed": [], "skipped": [], "reasons": []}
    for case in ElementTree.parse(report).iter("testcase"):
        skipped = case.find("skipped")
        outcome = "passed" if skipped is None else "skipped"
        outcomes[outcome].append(f"{case.get('classname')}.{case.get('name')}")
        if skipped is not None:
            outcomes["reasons"].append(skipped.get("message", ""))
    return outcomes


# Tests that take long and whose code is the same in most variants run in a few of them
# only, which keeps the template's run within its budget: the read-replica tests (a
# primary and a replica of their own, some 20 s) with metrics, without, and on a pool of
# one connection; the load test (some 10 s) with metrics and without.
SQLITE_VARIANTS = {"defaults-sqlite-file", "sqlite-memory-no-pre-ping-no-alembic-no-metrics"}
REPLICA_VARIANTS = SQLITE_VARIANTS | {"postgres-single-connection-no-alembic"}
RUN_ONLY_IN = {
    "tests/pool/test_replicas.py": REPLICA_VARIANTS,
    "tests/pool/test_replication_cluster.py": REPLICA_VARIANTS,
    "tests/pool/test_loadtest.py": SQLITE_VARIANTS,
}


@pytest.mark.parametrize("context", VARIANTS)
def test_baked_suite_passes_on_postgres_and_on_sqlite(
    cookies, baked_venv: BakedVenv, scratch_database: str, context: dict, request
) -> None:
    """Every variant's whole suite (``--slow``) on PostgreSQL. On SQLite, the whole suite
    of the variants baked for SQLite; the others, baked for PostgreSQL, run their fast
    suite there, the one their users run first."""
    variant = request.node.callspec.id
    project = bake_and_install(cookies, baked_venv, context)
    # The soak test runs its full count for the defaults, a short one for the other variants.
    soak = {} if not context else {"SOAK_REQUESTS_PER_CLIENT": "5"}
    options = ["--slow"]
    options += [f"--deselect={path}" for path, only in RUN_ONLY_IN.items() if variant not in only]

    on_postgres = run_baked_suite(
        baked_venv, project, *options, TEST_DATABASE_URL=scratch_database, **soak
    )
    slow_on_sqlite = variant in SQLITE_VARIANTS
    on_sqlite = run_baked_suite(baked_venv, project, *(options if slow_on_sqlite else []), **soak)

    assert on_postgres["skipped"] == []
    assert len(on_postgres["passed"]) >= 90
    for path, only in RUN_ONLY_IN.items():
        ran = any(
            test.startswith(path.removesuffix(".py").replace("/", "."))
            for test in on_postgres["passed"]
        )
        assert ran is (variant in only), path
    # Only PostgreSQL-only tests skip on SQLite, and each of them ran on PostgreSQL.
    assert on_sqlite["skipped"] or not slow_on_sqlite
    assert all("needs PostgreSQL" in reason for reason in on_sqlite["reasons"])
    assert set(on_sqlite["skipped"]) <= set(on_postgres["passed"])
    on_sqlite_too = set(on_sqlite["passed"]) | set(on_sqlite["skipped"])
    if slow_on_sqlite:
        assert on_sqlite_too == set(on_postgres["passed"])
    else:
        assert on_sqlite_too < set(on_postgres["passed"])
        assert len(on_sqlite["passed"]) >= 60


def test_baked_suite_needs_no_createdb_and_says_which_tests_do(
    cookies, baked_venv: BakedVenv, postgres_url: str
) -> None:
    """A role that may use its database but not create one, as on many CI and hosted
    servers: the tests of the app pass, the few that make a database of their own skip."""
    project = bake_and_install(cookies, baked_venv, {})
    role = f"app_{uuid.uuid4().hex[:8]}"
    postgres_admin(postgres_url, f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    postgres_admin(postgres_url, f'CREATE DATABASE "{role}" OWNER "{role}"')
    own_database = make_url(postgres_url).set(username=role, database=role)
    try:
        default_run = run_baked_suite(
            baked_venv, project, TEST_DATABASE_URL=own_database.render_as_string(False)
        )
        with_slow = run_baked_suite(
            baked_venv, project, "--slow", TEST_DATABASE_URL=own_database.render_as_string(False)
        )
    finally:
        postgres_admin(postgres_url, f'DROP DATABASE "{role}" WITH (FORCE)')
        postgres_admin(postgres_url, f'DROP ROLE "{role}"')

    assert any("test_items" in test for test in default_run["passed"])
    assert any("test_health" in test for test in default_run["passed"])
    assert set(default_run["passed"]) <= set(with_slow["passed"])
    assert with_slow["skipped"], "the tests that make a database of their own must skip"
    assert set(with_slow["reasons"]) == {
        "needs CREATEDB: the test makes an empty database of its own"
    }


SETTINGS_KEYS = ("database_url", "pool_size", "max_overflow", "pool_timeout", "pool_recycle",
                 "pool_pre_ping", "workers")  # fmt: skip


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
        "workers": 1,
    } | {key: value for key, value in context.items() if key in SETTINGS_KEYS}
    script = (
        f"from {package_name(project)}.settings import Settings; s = Settings(); "
        "print(s.model_dump_json() + '\\n' + s.database_url.get_secret_value())"
    )

    printed = run(baked_venv.python, "-c", script, cwd=project, env=clean_environment())

    assert printed.returncode == 0, printed.stderr
    dumped, database_url = printed.stdout.splitlines()
    settings = json.loads(dumped)
    # The .env file (written for a URL with a password) gives the app the full URL, and a
    # relative SQLite path is the project's, from whichever directory the app starts.
    answered = make_url(answers.pop("database_url"))
    in_memory = answered.database in (None, "", ":memory:")
    if answered.get_backend_name() == "sqlite" and not in_memory and answered.database[0] != "/":
        answered = answered.set(database=str(project.resolve() / answered.database))
    assert make_url(database_url) == answered
    assert settings["database_url"] == "**********"
    assert {key: settings[key] for key in answers} == answers


def exercise_items_api(base_url: str) -> dict:
    """Create, list and check readiness over real HTTP; return the readiness report."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        created = client.post("/items", json={"name": "smoke", "description": "over real HTTP"})
        assert created.status_code == 201, created.text
        listed = client.get("/items")
        assert listed.status_code == 200
        assert created.json() in listed.json()
        health = client.get("/health/db")
        assert health.status_code == 200, health.text
        assert health.json()["pool"]["checked_out"] == 0
        return health.json()


def test_default_bake_serves_items_over_http_on_sqlite(cookies, baked_venv: BakedVenv) -> None:
    project = bake_and_install(cookies, baked_venv, {})

    with uvicorn_server(baked_venv, project, clean_environment()) as server:
        health = exercise_items_api(server.base_url)

    assert (health["dialect"], health["driver"]) == ("sqlite", "aiosqlite")
    assert (project / "app.db").is_file()


def test_postgres_bake_serves_items_over_http(
    cookies, baked_venv: BakedVenv, scratch_database: str
) -> None:
    project = bake_and_install(cookies, baked_venv, {"database_url": POSTGRES_URL})
    env = clean_environment(DATABASE_URL=scratch_database)

    with uvicorn_server(baked_venv, project, env) as server:
        health = exercise_items_api(server.base_url)

    assert (health["dialect"], health["driver"]) == ("postgresql", "asyncpg")


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_common_postgres_url_forms_bake_into_an_app_that_connects(
    cookies, baked_venv: BakedVenv, scratch_database: str, scheme: str
) -> None:
    typed = scratch_database.replace("postgresql+asyncpg", scheme, 1)
    project = bake_and_install(cookies, baked_venv, {"database_url": typed})

    # No DATABASE_URL in the environment: the app runs on the baked default.
    with uvicorn_server(baked_venv, project, clean_environment()) as server:
        health = exercise_items_api(server.base_url)

    assert (health["dialect"], health["driver"]) == ("postgresql", "asyncpg")


def test_uv_sync_and_uv_run_pytest_work_in_a_baked_project(cookies, tmp_path: Path) -> None:
    """The README's uv commands, verbatim: uv makes the venv from PyPI and runs the tests."""
    project = cookies.bake(extra_context={"git_init": False}).project_path
    uv = Path(sys.executable).parent / "uv"
    env = clean_environment(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON=sys.executable)

    synced = run(uv, "sync", cwd=project, env=env)
    tested = run(uv, "run", "pytest", "-q", "-p", "no:cacheprovider", cwd=project, env=env)

    assert synced.returncode == 0, synced.stderr[-2000:]
    assert (project / "uv.lock").is_file()
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert re.search(r"\d+ passed, \d+ deselected", tested.stdout), tested.stdout[-500:]
    assert "failed" not in tested.stdout and "error" not in tested.stdout
