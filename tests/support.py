"""Helpers for the template's tests: baking, running commands, serving baked apps."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import trustme

TEMPLATE_DIR = Path(__file__).resolve().parent.parent


def run(*command: str | Path, cwd: Path | None = None, env: dict | None = None, timeout=300):
    """Run a command to completion and return it; output is kept for assertion messages."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class BakedVenv:
    """One virtualenv for every baked project of the run.

    Every variant declares the same dependencies (``test_every_variant_declares_the_same
    _dependencies`` checks it), so they are installed once, from the first bake, and each
    baked project is then installed into it editable, without dependencies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"

    def create(self, first_project: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(self.path)], check=True)
        self.pip("install", "--quiet", "--upgrade", "pip")
        # hatchling and editables: what the editable installs below build with.
        self.pip(
            "install", "--quiet", "hatchling", "editables", str(first_project),
            "--group", f"{first_project / 'pyproject.toml'}:dev",
        )  # fmt: skip

    def pip(self, *args: str) -> None:
        result = run(self.python, "-m", "pip", *args)
        assert result.returncode == 0, result.stdout + result.stderr

    def install(self, project: Path) -> None:
        self.pip(
            "install", "--quiet", "--no-deps", "--no-build-isolation", "--editable", str(project)
        )

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name


SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "POOL_SIZE",
    "MAX_OVERFLOW",
    "POOL_TIMEOUT",
    "POOL_RECYCLE",
    "POOL_PRE_PING",
    "WORKERS",
    "TEST_DATABASE_URL",
)


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any setting that could mask the baked defaults."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARIABLES}
    return env | extra


def package_name(project: Path) -> str:
    (package,) = (project / "src").iterdir()
    return package.name


def bake_and_install(cookies, venv: BakedVenv, context: dict) -> Path:
    result = cookies.bake(extra_context=context)
    assert result.exit_code == 0, result.exception
    venv.install(result.project_path)
    return result.project_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A running baked app: where it answers, and what it printed once it stopped."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.output = ""


@contextmanager
def uvicorn_server(
    venv: BakedVenv, project: Path, env: dict[str, str], expect_clean: bool = True
) -> Iterator[Server]:
    """Serve the baked app with uvicorn on a free loopback port; stop it afterwards.

    Unless told not to, it checks that the app shut down cleanly, without a traceback.
    """
    port = free_port()
    app = f"{package_name(project)}.main:app"
    process = subprocess.Popen(
        [str(venv.bin("uvicorn")), app, "--host", "127.0.0.1", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                httpx.get(f"{server.base_url}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
                time.sleep(0.2)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        server.output = process.communicate(timeout=30)[0]
    # uvicorn shuts down gracefully, then exits by the signal it got (uvicorn >= 0.29).
    assert process.returncode in (0, -signal.SIGTERM), server.output
    assert "Application shutdown complete." in server.output, server.output
    if expect_clean:
        assert "Traceback" not in server.output, server.output


async def _execute(server_url: str, statements: tuple[str, ...]) -> None:
    connection = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def postgres_admin(server_url: str, *statements: str) -> None:
    """Run statements (CREATE DATABASE and the like) on a PostgreSQL server as its admin."""
    asyncio.run(_execute(server_url, statements))


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_role_with_database(server_url: str, role: str, password: str) -> None:
    """A login role with a password, and a database of the same name that it owns."""
    postgres_admin(
        server_url,
        f"CREATE ROLE {role} LOGIN PASSWORD {sql_literal(password)}",
        f"CREATE DATABASE {role} OWNER {role}",
    )


class PasswordCheckingPostgres:
    """A PostgreSQL server of the test's own that checks passwords (scram-sha-256) and
    speaks TLS with a certificate for ``localhost`` signed by a CA of the test's own.

    The machine's server trusts every connection from 127.0.0.1 and has no TLS, so it
    cannot show that a password made it through intact, or that a certificate was checked.
    This one listens on 127.0.0.1 on a free port, lets its superuser in over its Unix
    socket only, and is removed when stopped. ``ca_file`` is the CA's certificate (PEM);
    the server certificate names ``localhost`` only, so a client that connects to
    127.0.0.1 and checks the host name (sslmode=verify-full) refuses it.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="pool-template-pg-"))
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@/postgres?host={self.base}&port={self.port}"
        self.ca = trustme.CA()
        self.ca_file = self.base / "ca.pem"

    def _as_postgres(self, program: str, *args: str | Path) -> None:
        done = run("runuser", "-u", "postgres", "--", self.bindir / program, *args)
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        shutil.chown(self.base, "postgres")
        data = self.base / "data"
        self._as_postgres(
            "initdb", "-D", data, "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256",
        )  # fmt: skip
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        certificate = self.ca.issue_cert("localhost")
        certificate.cert_chain_pems[0].write_to_path(str(self.base / "server.crt"))
        certificate.private_key_pem.write_to_path(str(self.base / "server.key"))
        for name in ("server.crt", "server.key"):
            shutil.chown(self.base / name, "postgres")
        (self.base / "server.key").chmod(0o600)  # PostgreSQL refuses a key others can read
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c ssl=on "
            f"-c ssl_cert_file={self.base}/server.crt -c ssl_key_file={self.base}/server.key"
        )
        self._as_postgres(
            "pg_ctl", "-D", data, "-l", self.base / "log", "-w", "-o", options, "start"
        )

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", self.base / "data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base)


