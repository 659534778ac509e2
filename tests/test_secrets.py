"""A password typed at the prompt reaches PostgreSQL intact and appears nowhere else."""

import asyncio
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from .support import (
    BakedVenv,
    PasswordCheckingPostgres,
    bake_with_cli,
    clean_environment,
    create_role_with_database,
    uvicorn_server,
)

pytestmark = pytest.mark.slow

# Every character the issue names, plus the ones .env files and shells treat specially.
PASSWORD = "p@ss:w/o%r#d?$x \"q' \\ ${HOME} end"
ROLE = "pool_app"


@pytest.fixture(scope="module")
def role_with_password(password_checking_postgres: PasswordCheckingPostgres) -> str:
    """A role and database on a server that checks passwords; the URL to reach them."""
    create_role_with_database(password_checking_postgres.admin_url, ROLE, PASSWORD)
    encoded = quote(PASSWORD, safe="")
    return (
        f"postgresql+asyncpg://{ROLE}:{encoded}@127.0.0.1:{password_checking_postgres.port}/{ROLE}"
    )


def test_the_server_refuses_a_wrong_password(password_checking_postgres, role_with_password):
    """The control: without it, a trusting server would let any password through."""
    port = password_checking_postgres.port

    async def connect(password: str) -> None:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=port, user=ROLE, password=password, database=ROLE
        )
        await connection.close()

    asyncio.run(connect(PASSWORD))
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect(PASSWORD + "x"))


def files_holding(project: Path, *secrets: str) -> list[str]:
    return [
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file()
        and ".git" not in path.relative_to(project).parts
        and any(s in path.read_text(errors="replace") for s in secrets)
    ]


def test_password_with_special_characters_reaches_postgres_and_nowhere_else(
    tmp_path: Path, baked_venv: BakedVenv, role_with_password: str
) -> None:
    result, output = bake_with_cli(tmp_path, f"database_url={role_with_password}")
    assert result.returncode == 0, result.stdout + result.stderr
    project = output / "my-service"
    baked_venv.install(project)
    encoded = role_with_password.split(":")[2].split("@")[0]
    secrets = (PASSWORD, encoded, "w/o%r#d")

    with (
        uvicorn_server(baked_venv, project, clean_environment()) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        responses = [
            client.post("/items", json={"name": "secret-safe"}),
            client.get("/items"),
            client.get("/items/424242"),
            client.post("/items", json={"name": ""}),
            client.get("/health/db"),
        ]

    assert [r.status_code for r in responses] == [201, 200, 404, 422, 200]
    assert responses[4].json()["driver"] == "asyncpg"
    for response in responses:
        assert not any(s in response.text for s in secrets)
    assert not any(s in server.output for s in secrets)
    assert not any(s in result.stdout + result.stderr for s in secrets)
    # Only .env holds it (percent-encoded, so that dotenv reads it back unchanged).
    assert files_holding(project, *secrets) == [".env"]
    (replay_file,) = (tmp_path / "home" / ".cookiecutter_replay").iterdir()
    assert not any(s in replay_file.read_text() for s in secrets)
