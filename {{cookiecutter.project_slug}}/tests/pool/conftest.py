"""The pool machinery's tests run the app as it runs in production: its own sessions, on
an empty database of each test's own (``database_url``), nothing rolled back for them."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from {{ cookiecutter.package_name }}.settings import Settings

from ..support import make_settings, serve


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    async with serve(settings) as app_and_client:
        yield app_and_client
