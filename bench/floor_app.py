"""The floor: the benchmark's queries on a raw asyncpg pool, served by the same uvicorn.

Every endpoint comes twice, because neither way of answering is faster everywhere:

* plain (``/items``, ``/slow-items``): returns dicts and declares no return type, so FastAPI
  turns them into JSON with ``jsonable_encoder``;
* typed (``/typed/items``, ``/typed/slow-items``): declares ``-> list[ItemOut]``, so
  Pydantic validates the dicts and writes the JSON itself.

The benchmark takes the faster of the two at each point as the raw floor. ``GET /ping``
touches no database: the HTTP ceiling of the machine.

The pool holds what the baked app's may: ``pool_size`` connections, growing to
``pool_size + max_overflow`` under load (``FLOOR_POOL_SIZE``, ``FLOOR_MAX_OVERFLOW``).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
from fastapi import FastAPI
from pydantic import BaseModel
from queries import LIST_QUERY, SLOW_QUERY

INSERT_QUERY = (
    "INSERT INTO items (name, description) VALUES ($1, $2) "
    "RETURNING id, name, description, created_at"
)

# The connections above pool_size close after this long unused (asyncpg's default is 300 s):
# at rest, while the other cases take their turns, this app then holds pool_size
# connections like the others, and NullPool's one per client still fit in the server's
# max_connections with 2 workers. Under load no connection sits unused that long.
IDLE_SECONDS = 10.0


class ItemIn(BaseModel):
    name: str
    description: str | None = None


class ItemOut(BaseModel):
    id: int
    name: str
    description: str | None
    created_at: datetime


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("FLOOR_POOL_SIZE", "5"))
    overflow = int(os.environ.get("FLOOR_MAX_OVERFLOW", "10"))
    async with asyncpg.create_pool(
        os.environ["FLOOR_DSN"],
        min_size=size,
        max_size=size + overflow,
        max_inactive_connection_lifetime=IDLE_SECONDS,
        # The name the benchmark counts this app's server connections by.
        server_settings={"application_name": "raw"},
    ) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


async def fetch(query: str) -> list[asyncpg.Record]:
    async with app.state.pool.acquire() as connection:
        return await connection.fetch(query)


async def insert(item: ItemIn) -> asyncpg.Record:
    async with app.state.pool.acquire() as connection, connection.transaction():
        return await connection.fetchrow(INSERT_QUERY, item.name, item.description)


@app.get("/items")
async def list_items():
    return [dict(row) for row in await fetch(LIST_QUERY)]


@app.get("/typed/items")
async def list_items_typed() -> list[ItemOut]:
    return [dict(row) for row in await fetch(LIST_QUERY)]


@app.get("/slow-items")
async def list_items_slowly():
    return [dict(row) for row in await fetch(SLOW_QUERY)]


@app.get("/typed/slow-items")
async def list_items_slowly_typed() -> list[ItemOut]:
    return [dict(row) for row in await fetch(SLOW_QUERY)]


@app.post("/items", status_code=201)
async def create_item(item: ItemIn):
    return dict(await insert(item))


@app.post("/typed/items", status_code=201)
async def create_item_typed(item: ItemIn) -> ItemOut:
    return dict(await insert(item))


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}
