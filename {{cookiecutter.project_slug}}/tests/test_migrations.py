{% if cookiecutter.use_alembic -%}
import os
import subprocess
import sys

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from .support import PROJECT_DIR

pytestmark = pytest.mark.anyio


def alembic(database_url: str, *arguments: str) -> subprocess.CompletedProcess:
    """Run the alembic command as a developer would, from the project folder."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", *arguments],
        cwd=PROJECT_DIR,
        env=os.environ | {"DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def table_names(database_url: str) -> set[str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_upgrade_match_the_models_and_downgrade(database_url: str) -> None:
    upgraded = alembic(database_url, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert {"items", "alembic_version"} <= await table_names(database_url)

    # autogenerate finds nothing to do: the migrations and the models agree.
    drift = alembic(database_url, "check")
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert "No new upgrade operations detected" in drift.stdout + drift.stderr

    downgraded = alembic(database_url, "downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    assert "items" not in await table_names(database_url)
{%- endif %}
