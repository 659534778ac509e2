"""Fixtures for baking the template and running what it bakes."""

import os

import pytest

from .support import BakedVenv


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server to test against; in CI its absence fails instead of skipping."""
    url = os.environ.get("TEST_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        reason = "TEST_DATABASE_URL is not set to a PostgreSQL URL (.ci/run sets it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL cases")
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def baked_venv(cookies_session, tmp_path_factory: pytest.TempPathFactory) -> BakedVenv:
    result = cookies_session.bake()
    assert result.exit_code == 0, result.exception
    venv = BakedVenv(tmp_path_factory.mktemp("baked") / "venv")
    venv.create(result.project_path)
    return venv
