"""Each way a connection can fail is named for what it is: in the log, in /health/db's
detail and in the 503 a request gets; and the password appears in none of them.

The server kinds (a wrong password, an unknown database, no connection slots left, no
TLS, a shutdown) come from real PostgreSQL servers of the tests' own, started with
initdb: a test server often trusts every connection, so it could not refuse a password,
and may have TLS on.
"""

import asyncio
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.connection_failures import name_failure

from ..support import (
    free_port,
    make_settings,
    postgres_bindir,
    requires_postgres,
    running_as_root,
    serve,
)
from .test_trouble import SilentServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Distinctive, so that finding it anywhere is a leak.
PASSWORD = "Pw-f4ults-7xq"
WRONG_PASSWORD = "Wr0ng-f4ults-3kd"


class OwnServer:
    """A PostgreSQL server of the tests' own, on a free 127.0.0.1 port, that checks
    passwords (scram-sha-256) and has TLS off (initdb's default); its superuser gets in
    over its Unix socket only. Removed when stopped."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data = str(self.base / "data")
        self.log = str(self.base / "log")
        self.port = free_port()

    def run(self, program: str, *args: str) -> list[str]:
        """The command line for one of the server's programs, as the user "postgres" when
        this is root (PostgreSQL refuses to run as root)."""
        command = [str(self.bindir / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if running_as_root() else command

    def start(self) -> None:
        """Make the cluster (initdb) and start it."""
        if running_as_root():
            shutil.chown(self.base, "postgres")
        initdb = ["-D", self.data, "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-sync"]  # fmt: skip
        self.check(self.run("initdb", *initdb))
        self.start_again()

    def start_again(self) -> None:
        """Start the server on its cluster, stopped or not (an immediate stop first)."""
        self.stop_now()
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.check(self.run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-o", options,
                            "start"))  # fmt: skip

    def check(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            printed = done.stdout + done.stderr
            printed += Path(self.log).read_text() if Path(self.log).exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{printed}")

    def stop_now(self) -> None:
        """An immediate stop, if the server runs."""
        stop = self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        subprocess.run(stop, capture_output=True)

    def url(self, user: str = "app", password: str = PASSWORD, database: str = "app") -> str:
        return f"postgresql+asyncpg://{user}:{password}@127.0.0.1:{self.port}/{database}"

    async def connect_as_superuser(self) -> asyncpg.Connection:
        """A connection over the Unix socket."""
        return await asyncpg.connect(
            host=str(self.base), port=self.port, user="postgres", database="postgres"
        )

    async def execute(self, *statements: str) -> None:
        """Run statements as the superuser."""
        connection = await self.connect_as_superuser()
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    def remove(self) -> None:
        self.stop_now()
        shutil.rmtree(self.base, ignore_errors=True)


def own_server() -> OwnServer:
    """An OwnServer, started; a skip, saying why, where one cannot be started."""
    bindir = postgres_bindir()
    if os.name != "posix" or bindir is None or (running_as_root() and not shutil.which("runuser")):
        pytest.skip("needs PostgreSQL's initdb (and runuser, as root): starts a server of its own")
    server = OwnServer(bindir)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[OwnServer]:
    """One server for the module: a user "app" with its database; "limited", whose
    CONNECTION LIMIT 0 makes the server answer "too many connections"; and "nologin", a
    role that may not log in (the server checks that once the password is right)."""
    server = own_server()
    try:
        asyncio.run(
            server.execute(
                f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'",
                "CREATE DATABASE app OWNER app",
                f"CREATE ROLE limited LOGIN PASSWORD '{PASSWORD}' CONNECTION LIMIT 0",
                f"CREATE ROLE nologin NOLOGIN PASSWORD '{PASSWORD}'",
            )
        )
        yield server
    finally:
        server.remove()


# (the failure's id, the URL, the kind clients see, words of the log line)
SERVER_FAILURES = [
    ("wrong-password", lambda s: s.url(password=WRONG_PASSWORD), "authentication failed",
     'authentication failed for user "app": wrong password, or no such role '
     "(28P01 invalid_password)"),
    # Under password authentication an unknown role fails as a wrong password does.
    ("unknown-role", lambda s: s.url(user="nobody"), "authentication failed",
     'authentication failed for user "nobody": wrong password, or no such role '
     "(28P01 invalid_password)"),
    ("role-may-not-log-in", lambda s: s.url(user="nologin"), "authentication failed",
     'authentication failed for user "nologin" on database "app": no such role, the role may '
     "not log in, or no pg_hba.conf line lets it in (28000 invalid_authorization_specification)"),
    ("unknown-database", lambda s: s.url(database="nothing_here"), "unknown database",
     'database "nothing_here" does not exist (3D000 invalid_catalog_name)'),
    ("too-many-connections", lambda s: s.url(user="limited"), "too many connections",
     "(53300 too_many_connections)"),
    ("tls-refused", lambda s: s.url() + "?sslmode=require", "the server does not support TLS",
     "does not support TLS (SSL), which the URL requires (sslmode=require or stricter)"),
]  # fmt: skip


async def check_named_everywhere(
    url: str, kind: str, logged: str, caplog: pytest.LogCaptureFixture, **settings: object
) -> None:
    """The app starts; /health/db, a request, and a request during the fail-fast moment
    after it all answer 503 naming ``kind``, each within CONNECT_TIMEOUT; the log names it
    at startup, in the readiness check and for the request, with ``logged``; no password
    anywhere. /health stays 200."""
    caplog.set_level(logging.DEBUG)
    # A server that answers does so at once; 2 s leaves room for a busy test machine.
    options = {"connect_timeout": 2, "pool_timeout": 5} | settings
    async with serve(make_settings(url, **options)) as (_, client):
        started = time.monotonic()
        readiness = await client.get("/health/db")
        request = await client.get("/items")
        failing_fast = await client.post("/items", json={"name": "never stored"})
        elapsed = time.monotonic() - started
        liveness = await client.get("/health")

    assert liveness.status_code == 200
    # Two connects, each bounded by CONNECT_TIMEOUT (not asyncpg's 60 s), and one that
    # fails at once.
    assert elapsed < 2 * options["connect_timeout"] + 1
    assert readiness.status_code == 503
    assert readiness.headers["Retry-After"] == "1"
    assert readiness.json()["status"] == "unavailable"
    assert readiness.json()["detail"] == kind
    for response in (request, failing_fast):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json() == {
            "error": "database_unavailable",
            "detail": f"The database cannot be reached: {kind}.",
        }
    lines = [record.getMessage() for record in caplog.records if logged in record.getMessage()]
    # At startup, in the readiness check, for the request; failing fast logs nothing.
    assert len(lines) == 3, caplog.text
    assert " unreachable at startup: " in lines[0]
    assert " is unreachable: " in lines[1]
    assert lines[2].startswith("Database unavailable for GET /items: ")
    bodies = readiness.text + request.text + failing_fast.text
    assert PASSWORD not in caplog.text + bodies
    assert WRONG_PASSWORD not in caplog.text + bodies


@requires_postgres
@pytest.mark.parametrize(
    ("make_url_for", "kind", "logged"),
    [pytest.param(*case[1:], id=case[0]) for case in SERVER_FAILURES],
)
async def test_a_server_that_refuses_the_connection_is_named(
    server: OwnServer, make_url_for, kind: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    await check_named_everywhere(make_url_for(server), kind, logged, caplog)


@requires_postgres
@pytest.mark.parametrize(
    ("trouble", "kind", "logged"),
    [
        ("refused", "connection refused", "connection refused by {server}: nothing listens there"),
        ("unknown-host", "unknown host", "unknown host {server}: name resolution failed"),
        ("silent", "timed out",
         "{server} did not answer in time (the URL's connect_timeout, else CONNECT_TIMEOUT, "
         "when connecting)"),
    ],
    ids=["refused", "unknown-host", "silent"],
)  # fmt: skip
async def test_a_server_that_cannot_be_reached_is_named(
    trouble: str, kind: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncExitStack() as stack:
        host, port = "127.0.0.1", free_port()  # nothing listens there
        if trouble == "unknown-host":
            host = "no-such-host.invalid"  # .invalid never resolves (RFC 2606), and fails fast
        elif trouble == "silent":
            port = await stack.enter_async_context(SilentServer())
        url = f"postgresql+asyncpg://app:{PASSWORD}@{host}:{port}/app"
        logged = logged.format(server=f"{host}:{port}")
        await check_named_everywhere(url, kind, logged, caplog, connect_timeout=0.3)


async def refuses_new_connections(server: OwnServer) -> None:
    """Wait until the server, told to shut down, refuses new connections: the postmaster
    acts on the signal a moment after pg_ctl sends it."""
    for _ in range(100):
        try:
            connection = await server.connect_as_superuser()
        except asyncpg.CannotConnectNowError:
            return
        await connection.close()
        await asyncio.sleep(0.02)
    raise AssertionError("the server still accepts connections")


@requires_postgres
async def test_a_server_shutting_down_is_named(
    server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A smart shutdown waits for the sessions still open and refuses new ones (57P03).
    The module's server is started again afterwards."""
    held = await server.connect_as_superuser()
    try:
        stop = await asyncio.create_subprocess_exec(
            *server.run("pg_ctl", "-D", server.data, "-m", "smart", "-W", "stop"),
            stdout=asyncio.subprocess.DEVNULL,
        )
        await stop.wait()
        await refuses_new_connections(server)

        await check_named_everywhere(
            server.url(), "the database is starting up or shutting down",
            "accepts no connections now (57P03 cannot_connect_now)", caplog,
        )  # fmt: skip
    finally:
        await held.close()
        server.start_again()


