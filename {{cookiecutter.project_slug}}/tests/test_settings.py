import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.settings import (
    Settings,
    anchor_relative_paths,
    env_file,
    load_settings,
)

from .support import PROJECT_DIR, make_settings, serve


def test_database_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:s3cret@db.internal:5432/app")

    settings = Settings(_env_file=None)

    assert settings.database_url.get_secret_value().endswith("@db.internal:5432/app")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://app:pw@db/app", "postgresql+asyncpg://app:pw@db/app"),
        ("postgresql://app:pw@db:5433/app", "postgresql+asyncpg://app:pw@db:5433/app"),
        ("postgresql+psycopg://app@db/app", "postgresql+asyncpg://app@db/app"),
        (
            "postgresql://app@db/app?sslmode=require&channel_binding=require",
            "postgresql+asyncpg://app@db/app?channel_binding=require&sslmode=require",
        ),
        ("sqlite:////srv/local.db", "sqlite+aiosqlite:////srv/local.db"),
        ("postgresql+asyncpg://app:p%40ss@db/app", "postgresql+asyncpg://app:p%40ss@db/app"),
        (
            "postgresql://app@db/app?ssl=true&connect_timeout=10",
            "postgresql+asyncpg://app@db/app?connect_timeout=10&ssl=true",
        ),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ],
)
def test_common_url_forms_use_the_async_drivers(given: str, used: str) -> None:
    assert make_settings(given).database_url.get_secret_value() == used


@pytest.mark.parametrize(
    ("given", "path"),
    [("sqlite+aiosqlite:///./app.db", "app.db"), ("sqlite:///data/app.db", "data/app.db")],
)
def test_a_relative_sqlite_path_is_the_projects_from_any_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: str, path: str
) -> None:
    """As .env is: started elsewhere, the app must not open another, empty database."""
    monkeypatch.chdir(tmp_path)

    used = make_settings(given).database_url.get_secret_value()

    assert used.startswith("sqlite+aiosqlite:///")
    assert make_url(used).database == str(PROJECT_DIR / path)  # decoded: the path may hold '%'


def test_relative_tls_files_are_the_projects_and_others_stay(tmp_path: Path) -> None:
    url = make_url(
        "postgresql+asyncpg://app@db/app?sslmode=verify-full&sslrootcert=certs/ca.pem"
        "&sslcert=/etc/app/client.crt&sslkey=~/client.key&application_name=certs/x"
    )

    query = anchor_relative_paths(url, tmp_path).query

    assert query["sslrootcert"] == str(tmp_path / "certs" / "ca.pem")
    assert query["sslcert"] == "/etc/app/client.crt"
    assert query["sslkey"] == str(Path.home() / "client.key")
    assert query["application_name"] == "certs/x"
    assert anchor_relative_paths(url, None) is url  # installed: the working directory's


@pytest.mark.parametrize("seconds", [14400, 86400, 604800])
def test_pool_recycle_of_hours_to_a_week_is_accepted(
    monkeypatch: pytest.MonkeyPatch, seconds: int
) -> None:
    """4 h and a day are common choices; a week is the most accepted (MAX_SECONDS)."""
    monkeypatch.setenv("POOL_RECYCLE", str(seconds))

    assert Settings(_env_file=None).pool_recycle == seconds


# Variables a settings test's own process must not inherit from the run's environment.
SETTINGS_VARIABLES = {"ENV_FILE", *(name.upper() for name in Settings.model_fields)}


