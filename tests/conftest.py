"""Fixtures for baking the template and running what it bakes."""

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from .support import BakedVenv, PasswordCheckingPostgres, PgBouncer, postgres_admin


def need(reason: str) -> None:
    """Skip a test that lacks a real part, except in CI, where every case must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run every case")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server to test against."""
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        need("TEST_DATABASE_URL is not set to a PostgreSQL URL (.ci/run sets it)")
    return url


@pytest.fixture
def scratch_database(postgres_url: str) -> Iterator[str]:
    """The URL of a database of the test's own on the PostgreSQL server, dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    postgres_admin(postgres_url, f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    postgres_admin(postgres_url, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def password_checking_postgres() -> Iterator[PasswordCheckingPostgres]:
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdb or os.geteuid() != 0 or not shutil.which("runuser"):
        need("a PostgreSQL server of its own needs Debian's postgresql package, root and runuser")
    server = PasswordCheckingPostgres(initdb[-1].parent)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pgbouncer(postgres_url: str) -> Iterator[PgBouncer]:
    executable = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if executable is None:
        need("PgBouncer is not installed (.ci/run installs Debian's pgbouncer)")
    server = make_url(postgres_url)
    bouncer = PgBouncer(executable, server.host or "127.0.0.1", server.port or 5432)
    bouncer.start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="session")
def baked_venv(cookies_session, tmp_path_factory: pytest.TempPathFactory) -> BakedVenv:
    result = cookies_session.bake()
    assert result.exit_code == 0, result.exception
    venv = BakedVenv(tmp_path_factory.mktemp("baked") / "venv")
    venv.create(result.project_path)
    return venv
