"""TLS as libpq's URL parameters ask for it, against a PostgreSQL server of the test's own.

The server (tests/support.py, PasswordCheckingPostgres) has a certificate for
``localhost`` signed by a CA the test made; each case serves a baked app with uvicorn and
``DATABASE_URL`` set as a provider console or libpq's documentation writes it.
"""

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import asyncpg
import httpx
import pytest
import trustme

from .support import (
    BakedVenv,
    PasswordCheckingPostgres,
    bake_with_cli,
    clean_environment,
    create_role_with_database,
    uvicorn_server,
)

pytestmark = pytest.mark.slow

ROLE = "tls_app"
PASSWORD = "tls-Secret-7f3"


@pytest.fixture(scope="module")
def server(password_checking_postgres: PasswordCheckingPostgres) -> PasswordCheckingPostgres:
    create_role_with_database(password_checking_postgres.admin_url, ROLE, PASSWORD)
    return password_checking_postgres


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, baked_venv: BakedVenv) -> Path:
    tmp_path = tmp_path_factory.mktemp("tls")
    result, output = bake_with_cli(tmp_path, "use_alembic=no")
    assert result.returncode == 0, result.stdout + result.stderr
    baked_venv.install(output / "my-service")
    return output / "my-service"


def url(server: PasswordCheckingPostgres, host: str, query: str) -> str:
    return f"postgresql+asyncpg://{ROLE}:{PASSWORD}@{host}:{server.port}/{ROLE}?{query}"


def tls_connections(server: PasswordCheckingPostgres) -> list[bool]:
    """Whether each of the app's open connections uses TLS (pg_stat_ssl)."""

    async def read() -> list[bool]:
        connection = await asyncpg.connect(server.admin_url)
        try:
            records = await connection.fetch(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.usename = $1",
                ROLE,
            )
        finally:
            await connection.close()
        return [record["ssl"] for record in records]

    return asyncio.run(read())


@pytest.fixture
def serve(baked_venv: BakedVenv, project: Path) -> Callable[[str], AbstractContextManager]:
    """Serve the baked app with ``DATABASE_URL`` set to a given URL."""

    def start(database_url: str) -> AbstractContextManager:
        environment = clean_environment(DATABASE_URL=database_url)
        return uvicorn_server(baked_venv, project, environment, expect_clean=False)

    return start


def assert_serves(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        created = client.post("/items", json={"name": "over TLS"})
        assert created.status_code == 201, created.text
        assert client.get(f"/items/{created.json()['id']}").status_code == 200
        assert client.get("/health/db").json()["status"] == "ok"


def test_verify_full_with_the_servers_ca_serves_requests_over_tls(server, serve) -> None:
    verified = url(server, "localhost", f"sslmode=verify-full&sslrootcert={server.ca_file}")
    with serve(verified) as app:
        assert_serves(app.base_url)
        connections = tls_connections(server)

    assert connections and all(connections)
    assert PASSWORD not in app.output


def test_verify_full_with_another_ca_refuses_to_connect_and_says_why(
    server, serve, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))

    with serve(url(server, "localhost", f"sslmode=verify-full&sslrootcert={other_ca}")) as app:
        with httpx.Client(base_url=app.base_url, timeout=10) as client:
            health = client.get("/health/db")
            listed = client.get("/items")
        connections = tls_connections(server)

    assert health.status_code == 503
    assert health.headers["Retry-After"]
    assert health.json()["detail"] == "TLS certificate verification failed"
    assert listed.status_code == 503
    assert connections == []
    failure = f"TLS certificate verification failed for localhost:{server.port}: "
    assert failure + "unable to get local issuer certificate" in app.output
    assert PASSWORD not in app.output + health.text + listed.text


def test_verify_full_checks_the_host_name_and_verify_ca_does_not(server, serve) -> None:
    """The certificate names localhost only; 127.0.0.1 is not in it."""
    by_address = url(server, "127.0.0.1", f"sslrootcert={server.ca_file}&sslmode=")

    with serve(by_address + "verify-full") as app:
        health = httpx.get(f"{app.base_url}/health/db", timeout=10)
    assert health.status_code == 503
    assert health.json()["detail"] == "TLS certificate verification failed"
    assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in app.output

    with serve(by_address + "verify-ca") as app:
        assert_serves(app.base_url)


def test_a_provider_console_string_with_channel_binding_serves_with_a_note(server, serve):
    """Neon's console writes sslmode=require&channel_binding=require; asyncpg has no
    channel binding, so it is dropped, said once at startup, and TLS still applies."""
    with serve(url(server, "localhost", "sslmode=require&channel_binding=require")) as app:
        assert_serves(app.base_url)
        connections = tls_connections(server)

    assert connections and all(connections)
    (note,) = [line for line in app.output.splitlines() if "channel_binding=require is" in line]
    assert note.startswith("WARNING:")
    assert "channel_binding=require is dropped: asyncpg does not do SCRAM channel binding" in note
    assert PASSWORD not in app.output


def test_ssl_true_checks_the_certificate_against_the_systems_cas(server, serve) -> None:
    """ssl=true is asyncpg's ssl=True (and JDBC's ssl=true): the system's CAs, which do not
    know the test's CA, so the server is refused."""
    with serve(url(server, "localhost", "ssl=true")) as app:
        health = httpx.get(f"{app.base_url}/health/db", timeout=10)

    assert health.status_code == 503
    assert health.json()["detail"] == "TLS certificate verification failed"
    assert "unable to get local issuer certificate" in app.output
    assert "ssl=true is read as sslmode=verify-full&sslrootcert=system" in app.output
