"""The two reference endpoints the baked app is measured against, served by the same uvicorn.

``GET /items``: the baked list query on a raw asyncpg pool, the floor this stack cannot beat.
``GET /ping``: no database at all, the HTTP ceiling of the machine.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI

# The baked app's list query with its default limit and offset.
LIST_QUERY = "SELECT id, name, description, created_at FROM items ORDER BY id LIMIT 20 OFFSET 0"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    dsn = os.environ["FLOOR_DSN"]
    size = int(os.environ.get("FLOOR_POOL_SIZE", "15"))
    async with asyncpg.create_pool(dsn, min_size=size, max_size=size) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/items")
async def list_items():
    async with app.state.pool.acquire() as connection:
        rows = await connection.fetch(LIST_QUERY)
    return [dict(row) for row in rows]


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}