def bake_with_cli(tmp_path: Path, *answers: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Bake as a user does, with the cookiecutter command; HOME, so replay files, in tmp_path."""
    output = tmp_path / "out"
    output.mkdir(exist_ok=True)
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    env = os.environ | {"HOME": str(tmp_path / "home")}
    env.pop("COOKIECUTTER_CONFIG", None)
    result = run(cookiecutter, TEMPLATE_DIR, "--no-input", "-o", output, *answers, env=env)
    return result, output


class PgBouncer:
    """PgBouncer in transaction mode on a free 127.0.0.1 port, in front of a PostgreSQL server.

    Started for the tests and removed afterwards; it trusts every user the server has.
    """

    def __init__(self, executable: str, server_host: str, server_port: int) -> None:
        self.executable = executable
        self.server = (server_host, server_port)
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="pool-template-pgbouncer-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        (self.base / "userlist.txt").write_text('"postgres" ""\n')
        config = self.base / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.server[0]} port={self.server[1]}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.base / 'userlist.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
            f"logfile = {self.base / 'pgbouncer.log'}\n"
        )
        shutil.chown(self.base, "postgres")
        for path in self.base.iterdir():
            shutil.chown(path, "postgres")
        # PgBouncer refuses to run as root.
        self.process = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", self.executable, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            assert self.process.poll() is None, self.log()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert time.monotonic() < deadline, "PgBouncer did not start: " + self.log()
            time.sleep(0.1)

    def log(self) -> str:
        log_file = self.base / "pgbouncer.log"
        return log_file.read_text() if log_file.exists() else ""

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.base)


class Prometheus:
    """A real Prometheus (Debian's package) on a free 127.0.0.1 port, scraping one target
    every second, with its data in a temporary directory removed when it stops."""

    SCRAPE_SECONDS = 1

    def __init__(self, executable: str, target: str) -> None:
        self.executable = executable
        self.target = target  # host:port of the app
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="pool-template-prometheus-"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_file = open(self.base / "log", "w")  # noqa: SIM115 - closed in stop()
        config = self.base / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {self.SCRAPE_SECONDS}s\n"
            f"  scrape_timeout: {self.SCRAPE_SECONDS}s\n"
            "scrape_configs:\n"
            "  - job_name: app\n"
            f"    static_configs: [{{targets: ['{self.target}']}}]\n"
        )
        self.process = subprocess.Popen(
            [
                self.executable, f"--config.file={config}",
                f"--storage.tsdb.path={self.base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus was not ready in 30 s: " + self.log()
            time.sleep(0.2)

    def log(self) -> str:
        return (self.base / "log").read_text()

    def query(self, expression: str) -> list[dict]:
        """The instant vector ``expression`` evaluates to now (Prometheus's HTTP API)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expression})
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The single value of ``expression`` now, or None when it has no series yet."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.log_file.close()
        shutil.rmtree(self.base)
