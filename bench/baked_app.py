"""The baked app, plus the one endpoint the benchmark needs that it lacks: ``GET /slow-items``.

Served as ``uvicorn --factory baked_app:create_app``. The endpoint is written the way a user
of the baked project writes a read endpoint (the baked ``routes.py``): the database from
``DatabaseDep``, the statement built once, the rows read inside ``read_connection()``, a
declared return type. When the baked read API changes, this is the file to update.
"""

from bench_app.app import create_app as create_baked_app
from bench_app.database import DatabaseDep
from bench_app.routes import as_dicts
from bench_app.schemas import ItemRead
from fastapi import FastAPI
from queries import SLOW_QUERY
from sqlalchemy import text

slow_page_of_items = text(SLOW_QUERY)


async def list_items_slowly(database: DatabaseDep) -> list[ItemRead]:
    async with database.read_connection() as connection:
        rows = await connection.execute(slow_page_of_items)
    return as_dicts(rows)


def create_app() -> FastAPI:
    app = create_baked_app()
    app.add_api_route("/slow-items", list_items_slowly, methods=["GET"])
    return app
