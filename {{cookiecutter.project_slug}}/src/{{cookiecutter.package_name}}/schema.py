"""Creating the tables: once per database, by whichever worker gets there first."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
{%- if cookiecutter.use_alembic %}
from pathlib import Path
{%- endif %}

{% if cookiecutter.use_alembic -%}

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
{%- else -%}
from sqlalchemy import MetaData, text
{%- endif %}
from sqlalchemy.ext.asyncio import AsyncConnection

# Any fixed number: workers starting together take this lock in turn to create tables.
SCHEMA_LOCK_ID = 7_241_857


async def create_schema(connection: AsyncConnection, metadata: MetaData) -> None:
    """Bring the database's tables up to date, in a transaction of its own.

    ``connection`` must not be in a transaction: on SQLite, foreign keys are turned off
    first, which SQLite can only do outside one.
{%- if cookiecutter.use_alembic %}
    Runs the Alembic migrations this database has not seen yet; ``metadata`` is what they
    lead to, and what ``alembic revision --autogenerate`` compares the database with.
{%- else %}
    Creates the tables of ``metadata`` that do not exist yet (``MetaData.create_all``);
    an existing table is left as it is.
{%- endif %}
    """
    async with sqlite_foreign_keys_off(connection), connection.begin():
        if connection.dialect.name == "postgresql":
            # Without it, workers starting together race to create the same tables.
            await connection.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_ID})"))
{%- if cookiecutter.use_alembic %}
        await connection.run_sync(upgrade_to_head)
{%- else %}
        await connection.run_sync(metadata.create_all)
{%- endif %}
        if connection.dialect.name == "sqlite":
            await refuse_rows_pointing_nowhere(connection)


async def refuse_rows_pointing_nowhere(connection: AsyncConnection) -> None:
    """With SQLite's checks off, a schema change could leave rows whose foreign key points
    nowhere: raise ``RuntimeError`` instead, and the change rolls back, as PostgreSQL
    would have refused it."""
    orphans = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
    if orphans:
        table, rowid, parent, _ = orphans[0]
        raise RuntimeError(
            f"schema change left {len(orphans)} row(s) whose foreign key points nowhere, "
            f"first: {table} rowid {rowid} -> {parent}"
        )


@asynccontextmanager
async def sqlite_foreign_keys_off(connection: AsyncConnection) -> AsyncIterator[None]:
    """SQLite's advice for schema changes: with foreign keys on, the DROP TABLE of a table
    rebuilt to alter it (as Alembic's batch mode does) would delete the rows that refer to
    it (ON DELETE CASCADE) or fail. The pool's connections have them on (engine.py)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    enforced = await connection.scalar(text("PRAGMA foreign_keys"))
    await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    await connection.commit()
    try:
        yield
    finally:
        await connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enforced else 'OFF'}")
        await connection.commit()


{%- if cookiecutter.use_alembic %}


def upgrade_to_head(connection: Connection) -> None:
    """Apply the Alembic migrations that this database has not seen yet."""
    config = Config()
    # Alembic's options are ConfigParser values: a "%" in the project's path must be "%%".
    migrations = str(Path(__file__).parent / "migrations").replace("%", "%%")
    config.set_main_option("script_location", migrations)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
{%- endif %}
