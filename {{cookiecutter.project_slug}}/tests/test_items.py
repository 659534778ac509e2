import asyncio
import re

import pytest
from httpx import AsyncClient

pytestmark = pytest.mark.anyio


async def test_created_item_is_returned_with_id_and_timestamp(client: AsyncClient) -> None:
    response = await client.post("/items", json={"name": "widget", "description": "blue"})

    assert response.status_code == 201
    created = response.json()
    assert created["name"] == "widget"
    assert created["description"] == "blue"
    assert created["id"] >= 1
    # UTC, to the second, on SQLite and PostgreSQL alike.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created["created_at"]), created


async def test_created_item_can_be_read_back(client: AsyncClient) -> None:
    created = (await client.post("/items", json={"name": "gadget"})).json()

    response = await client.get(f"/items/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert created["description"] is None


async def test_list_returns_items_in_creation_order(client: AsyncClient) -> None:
    names = [f"item-{n}" for n in range(5)]
    for name in names:
        await client.post("/items", json={"name": name})

    response = await client.get("/items")

    assert response.status_code == 200
    assert [item["name"] for item in response.json()] == names


async def test_list_pages_with_limit_and_offset(client: AsyncClient) -> None:
    for n in range(5):
        await client.post("/items", json={"name": f"item-{n}"})

    response = await client.get("/items", params={"limit": 2, "offset": 3})

    assert [item["name"] for item in response.json()] == ["item-3", "item-4"]


async def test_list_of_empty_table_is_empty(client: AsyncClient) -> None:
    response = await client.get("/items")

    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"limit": "many"}, {"offset": -1}, {"offset": 2**31}],
    ids=["limit-0", "limit-101", "limit-text", "offset-negative", "offset-huge"],
)
async def test_list_rejects_out_of_bounds_paging(client: AsyncClient, params: dict) -> None:
    response = await client.get("/items", params=params)

    assert response.status_code == 422


async def test_missing_item_is_404(client: AsyncClient) -> None:
    response = await client.get("/items/424242")

    assert response.status_code == 404
    assert response.json() == {"detail": "Item 424242 not found"}


@pytest.mark.parametrize("item_id", ["0", "-3", "abc", str(2**31)])
async def test_impossible_item_id_is_422(client: AsyncClient, item_id: str) -> None:
    response = await client.get(f"/items/{item_id}")

    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x" * 201}, {"name": 5}, {"name": "ok", "description": "d" * 2001}],
    ids=["no-name", "empty-name", "long-name", "name-not-text", "long-description"],
)
async def test_invalid_item_is_422_and_not_stored(client: AsyncClient, body: dict) -> None:
    response = await client.post("/items", json=body)

    assert response.status_code == 422
    assert (await client.get("/items")).json() == []


async def test_requests_sent_together_all_succeed(client: AsyncClient) -> None:
    created = await asyncio.gather(
        *(client.post("/items", json={"name": f"item-{n}"}) for n in range(5))
    )

    assert [response.status_code for response in created] == [201] * 5
    assert len((await client.get("/items")).json()) == 5
