"""Creating the tables: once per database, by whichever worker gets there first."""

{% if cookiecutter.use_alembic -%}
from pathlib import Path

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
    """Bring the database's tables up to date, in the caller's transaction.

{%- if cookiecutter.use_alembic %}
    Runs the Alembic migrations this database has not seen yet; ``metadata`` is what they
    lead to, and what ``alembic revision --autogenerate`` compares the database with.
{%- else %}
    Creates the tables of ``metadata`` that do not exist yet (``MetaData.create_all``);
    an existing table is left as it is.
{%- endif %}
    """
    if connection.dialect.name == "postgresql":
        # Without it, workers starting together race to create the same tables.
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_ID})"))
{%- if cookiecutter.use_alembic %}
    await connection.run_sync(upgrade_to_head)
{%- else %}
    await connection.run_sync(metadata.create_all)
{%- endif %}
{%- if cookiecutter.use_alembic %}


def upgrade_to_head(connection: Connection) -> None:
    """Apply the Alembic migrations that this database has not seen yet."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
{%- endif %}
