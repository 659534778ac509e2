"""Alembic's environment: migrations run with the app's own settings and driver options."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from {{ cookiecutter.package_name }}.engine import connect_args
from {{ cookiecutter.package_name }}.models import Base
from {{ cookiecutter.package_name }}.settings import load_settings


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters tables by copying them; batch mode does that in each migration.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    settings = load_settings()
    url = make_url(settings.database_url.get_secret_value())
    engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args(url, settings))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


# The app passes its own connection when it migrates at startup.
shared_connection = context.config.attributes.get("connection")
if shared_connection is not None:
    run_migrations(shared_connection)
else:
    asyncio.run(run_migrations_online())
