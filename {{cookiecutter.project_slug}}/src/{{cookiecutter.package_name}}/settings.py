"""Runtime configuration, read from environment variables and the project's ``.env`` file.

Each field can be overridden by an environment variable of the same name in upper case
(``DATABASE_URL``, ``POOL_SIZE``, ...); the defaults are the answers given at bake time.
"""

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

{% if cookiecutter.metrics -%}
from dotenv import dotenv_values
from opentelemetry import trace
{% endif -%}
from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .connection_parameters import FILE_PARAMETERS, file_problems, read_parameters

# The async driver the app uses for each database, whatever driver a URL names.
ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
# Larger counts are typing mistakes, not pool settings.
MAX_NUMBER = 10_000
# Seconds up to a week, the template's limit too: pool_recycle is commonly 1 to 24 hours
# (3600, 14400, 86400), and more than a week is a typing mistake.
MAX_SECONDS = 7 * 24 * 3600
SUPPORTED_URLS = (
    "postgresql+asyncpg://user:password@host:5432/dbname or sqlite+aiosqlite:///./app.db"
)
# REPLICA_URLS as an environment variable or a line of .env.
REPLICA_URLS_FORM = """REPLICA_URLS='["postgresql://user:password@replica-1:5432/dbname"]'"""

# Names the settings file to read instead of the project's .env, for deployments.
ENV_FILE_VARIABLE = "ENV_FILE"
# Where this package is: src/<package> in the project, or an installation's site-packages.
PACKAGE_DIR = Path(__file__).resolve().parent


