import asyncio
import signal

import httpx
import pytest

from ..support import uvicorn_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_sigterm_lets_in_flight_requests_finish_then_disposes_the_engine(
    database_url: str,
) -> None:
    env = {"DATABASE_URL": database_url, "SLOW_SECONDS": "1.5"}
    slow_app = (
        "tests.pool.apps:app_with_slow_route", "--factory", "--timeout-graceful-shutdown", "10"
    )  # fmt: skip
    async with uvicorn_server(env, app=slow_app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            in_flight = asyncio.create_task(client.get("/slow"))
            await asyncio.sleep(0.5)

            stopping = asyncio.create_task(server.stop())
            response = await in_flight
        await stopping
    output = server.output

    assert response.status_code == 200
    # uvicorn exits by the signal it got (uvicorn >= 0.29) after shutting down cleanly.
    assert server.process.returncode in (0, -signal.SIGTERM), output
    assert "Database engine disposed (0 connection(s) still checked out)" in output
    for trouble in ("Traceback", "SAWarning", "Event loop is closed", "ERROR"):
        assert trouble not in output, output
