"""``GET /metrics``: the names, labels and values Prometheus reads (metrics.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from {{ cookiecutter.package_name }}.metrics import pool_name
from {{ cookiecutter.package_name }}.settings import Settings

from .support import make_settings, sample, scrape, serve

pytestmark = pytest.mark.anyio

POOL_METRICS = {
    "db_client_connection_count",
    "db_client_connection_max",
    "db_client_connection_idle_max",
    "db_client_connection_pending_requests",
    "db_client_connection_timeouts_total",
    "db_client_connection_wait_time_seconds_count",
    "db_client_connection_use_time_seconds_count",
    "db_client_connection_create_time_seconds_count",
}


async def test_the_pool_metrics_are_named_as_opentelemetry_names_them(
    app: FastAPI, client: AsyncClient, settings: Settings
) -> None:
    assert (await client.get("/items")).status_code == 200

    samples = await scrape(client)

    # This app's pool: other apps of the test run may have left pools of their own.
    pool = pool_name(app.state.database.url)
    names = {name for name, labels in samples if ("pool_name", pool) in labels}
    unlimited = settings.max_overflow == -1  # no maximum to show
    limits = {"db_client_connection_max", "db_client_connection_idle_max"}
    assert names & POOL_METRICS == (POOL_METRICS - limits if unlimited else POOL_METRICS)
    label_names = {frozenset(dict(labels)) for name, labels in samples if name in POOL_METRICS}
    assert label_names == {frozenset({"pool_name"}), frozenset({"pool_name", "state"})}
    for state in ("idle", "used"):
        labels = frozenset({("pool_name", pool), ("state", state)})
        assert ("db_client_connection_count", labels) in samples
    if not unlimited:
        assert sample(samples, "db_client_connection_max", pool_name=pool) == (
            settings.pool_size + settings.max_overflow
        )
        assert sample(samples, "db_client_connection_idle_max", pool_name=pool) > 0


async def test_requests_are_counted_by_route_template_and_status(client: AsyncClient) -> None:
    before = await scrape(client)
    for _ in range(3):
        await client.get("/items/123456")  # no such item

    after = await scrape(client)

    labels = {
        "http_request_method": "GET",
        "http_route": "/items/{item_id}",
        "http_response_status_code": "404",
    }
    name = "http_server_request_duration_seconds_count"
    assert sample(after, name, **labels) - sample(before, name, **labels) == 3
    # The path itself is never a label: the number of series stays bounded.
    assert not any("123456" in str(labels) for _, labels in after)


async def test_with_metrics_off_there_is_no_metrics_route(test_database_url: str) -> None:
    async with serve(make_settings(test_database_url, metrics=False)) as (_, client):
        assert (await client.get("/metrics")).status_code == 404


def test_with_metrics_off_prometheus_client_is_not_even_imported(tmp_path: Path) -> None:
    app = "import sys, {{ cookiecutter.package_name }}.main"
    code = f"{app}; print('prometheus_client' in sys.modules)"
    environment = os.environ | {"METRICS": "false", "DATABASE_URL": "sqlite+aiosqlite://"}
    imported = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert imported.stdout.strip() == "False", imported.stderr
