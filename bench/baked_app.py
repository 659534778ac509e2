"""The baked app, plus the one endpoint the benchmark needs that it lacks: ``GET /slow-items``.

Served as ``uvicorn --factory baked_app:create_app``. The endpoint is written the way a user
of the baked project writes a read endpoint (the baked ``routers/items.py``): a session from
``ReadSessionDep``, a statement, ORM objects returned under a declared return type. When the
baked read API changes, this is the file to update.
"""

from bench_app.app import create_app as create_baked_app
from bench_app.dependencies import ReadSessionDep
from bench_app.models import Item
from bench_app.schemas import ItemRead
from fastapi import FastAPI
from queries import SLOW_QUERY
from sqlalchemy import select, text

# The slow query's rows (pg_sleep on the server, then a page of items), as Item objects.
slow_page_of_items = select(Item).from_statement(text(SLOW_QUERY))


async def list_items_slowly(session: ReadSessionDep) -> list[ItemRead]:
    items = await session.scalars(slow_page_of_items)
    return items.all()


def create_app() -> FastAPI:
    app = create_baked_app()
    app.add_api_route("/slow-items", list_items_slowly, methods=["GET"])
    return app