def env_file(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The settings file: the one ``ENV_FILE`` names, else the project's ``.env``.

    pydantic-settings reads a relative ``env_file`` from the current directory, so
    ``env_file=".env"`` would miss the project's file when the app or alembic starts
    elsewhere: the path is anchored to the project, the folder above ``src/<package>``
    that holds pyproject.toml. Installed without the source tree (site-packages, a
    container image) there is no project file: environment variables and the defaults
    apply, or the file ``ENV_FILE`` names. pydantic-settings skips a missing file
    silently: a missing ``ENV_FILE`` stops the process with one line instead.
    """
    named = os.environ.get(ENV_FILE_VARIABLE)
    if named:
        path = Path(named).absolute()  # relative to the current directory, as typed
        if not path.is_file():
            problem = "no such file" if not path.exists() else "not a file"
            sys.exit(
                f"{ENV_FILE_VARIABLE}={named!r}: {problem} ({ENV_FILE_VARIABLE} names the "
                "settings file to read instead of the project's .env)"
            )
        return path
    project = project_dir(package_dir)
    return project / ".env" if project else None


def project_dir(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The project's folder (above ``src/<package>``, holding pyproject.toml), or None for
    an installation without its source tree."""
    project = package_dir.parent.parent
    if package_dir.parent.name == "src" and (project / "pyproject.toml").is_file():
        return project
    return None


def anchor_relative_paths(url: URL, project: Path | None) -> URL:
    """``url`` with its relative file paths (a SQLite database; sslrootcert, sslcert,
    sslkey, sslcrl, passfile) taken from the project's folder, where ``.env`` is.

    SQLAlchemy and libpq read them from the current directory, so ``./app.db`` would be
    another, empty database for an app started elsewhere (``cd / && uvicorn ...``).
    Installed without its source tree, the current directory it stays.
    """
    if project is None:
        return url
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:") or "uri" in url.query or Path(path).is_absolute():
            return url
        return url.set(database=str(project / path))
    # '~' is the user's home, as a shell would read it (libpq and asyncpg would not).
    anchored = {
        key: str(project / Path(value).expanduser())
        for key, value in url.query.items()
        if key in FILE_PARAMETERS and isinstance(value, str) and value != "system"
    }
    changed = {key: path for key, path in anchored.items() if path != url.query[key]}
    return url.update_query_dict(changed) if changed else url


def use_async_driver(value: SecretStr) -> SecretStr:
    """Accept the URL forms people paste (postgres://, libpq's parameters) for the async
    drivers; refuse, one line each, what asyncpg could not connect with.

    The messages never quote the URL: it may hold the password.
    """
    try:
        url = make_url(value.get_secret_value())
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL; accepted: {SUPPORTED_URLS}") from None
    driver = ASYNC_DRIVERS.get(url.drivername.split("+")[0])
    if driver is None:
        unsupported = f"the database {url.drivername!r} is not supported"
        raise ValueError(f"{unsupported}; accepted: {SUPPORTED_URLS}")
    if "@" in (url.host or ""):
        raise ValueError("the password holds an unencoded '@'; percent-encode it as %40")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    if driver.startswith("sqlite") and (url.host or url.username or url.port):
        raise ValueError("a SQLite URL names no host: sqlite+aiosqlite:///path/to/app.db")
    anchored = anchor_relative_paths(url, project_dir())
    if driver.startswith("postgresql"):
        # Each parameter asyncpg cannot be given, and each file it could not read.
        parameters = read_parameters(anchored.query)
        passfile = parameters.connect_args.get("passfile")
        problems = parameters.problems or file_problems(parameters.tls, passfile)
        if problems:
            raise ValueError("\n".join(problems))
    if driver == url.drivername and anchored is url:
        return value  # as given: re-rendering would percent-encode it anew
    return SecretStr(anchored.set(drivername=driver).render_as_string(hide_password=False))


def replica_server(value: SecretStr) -> SecretStr:
    """A read replica is a PostgreSQL server: SQLite has none."""
    if not value.get_secret_value().startswith("postgresql"):
        raise ValueError("a read replica must be a PostgreSQL server (postgresql://...)")
    return value


# A database URL, checked; the replicas' URLs are PostgreSQL's too.
DatabaseUrl = Annotated[SecretStr, AfterValidator(use_async_driver)]
ReplicaUrl = Annotated[SecretStr, AfterValidator(use_async_driver), AfterValidator(replica_server)]


class Settings(BaseSettings):
    # The file is found when this module is imported, from ENV_FILE or the package's place.
    model_config = SettingsConfigDict(
        env_file=env_file(),
        env_file_encoding="utf-8",
        extra="ignore",
        # A refused value is never echoed: the database URL's may hold the password.
        hide_input_in_errors=True,
    )

    # A secret so that repr(), logs and validation errors never show the password.
    database_url: DatabaseUrl = SecretStr(
        {{ cookiecutter.database_url | database_url_with_placeholder | python_string }},
    )
    # Connections the pool keeps open (0 would mean "no limit" to SQLAlchemy: at least 1).
    pool_size: int = Field(default={{ cookiecutter.pool_size | int }}, ge=1, le=MAX_NUMBER)
    # How many more a burst may open; pool_size + max_overflow is the most connections, and
    # requests, one worker uses at once. -1 = no limit (below that SQLAlchemy breaks).
    max_overflow: int = Field(default={{ cookiecutter.max_overflow | int }}, ge=-1, le=MAX_NUMBER)
    # Seconds an overflow connection stays open, idle, after its last use (0 = closed when
    # returned, as SQLAlchemy's own pool does): load that swings around pool_size reuses it
    # instead of opening a new server connection every few requests.
    pool_overflow_idle_timeout: float = Field(
        default=10.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False
    )
    # Seconds a request waits for a free connection before it fails (503).
    pool_timeout: float = Field(default={{ cookiecutter.pool_timeout | float }}, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    # Seconds after which a connection is replaced at its next checkout; -1 = never.
    pool_recycle: int = Field(default={{ cookiecutter.pool_recycle | int }}, ge=-1, le=MAX_SECONDS)
    # Never hand a request a connection the server has dropped (restart, failover, idle
    # reaping): checked at checkout, pinged after a second idle and before a transaction,
    # reads retried once on a new connection (see pre_ping.py).
    pool_pre_ping: bool = {{ cookiecutter.pool_pre_ping | python_bool }}
    # Worker processes serving the app (uvicorn --workers), each with its own pool: the
    # startup check against the server's max_connections counts this many pools.
    workers: int = Field(default={{ cookiecutter.workers | int }}, ge=1, le=MAX_NUMBER)
    # Seconds to open a connection before giving up: a database that is down or silent
    # answers 503 this fast, not after asyncpg's default of 60 s.
    connect_timeout: float = Field(default=5.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    # Seconds a statement may run (PostgreSQL cancels it: 504); 0 = no limit. On SQLite, the
    # longest a writer waits for another writer's lock.
    statement_timeout: float = Field(default=30.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    # A request that waits this many seconds for a connection is logged as a warning.
    pool_wait_warning: float = Field(default=1.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    # "pgbouncer": the URL points at PgBouncer in transaction pooling mode (see README).
    connection_pooler: Literal["none", "pgbouncer"] = {{ cookiecutter.connection_pooler | python_string }}
    # "null": no pooling in the app, a new connection per request (SQLAlchemy's NullPool),
    # to measure what the pool buys, or behind a pooler that should hold every connection.
    pool_class: Literal["queue", "null"] = "queue"
    # PostgreSQL streaming replicas for reads, as a JSON list of URLs (pydantic-settings'
    # form for a list): REPLICA_URLS='["postgresql://app:pw@replica-1:5432/app"]'. Each gets
    # a pool sized like the primary's; ReadSessionDep reads from them (replicas.py).
    replica_urls: Annotated[list[ReplicaUrl], NoDecode] = Field(default_factory=list, max_length=64)
    # Seconds a replica may lag behind the primary before reads leave it out until it has
    # caught up.
    replica_max_lag: float = Field(default=5.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    # Seconds between two checks of each replica: reachable, and how far behind.
    replica_check_interval: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
{%- if cookiecutter.metrics %}
    # Prometheus metrics at /metrics, the pool's and the requests' (metrics.py); false: no
    # /metrics route, and prometheus_client is not even imported.
    metrics: bool = True
{%- endif %}

    @field_validator("replica_urls", mode="before")
    @classmethod
    def json_list(cls, value: object) -> object:
        """The JSON list REPLICA_URLS holds, read here (NoDecode) to refuse in one line what
        is not one: a bare URL, a comma-separated list. Empty: no replicas."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return []
        try:
            urls = json.loads(value)
        except ValueError:
            urls = None
        if not isinstance(urls, list):
            raise ValueError(f"not a JSON list of URLs; write {REPLICA_URLS_FORM}")
        return urls

    @model_validator(mode="after")
    def replicas_need_postgresql(self) -> "Settings":
        if self.replica_urls and not self.database_url.get_secret_value().startswith("postgresql"):
            raise ValueError("REPLICA_URLS: read replicas need DATABASE_URL to be PostgreSQL")
        return self


def load_settings() -> Settings:
    """The settings, or an exit with one line per invalid setting instead of a traceback."""
    try:
        return Settings()
    except ValidationError as error:
        read = Settings.model_config.get("env_file") or "no settings file"
        lines = [f"Invalid settings (environment variables, {read}, or settings.py's defaults):"]
        for problem in error.errors():
            message = problem["msg"].removeprefix("Value error, ")
            if not problem["loc"]:  # a rule across settings: its message names them
                lines += message.splitlines()
                continue
            name = str(problem["loc"][0]).upper()
            if len(problem["loc"]) > 1:
                name += f"[{problem['loc'][1]}]"  # a list's item: REPLICA_URLS[0]
            # A URL is never shown: it may hold the password.
            url = name.startswith(("DATABASE_URL", "REPLICA_URLS"))
            shown = name if url else f"{name}={problem['input']!r}"
            lines += [f"{shown}: {line}" for line in message.splitlines()]
        sys.exit("\n".join(lines))


# The password that tracked files (.env.example, the defaults above) carry in the URL in
# place of the real one, which goes to the git-ignored .env only.
PLACEHOLDER_PASSWORD = "change-me"


def has_placeholder_password(settings: Settings) -> bool:
    """Whether DATABASE_URL still carries the placeholder instead of a real password."""
    url = make_url(settings.database_url.get_secret_value())
    return url.password == PLACEHOLDER_PASSWORD
{%- if cookiecutter.metrics %}


# OpenTelemetry's variables that name where traces go (tracing.py).
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def export_opentelemetry_variables() -> None:
    """Put the settings file's ``OTEL_*`` lines into the environment, where OpenTelemetry's
    SDK reads its settings: a variable already in the environment wins, as for the app's
    own settings."""
    path = Settings.model_config.get("env_file")
    if path is None or not Path(path).is_file():
        return
    for name, value in dotenv_values(path, encoding="utf-8").items():
        if name.upper().startswith("OTEL_") and value is not None:
            os.environ.setdefault(name.upper(), value)


def tracing_requested() -> bool:
    """Whether the process asks for traces (tracing.py), unless ``OTEL_SDK_DISABLED`` is
    ``true`` (OpenTelemetry's rules for these variables): an OTLP endpoint is set, or a
    tracer provider was set up before the app (``opentelemetry-instrument``, your code)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if any(os.environ.get(name, "").strip() for name in OTLP_ENDPOINT_VARIABLES):
        return True
    # OpenTelemetry's API (FastAPI imports it) holds a placeholder until one is set.
    unset = ("ProxyTracerProvider", "NoOpTracerProvider")
    return type(trace.get_tracer_provider()).__name__ not in unset
{%- endif %}
