"""Behind a real PgBouncer in transaction mode, the pgbouncer bake works and shows why."""

import asyncio
import time
from collections import Counter

import httpx
import pytest

from .support import BakedVenv, PgBouncer, bake_and_install, clean_environment, uvicorn_server

pytestmark = pytest.mark.slow

CLIENTS = 60
SECONDS = 4


async def mixed_load(base_url: str) -> Counter:
    """CLIENTS concurrent clients reading and writing for SECONDS; statuses counted."""
    statuses: Counter = Counter()
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base_url, timeout=5, limits=limits) as client:

        async def one_client(n: int) -> None:
            while time.monotonic() < deadline:
                try:
                    created = await client.post("/items", json={"name": f"client-{n}"})
                    statuses[created.status_code] += 1
                    if created.status_code == 201:
                        read = await client.get(f"/items/{created.json()['id']}")
                        statuses[read.status_code] += 1
                    statuses[(await client.get("/items")).status_code] += 1
                except httpx.TransportError as error:
                    statuses[type(error).__name__] += 1

        await asyncio.gather(*(one_client(n) for n in range(CLIENTS)))
    return statuses


def serve_behind_pgbouncer(
    cookies, venv: BakedVenv, bouncer: PgBouncer, database: str, pooler: str, **env: str
) -> tuple[Counter, str]:
    context = {"database_url": bouncer.url(database), "connection_pooler": pooler,
               "pool_size": 10, "max_overflow": 10}  # fmt: skip
    project = bake_and_install(cookies, venv, context)
    expect_clean = pooler == "pgbouncer"
    with uvicorn_server(venv, project, clean_environment(**env), expect_clean) as server:
        statuses = asyncio.run(mixed_load(server.base_url))
    return statuses, server.output


@pytest.mark.parametrize("pool_class", ["queue", "null"])
def test_pgbouncer_bake_serves_a_mixed_load_with_no_errors(
    cookies,
    baked_venv: BakedVenv,
    pgbouncer: PgBouncer,
    scratch_database: str,
    pool_class: str,
    record_property,
) -> None:
    """Both app-side pool choices work behind PgBouncer; the rate shows what each costs."""
    database = scratch_database.rsplit("/", 1)[1]

    statuses, output = serve_behind_pgbouncer(
        cookies, baked_venv, pgbouncer, database, "pgbouncer", POOL_CLASS=pool_class
    )

    requests = sum(statuses.values())
    record_property("requests_per_second", round(requests / SECONDS))
    print(f"pgbouncer bake, POOL_CLASS={pool_class}: {requests / SECONDS:.0f} requests/s")
    assert requests > CLIENTS * 3
    assert set(statuses) <= {200, 201}, (statuses, output[-3000:])
    assert "prepared statement" not in output


def test_plain_bake_behind_pgbouncer_shows_why_the_option_exists(
    cookies,
    baked_venv: BakedVenv,
    pgbouncer: PgBouncer,
    scratch_database: str,
    record_property,
) -> None:
    """Recorded, not asserted: whether it fails depends on timing and PgBouncer's version.

    STATEMENT_TIMEOUT=0 keeps the app from sending a startup parameter PgBouncer refuses,
    so what remains is the prepared statements.
    """
    database = scratch_database.rsplit("/", 1)[1]

    statuses, output = serve_behind_pgbouncer(
        cookies, baked_venv, pgbouncer, database, "none", STATEMENT_TIMEOUT="0", POOL_TIMEOUT="3"
    )

    prepared_statement_errors = output.count("prepared statement")
    record_property("statuses", dict(statuses))
    record_property("prepared_statement_errors", prepared_statement_errors)
    print(f"connection_pooler=none behind PgBouncer: {dict(statuses)}, "
          f"{prepared_statement_errors} prepared-statement errors in the log")  # fmt: skip
    assert sum(statuses.values()) > 0
