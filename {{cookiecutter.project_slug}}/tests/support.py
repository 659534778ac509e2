"""Helpers shared by the tests: test settings, the PostgreSQL switch, servers to test against."""

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
{%- if cookiecutter.metrics %}
from prometheus_client.parser import text_string_to_metric_families
{%- endif %}
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.package_name }} import engine
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.dependencies import SessionDep
from {{ cookiecutter.package_name }}.models import Item
from {{ cookiecutter.package_name }}.settings import Settings


def _test_database_url() -> tuple[str, str | None]:
    """``TEST_DATABASE_URL`` as the app would use it (``postgres://`` means asyncpg), or "",
    and what is wrong with it, if anything (conftest.py stops the run with that line)."""
    given = os.environ.get("TEST_DATABASE_URL", "")
    if not given:
        return "", None
    try:
        return Settings(_env_file=None, database_url=given).database_url.get_secret_value(), None
    except ValidationError as error:
        problem = error.errors()[0]["msg"].removeprefix("Value error, ")
        return "", f"TEST_DATABASE_URL: {problem}"


TEST_DATABASE_URL, TEST_DATABASE_URL_PROBLEM = _test_database_url()
# Where uvicorn and alembic run from in the tests that start them as processes.
PROJECT_DIR = Path(__file__).resolve().parent.parent
USE_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")

requires_postgres = pytest.mark.skipif(
    not USE_POSTGRES,
    reason="needs PostgreSQL: set TEST_DATABASE_URL=postgresql+asyncpg://user@host:5432/dbname",
)


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Settings for a test: the given values, then environment variables, never a local .env."""
    return Settings(_env_file=None, database_url=database_url, **overrides)


def plain_engine(database_url: str, **options: Any) -> AsyncEngine:
    """An engine of a test's own (no app pool machinery) that connects as the app does, so
    the URL's parameters (sslmode, connect_timeout, ...) apply to it too."""
    url = make_url(database_url)
    connect_args = engine.connect_args(url, make_settings(database_url))
    if "server_settings" in connect_args:
        # Not the app's name: tests count the app's connections by it.
        connect_args["server_settings"]["application_name"] = "tests"
    return create_async_engine(engine.engine_url(url), connect_args=connect_args, **options)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """Run the app's lifespan and give a client that talks to it in-process."""
    app = create_app(settings)
    async with LifespanManager(app):
        # raise_app_exceptions=False: a handler that raises gives a 500, as in production.
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


def add_holding_route(app: FastAPI, seconds: float) -> None:
    """GET /hold: a query, then the session kept for ``seconds``; answers the pool's numbers."""

    @app.get("/hold")
    async def hold(session: SessionDep) -> dict[str, int]:
        await session.execute(select(Item).limit(1))
        await asyncio.sleep(seconds)
        return app.state.database.pool_status()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    process: asyncio.subprocess.Process
    output: str = ""  # what uvicorn printed, once it has stopped

    async def stop(self) -> None:
        """SIGTERM, then wait for uvicorn's graceful shutdown and keep what it printed."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            printed = await asyncio.wait_for(self.process.communicate(), timeout=30)
            self.output = printed[0].decode()


@asynccontextmanager
async def uvicorn_server(
    env: dict[str, str],
    workers: int = 1,
    app: tuple[str, ...] = ("{{ cookiecutter.package_name }}.main:app",),
) -> AsyncIterator[Server]:
    """The app served by a real uvicorn on a free port, ready; stopped on exit if still up.

    ``app`` is uvicorn's app argument, and options such as ``--factory``.
    """
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", *app,
        "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
        cwd=PROJECT_DIR, env=os.environ | env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", process)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            for _ in range(150):
                try:
                    if (await client.get("/health/db")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield server
    finally:
        try:
            await server.stop()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
{%- if cookiecutter.metrics %}


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    """``GET /metrics``, parsed: each sample's value by its name and labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly these labels; 0 when there is none."""
    return samples.get((name, frozenset(labels.items())), 0.0)
{%- endif %}


def running_as_root() -> bool:
    """PostgreSQL refuses to run as root: the tests' own servers then run as "postgres"."""
    return getattr(os, "geteuid", lambda: -1)() == 0


def postgres_bindir(programs: tuple[str, ...] = ("initdb", "pg_ctl")) -> Path | None:
    """The directory that holds PostgreSQL's ``programs`` (the newest version in
    /usr/lib/postgresql on Debian and Ubuntu, else the PATH's); None if none does."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    found = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    for bindir in sorted(found, key=version, reverse=True):
        if all((bindir / program).exists() for program in programs):
            return bindir
    initdb = shutil.which("initdb")
    if initdb and all(shutil.which(program) for program in programs):
        return Path(initdb).parent
    return None
