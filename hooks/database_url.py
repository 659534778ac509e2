"""Database URLs as the user types them: parse, normalise, check, and split off the password.

The pattern is SQLAlchemy's own (``sqlalchemy.engine.url._parse_url``), so a URL is cut
exactly where the baked app will cut it; the pieces stay percent-encoded as typed.
"""

import importlib.util
import re
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

SUPPORTED_FORMS = (
    "postgresql+asyncpg://user:password@host:5432/dbname, "
    "sqlite+aiosqlite:///./app.db or sqlite+aiosqlite:///:memory:"
)
ENCODING_HINT = (
    "percent-encode special characters in the password: @ -> %40, : -> %3A, / -> %2F, "
    "% -> %25, # -> %23, ? -> %3F, $ -> %24, space -> %20"
)

# What tracked files carry in place of the database password (the real one is in .env).
PLACEHOLDER = "change-me"

# What users type, and the async driver the baked app uses for it.
ASYNC_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}

# The baked app's own reading of a URL's parameters (standard library only, no template
# syntax), run here as it is, so that a URL is accepted when baking exactly when the app
# accepts it at startup.
PARAMETERS_FILE = (
    Path(__file__).resolve().parents[1] / "{{cookiecutter.project_slug}}" / "src"
    / "{{cookiecutter.package_name}}" / "connection_parameters.py"
)  # fmt: skip
_spec = importlib.util.spec_from_file_location("baked_connection_parameters", PARAMETERS_FILE)
assert _spec is not None and _spec.loader is not None
connection_parameters = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(connection_parameters)

_URL_PATTERN = re.compile(
    r"""
    (?P<scheme>[\w+]+)://
    (?:
        (?P<username>[^:/]*)
        (?::(?P<password>[^@]*))?
    @)?
    (?P<host>\[[^/?]+\]|[^/:?]+)?
    (?::(?P<port>[^/?]*))?
    (?:/(?P<database>[^?]*))?
    (?:\?(?P<query>.*))?
    """,
    re.VERBOSE | re.DOTALL,
)


class DatabaseUrl(NamedTuple):
    scheme: str
    username: str | None
    password: str | None
    host: str | None
    port: str | None
    database: str | None
    query: str | None

    def render(self, password: str | None) -> str:
        userinfo = ""
        if self.username is not None:
            userinfo = self.username + (f":{password}" if password is not None else "") + "@"
        address = (self.host or "") + (f":{self.port}" if self.port is not None else "")
        path = f"/{self.database}" if self.database is not None else ""
        query = f"?{self.query}" if self.query is not None else ""
        return f"{self.scheme}://{userinfo}{address}{path}{query}"

    @property
    def without_password(self) -> str:
        """The URL as it may appear in tracked files: the user stays, the password goes."""
        return self.render(password=None)

    @property
    def masked(self) -> str:
        """The URL as it may appear in messages: no password, and no query, which is
        named parameter by parameter where it matters."""
        return self._replace(query=None).render(password="***" if self.password else None)

    @property
    def with_placeholder_password(self) -> str:
        return self.render(password=PLACEHOLDER if self.password else None)

    @property
    def full(self) -> str:
        return self.render(password=self.password)


def parse(url: str) -> DatabaseUrl | None:
    """Parse ``url`` the way SQLAlchemy does, or return None when it does not parse."""
    match = _URL_PATTERN.fullmatch(url.strip())
    if match is None:
        return None
    return DatabaseUrl(**match.groupdict())


def normalise(url: str) -> tuple[str, list[str]]:
    """The URL with the async driver the app uses, and a line for each change made."""
    parsed = parse(url)
    if parsed is None or parsed.scheme not in ASYNC_SCHEMES:
        return url, []
    notices = []
    scheme = ASYNC_SCHEMES[parsed.scheme]
    if scheme != parsed.scheme:
        notices.append(f"database_url: {parsed.scheme}:// is used as {scheme}://")
        parsed = parsed._replace(scheme=scheme)
    if scheme == "postgresql+asyncpg":
        notices += [f"database_url: {note}" for note in query_parameters(parsed).notes]
    return parsed.full, notices


def query_parameters(parsed: DatabaseUrl):
    """The query read as the baked app reads it (its connection_parameters.py)."""
    query: dict[str, str | tuple[str, ...]] = {}
    # Parsed as SQLAlchemy's make_url parses it: parse_qsl, repeated keys as a tuple.
    for key, value in parse_qsl(parsed.query or ""):
        if key in query:
            previous = query[key]
            query[key] = (*((previous,) if isinstance(previous, str) else previous), value)
        else:
            query[key] = value
    return connection_parameters.read_parameters(query)


def mask(text: str) -> str:
    """Hide whatever may be a password: everything between the scheme and the last '@'."""
    text = text.strip()
    if "@" not in text:
        return text
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    return f"{scheme}{separator}***@{rest.rsplit('@', 1)[1]}"


def problems(url: str) -> list[str]:
    """What is wrong with a (normalised) database URL, one line each; the password masked."""
    if not url.strip():
        return [f"database_url: it is empty; accepted: {SUPPORTED_FORMS}"]
    # Before the query, which may hold spaces and '@'s (application_name=svc@corp).
    address = url.strip().partition("?")[0]
    if re.search(r"\s", address):
        return [f"database_url: it contains a space or a line break; {ENCODING_HINT}"]
    if max(address.count("@"), url.partition("://")[2].partition("/")[0].count("@")) > 1:
        # Not shown: the text between the '@'s is part of the password.
        return [
            f"database_url: {mask(url)!r} has more than one '@', so the password would be cut "
            f"at the first one; {ENCODING_HINT}"
        ]
    parsed = parse(url)
    if parsed is None:
        return [f"database_url: {mask(url)!r} is not a database URL; accepted: {SUPPORTED_FORMS}"]
    shown = parsed.masked
    if parsed.scheme not in ASYNC_SCHEMES.values():
        return [
            f"database_url: {shown!r} uses the driver {parsed.scheme!r}, which is not supported; "
            f"accepted: {SUPPORTED_FORMS}"
        ]
    if parsed.scheme == "sqlite+aiosqlite":
        if parsed.host or parsed.username is not None or parsed.port is not None:
            return [
                f"database_url: {shown!r} names a host, which SQLite has none of; accepted: "
                "sqlite+aiosqlite:///relative/path.db, sqlite+aiosqlite:////absolute/path.db "
                "or sqlite+aiosqlite:///:memory:"
            ]
        return []
    found = []
    if parsed.port is not None and not (parsed.port.isdigit() and 1 <= int(parsed.port) <= 65535):
        found.append(
            f"database_url: {shown!r} has the port {parsed.port!r}; accepted: a number from 1 "
            "to 65535, or none for 5432"
        )
    if not parsed.database:
        found.append(
            f"database_url: {shown!r} names no database; accepted: "
            "postgresql+asyncpg://user:password@host:5432/dbname"
        )
    found += [f"database_url: {problem}" for problem in query_parameters(parsed).problems]
    return found