def run_python(code: str, cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a process of its own, started in ``cwd`` as uvicorn or alembic
    started there would be, with no setting inherited from this run's environment."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env | environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_app(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess:
    """Import the app as uvicorn would, in a folder without a .env file."""
    code = "import {{ cookiecutter.package_name }}.main"
    return run_python(code, tmp_path, **environment)


def test_bad_settings_stop_the_app_with_one_line_each(tmp_path: Path) -> None:
    started = start_app(
        tmp_path, POOL_SIZE="abc", MAX_OVERFLOW="-5", POOL_TIMEOUT="0", POOL_RECYCLE="1000000"
    )

    assert started.returncode == 1
    assert "Traceback" not in started.stderr
    lines = started.stderr.strip().splitlines()
    assert lines[0].startswith("Invalid settings")
    assert lines[1].startswith("POOL_SIZE='abc': Input should be a valid integer")
    assert lines[2] == "MAX_OVERFLOW='-5': Input should be greater than or equal to -1"
    assert lines[3] == "POOL_TIMEOUT='0': Input should be greater than 0"
    assert lines[4] == "POOL_RECYCLE='1000000': Input should be less than or equal to 604800"
    assert len(lines) == 5


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql+aiomysql://app:hunter2@db/app", "the database 'mysql+aiomysql' is not supported"),
        ("postgresql+asyncpg://app:hun@ter2@db/app", "unencoded '@'"),
        (
            "postgresql+asyncpg://app@db/app?password=hunter2",
            "password: it would be written wherever the URL goes",
        ),
        ("hunter2", "not a database URL"),
        ("postgresql+asyncpg://app:hunter2@db:99999/app", "port must be a number from 1 to 65535"),
        ("sqlite+aiosqlite://hunter2@db/app.db", "a SQLite URL names no host"),
        (
            "postgresql+asyncpg://app:hunter2@db/app?sslmode=required",
            "sslmode=required: accepted: disable, allow, prefer, require,",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?ssl=require&sslmode=disable",
            "ssl=require and sslmode=disable disagree; give sslmode",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?sslmode=verify-full&sslrootcert=/nowhere/ca.pem",
            "sslrootcert=/nowhere/ca.pem: cannot be read (No such file or directory)",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?connect_timeout=0",
            "connect_timeout=0: accepted: seconds above 0",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?keepalives=1",
            "keepalives=1: remove it: asyncpg sets no TCP keepalives",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?sslmod=require",
            "sslmod=require: remove it: not a connection parameter",
        ),
        (
            "postgresql+asyncpg://app:pw@db/app?sslcert=c.crt&sslkey=c.key&sslpassword=hunter2",
            "sslpassword: a passphrase in the URL would be written wherever the URL goes",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?channel_binding=require",
            "channel_binding=require needs TLS, which asyncpg would not insist on: add sslmode=",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?sslmode=verify-full",
            "sslmode=verify-full needs the CA certificate that signed the server's: add sslroot",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?host=h1:5432&host=h2",
            "host: give a port with every host or with none",
        ),
        (
            "postgresql+asyncpg://app:hunter2@db/app?prepared_statement_cache_size=-5",
            "prepared_statement_cache_size=-5: accepted: a whole number",
        ),
    ],
)
def test_bad_database_url_stops_the_app_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, expected: str
) -> None:
    """In-process, through ``load_settings()``, which main.py calls (the test above starts
    the app in a process of its own); this keeps the many URL cases fast."""
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt either
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    monkeypatch.setenv("DATABASE_URL", url)

    with pytest.raises(SystemExit) as stopped:
        load_settings()

    message = str(stopped.value.code)
    assert "Traceback" not in message
    (line,) = [line for line in message.splitlines() if line.startswith("DATABASE_URL:")]
    assert expected in line
    assert "hunter2" not in message
    assert "ter2" not in message


@pytest.mark.parametrize(
    ("replica_urls", "expected"),
    [
        (
            "postgresql://app:hunter2@replica/app",
            [
                "REPLICA_URLS: not a JSON list of URLs; write "
                """REPLICA_URLS='["postgresql://user:password@replica-1:5432/dbname"]'"""
            ],
        ),
        (
            "postgresql://app:hunter2@r1/app,postgresql://app:hunter2@r2/app",
            ["REPLICA_URLS: not a JSON list of URLs; write REPLICA_URLS='["],
        ),
        (
            '["postgresql://app:hunter2@r1:99999/app", "mysql://app:hunter2@r2/app"]',
            [
                "REPLICA_URLS[0]: the port must be a number from 1 to 65535",
                "REPLICA_URLS[1]: the database 'mysql' is not supported; accepted: ",
            ],
        ),
        (
            '["sqlite+aiosqlite:///replica.db"]',
            ["REPLICA_URLS[0]: a read replica must be a PostgreSQL server (postgresql://...)"],
        ),
        (
            '["postgresql://app:hunter2@r1/app?password=hunter2"]',
            ["REPLICA_URLS[0]: password: it would be written wherever the URL goes"],
        ),
    ],
    ids=["a-bare-url", "comma-separated", "bad-port-and-driver", "sqlite", "password-parameter"],
)
def test_bad_replica_urls_stop_the_app_with_one_line_each_without_showing_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, replica_urls: str, expected: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@primary/app")
    monkeypatch.setenv("REPLICA_URLS", replica_urls)

    with pytest.raises(SystemExit) as stopped:
        load_settings()

    lines = str(stopped.value.code).splitlines()
    assert lines[0].startswith("Invalid settings")
    assert len(lines) == len(expected) + 1, lines
    for line, start in zip(lines[1:], expected, strict=True):
        assert line.startswith(start), line
    assert "hunter2" not in str(stopped.value.code)


def test_replica_urls_need_a_postgresql_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICA_URLS", '["postgresql://app@replica/app"]')

    with pytest.raises(SystemExit) as stopped:
        load_settings_from("sqlite+aiosqlite:///./app.db")

    assert str(stopped.value.code).splitlines()[1:] == [
        "REPLICA_URLS: read replicas need DATABASE_URL to be PostgreSQL"
    ]


