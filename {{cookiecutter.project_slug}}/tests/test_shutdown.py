import asyncio
import os
import signal
import sys

import httpx
import pytest

from .support import PROJECT_DIR, free_port

pytestmark = pytest.mark.anyio


async def test_sigterm_lets_in_flight_requests_finish_then_disposes_the_engine(
    database_url: str,
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = os.environ | {"DATABASE_URL": database_url, "SLOW_SECONDS": "1.5"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "tests.apps:app_with_slow_route", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "10",
        cwd=PROJECT_DIR, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            for _ in range(100):
                try:
                    await client.get("/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            in_flight = asyncio.create_task(client.get("/slow"))
            await asyncio.sleep(0.5)

            server.send_signal(signal.SIGTERM)
            response = await in_flight
        output = (await asyncio.wait_for(server.communicate(), timeout=20))[0].decode()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    assert response.status_code == 200
    # uvicorn exits by the signal it got (uvicorn >= 0.29) after shutting down cleanly.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Database engine disposed (0 connection(s) still checked out)" in output
    for trouble in ("Traceback", "SAWarning", "Event loop is closed", "ERROR"):
        assert trouble not in output, output