# TLS certificate checks: named from the exception the ssl module raises (a server with
# certificates is needed to provoke one; the naming needs only the exception).


def certificate_error(reason: str) -> ssl.SSLCertVerificationError:
    """What the ssl module raises when a certificate check fails (Modules/_ssl.c)."""
    error = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason} (_ssl.c:1006)"
    )
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    error.verify_code = 20
    error.verify_message = reason
    return error


@pytest.mark.parametrize(
    ("reason", "named"),
    [
        ("unable to get local issuer certificate", "unable to get local issuer certificate"),
        ("Hostname mismatch, certificate is not valid for 'db.example.com'.",
         "Hostname mismatch, certificate is not valid for 'db.example.com'."),
        ("self-signed certificate\n" + PASSWORD, "no reason given"),  # not vetted: dropped
    ],
    ids=["unknown-issuer", "hostname-mismatch", "unprintable-reason"],
)  # fmt: skip
def test_a_failed_certificate_check_is_named_with_its_reason(reason: str, named: str) -> None:
    url = make_url(f"postgresql+asyncpg://app:{PASSWORD}@db.example.com:5432/app")

    failure = name_failure(certificate_error(reason), url)

    assert failure is not None
    assert failure.kind == "TLS certificate verification failed"
    assert failure.detail == f"TLS certificate verification failed for db.example.com:5432: {named}"
    assert failure.connect
    assert PASSWORD not in failure.detail


def test_another_tls_error_is_named_by_openssl_code_only() -> None:
    error = ssl.SSLError(1, f"[SSL: WRONG_VERSION_NUMBER] wrong version number {PASSWORD}")
    error.reason = "WRONG_VERSION_NUMBER"

    failure = name_failure(error, make_url("postgresql+asyncpg://app@db:5432/app"))

    assert failure is not None
    assert failure.kind == "TLS handshake failed"
    assert failure.detail == "the TLS handshake with db:5432 failed (WRONG_VERSION_NUMBER)"


def test_an_error_that_is_not_a_connection_failure_has_no_name() -> None:
    assert name_failure(ValueError(f"postgresql://app:{PASSWORD}@db/app")) is None
