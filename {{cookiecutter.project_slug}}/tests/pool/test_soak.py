import asyncio
import os
import random

import pytest
from httpx import AsyncClient
from sqlalchemy import select

from {{ cookiecutter.package_name }}.models import Item

from ..support import make_settings, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLIENTS = 50
# Bounded by count, not by time: how much work fits in a second is the machine's business.
REQUESTS_PER_CLIENT = int(os.environ.get("SOAK_REQUESTS_PER_CLIENT", "25"))


async def client_loop(client: AsyncClient, seed: int) -> tuple[list, list]:
    """Reads, writes and failing requests in a random mix."""
    chance = random.Random(seed)
    statuses, created = [], []
    for n in range(REQUESTS_PER_CLIENT):
        kind = chance.choice(["write", "write", "list", "missing", "invalid", "read"])
        if kind == "write":
            response = await client.post("/items", json={"name": f"soak-{seed}-{n}"})
            if response.status_code == 201:
                created.append(response.json()["id"])
        elif kind == "list":
            response = await client.get("/items", params={"limit": 50})
        elif kind == "missing":
            response = await client.get("/items/2000000000")
        elif kind == "invalid":
            response = await client.post("/items", json={"name": ""})
        else:
            response = await client.get(f"/items/{created[-1] if created else 1}")
        statuses.append(response.status_code)
    return statuses, created


async def test_soak_with_a_small_pool_loses_nothing_and_leaks_nothing(database_url: str):
    settings = make_settings(database_url, pool_size=2, max_overflow=0)
    async with serve(settings) as (app, client):
        results = await asyncio.gather(*(client_loop(client, seed) for seed in range(CLIENTS)))
        async with app.state.database.session_factory() as session:
            stored = set((await session.scalars(select(Item.id))).all())
        pool = app.state.database.pool_status()

    statuses = [status for client_statuses, _ in results for status in client_statuses]
    created = {item_id for _, client_created in results for item_id in client_created}
    assert len(statuses) == CLIENTS * REQUESTS_PER_CLIENT
    assert 500 not in statuses
    assert set(statuses) <= {200, 201, 404, 422}
    assert stored == created  # every 201 is a row, and there are no others
    assert pool["checked_out"] == 0
