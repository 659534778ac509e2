"""The tutorial's app: what a reader of "Connection pooling in FastAPI" writes without the template.

A plain ``create_async_engine`` with the baked defaults' ``pool_size`` and ``max_overflow``
(``TUTORIAL_POOL_SIZE``, ``TUTORIAL_MAX_OVERFLOW``), an ``AsyncSession`` per request from a
yield dependency, the benchmark's queries through ``session.execute`` and rows returned as
dicts; a write commits in the endpoint. Nothing tuned: keep it that way, it is the baseline.
The one addition is the ``application_name`` that the benchmark counts connections by.
"""

import os

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from queries import LIST_QUERY, SLOW_QUERY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

engine = create_async_engine(
    os.environ["TUTORIAL_DATABASE_URL"],
    pool_size=int(os.environ["TUTORIAL_POOL_SIZE"]),
    max_overflow=int(os.environ["TUTORIAL_MAX_OVERFLOW"]),
    connect_args={"server_settings": {"application_name": "tutorial"}},
)
session_factory = async_sessionmaker(engine, expire_on_commit=False)

app = FastAPI()


class ItemCreate(BaseModel):
    name: str
    description: str | None = None


async def get_session():
    async with session_factory() as session:
        yield session


# The tutorial's `= Depends(get_session)` defaults, which ruff's B008 would rather rewrite.
@app.get("/items")
async def list_items(session: AsyncSession = Depends(get_session)):  # noqa: B008
    result = await session.execute(text(LIST_QUERY))
    return [dict(row) for row in result.mappings()]


@app.get("/slow-items")
async def list_items_slowly(session: AsyncSession = Depends(get_session)):  # noqa: B008
    result = await session.execute(text(SLOW_QUERY))
    return [dict(row) for row in result.mappings()]


@app.post("/items", status_code=201)
async def create_item(item: ItemCreate, session: AsyncSession = Depends(get_session)):  # noqa: B008
    result = await session.execute(
        text(
            "INSERT INTO items (name, description) VALUES (:name, :description) "
            "RETURNING id, name, description, created_at"
        ),
        item.model_dump(),
    )
    row = result.mappings().one()
    await session.commit()
    return dict(row)