@pytest.mark.parametrize(
    ("replica_urls", "count"),
    [("", 0), ("[]", 0), ('["postgres://app:pw@r1/app", "postgresql://app@r2:6432/app"]', 2)],
)
def test_replica_urls_are_a_json_list_in_the_async_driver(
    monkeypatch: pytest.MonkeyPatch, replica_urls: str, count: int
) -> None:
    monkeypatch.setenv("REPLICA_URLS", replica_urls)

    settings = load_settings_from("postgresql://app@primary/app")

    urls = [url.get_secret_value() for url in settings.replica_urls]
    assert len(urls) == count
    assert all(url.startswith("postgresql+asyncpg://") for url in urls)


def load_settings_from(database_url: str) -> Settings:
    """``load_settings()`` with this DATABASE_URL and no settings file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", database_url)
        patch.setitem(Settings.model_config, "env_file", None)
        return load_settings()


def settings_seen_from(cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    """Import the settings in a process of their own, started in ``cwd``, as uvicorn or
    alembic started there would; it prints the file read and two settings."""
    code = (
        "from {{ cookiecutter.package_name }}.settings import Settings\n"
        "settings = Settings()\n"
        "print(Settings.model_config['env_file'])\n"
        "print(settings.pool_size)\n"
        "print(settings.database_url.get_secret_value())\n"
    )
    return run_python(code, cwd, **environment)


def test_the_projects_env_file_is_read_from_any_working_directory(tmp_path: Path) -> None:
    """pydantic-settings reads a relative env_file from the working directory: the app
    started elsewhere (``cd / && uvicorn ...``) would miss the project's .env, or read
    another one. The path is anchored to the project instead."""
    (tmp_path / ".env").write_text("POOL_SIZE=4321\n", encoding="utf-8")  # not the project's

    seen = settings_seen_from(tmp_path)

    assert seen.returncode == 0, seen.stderr
    env_file, pool_size, _ = seen.stdout.splitlines()
    assert env_file == str(PROJECT_DIR / ".env")
    assert pool_size != "4321"


def test_env_file_names_the_settings_file_read_instead(tmp_path: Path) -> None:
    """For deployments: ENV_FILE, relative to the working directory as typed, replaces
    the project's .env."""
    (tmp_path / "production.env").write_text(
        "POOL_SIZE=7\nDATABASE_URL=postgresql+asyncpg://app:s3cret@db.internal:5432/app\n",
        encoding="utf-8",
    )

    seen = settings_seen_from(tmp_path, ENV_FILE="production.env")

    assert seen.returncode == 0, seen.stderr
    env_file, pool_size, database_url = seen.stdout.splitlines()
    assert env_file == str(tmp_path / "production.env")
    assert pool_size == "7"
    assert database_url == "postgresql+asyncpg://app:s3cret@db.internal:5432/app"


@pytest.mark.parametrize("named", ["missing.env", "."], ids=["missing", "a-directory"])
def test_an_env_file_that_is_not_there_stops_the_app_with_one_line(
    tmp_path: Path, named: str
) -> None:
    """pydantic-settings skips a missing env file silently; a deployment that names one
    must not run on the defaults instead. (The app, the alembic command and the tests
    stop the same way: when they import the settings.)"""
    started = settings_seen_from(tmp_path, ENV_FILE=named)

    assert started.returncode == 1
    assert "Traceback" not in started.stderr
    (line,) = started.stderr.strip().splitlines()
    problem = "no such file" if named == "missing.env" else "not a file"
    assert line.startswith(f"ENV_FILE={named!r}: {problem}")


def test_installed_without_the_source_tree_no_env_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-editable install (site-packages, a container image) has no project: only the
    environment and the defaults apply, or the file ENV_FILE names."""
    monkeypatch.delenv("ENV_FILE", raising=False)
    site_packages = tmp_path / "lib" / "python3.12" / "site-packages"
    (tmp_path / "pyproject.toml").touch()  # some other project around the installation
    checkout = tmp_path / "checkout"
    (checkout / "src" / "pkg").mkdir(parents=True)
    (checkout / "pyproject.toml").touch()

    assert env_file(site_packages / "pkg") is None
    assert env_file(checkout / "src" / "pkg") == checkout / ".env"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("password", "warned"), [("change-me", True), ("s3cret-pw", False)], ids=["placeholder", "real"]
)
async def test_a_placeholder_password_is_announced_at_startup_without_the_url(
    password: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The bake writes change-me into tracked files (.env.example, the defaults) in place of
    the password: an app still running with it says so, in one line that shows neither
    the password nor the URL. (Nothing listens on port 1: the app starts regardless.)"""
    settings = make_settings(f"postgresql+asyncpg://app:{password}@127.0.0.1:1/app")

    with caplog.at_level(logging.INFO):
        async with serve(settings):
            pass

    warnings = [r.getMessage() for r in caplog.records if "placeholder password" in r.getMessage()]
    assert warnings == (
        ["DATABASE_URL still has the placeholder password: set the real one in .env or the "
         "environment"] if warned else []
    )  # fmt: skip
    assert [r.levelno for r in caplog.records if "placeholder" in r.getMessage()] == (
        [logging.WARNING] if warned else []
    )
    assert password not in caplog.text
