"""Checks on the answers, as plain functions that return one line per problem."""

import keyword

from hooks import database_url

SUPPORTED_URL_FORMS = (
    "postgresql+asyncpg://user:password@host:5432/dbname or sqlite+aiosqlite:///./app.db"
)
SUPPORTED_SCHEMES = ("postgresql+asyncpg", "sqlite+aiosqlite")
MAX_POOL_NUMBER = 10_000
# Longer names would push the baked imports past the line length that ruff enforces.
MAX_PACKAGE_NAME_LENGTH = 40


def check_integer(name: str, value: object, minimum: int, meaning: str) -> list[str]:
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        return [f"{name}: {text!r} is not a whole number; accepted: {meaning}"]
    if not minimum <= number <= MAX_POOL_NUMBER:
        return [f"{name}: {number} is out of range; accepted: {meaning}"]
    return []


def check_timeout(value: object) -> list[str]:
    text = str(value).strip()
    meaning = f"a number of seconds above 0 and at most {MAX_POOL_NUMBER}"
    try:
        seconds = float(text)
    except ValueError:
        return [f"pool_timeout: {text!r} is not a number; accepted: {meaning}"]
    if not 0 < seconds <= MAX_POOL_NUMBER:
        return [f"pool_timeout: {text} is out of range; accepted: {meaning}"]
    return []


def check_database_url(url: str) -> list[str]:
    parsed = database_url.parse(url)
    if parsed is None:
        return [f"database_url: {url!r} is not a database URL; accepted: {SUPPORTED_URL_FORMS}"]
    if parsed.scheme not in SUPPORTED_SCHEMES:
        driver = parsed.scheme
        return [
            f"database_url: the driver {driver!r} is not supported; accepted: {SUPPORTED_URL_FORMS}"
        ]
    return []


def check_package_name(name: str) -> list[str]:
    accepted = (
        f"a Python identifier of at most {MAX_PACKAGE_NAME_LENGTH} characters: lower-case "
        "letters, digits and underscores, not starting with a digit, not a keyword"
    )
    if not name.isidentifier() or keyword.iskeyword(name) or not name.isascii():
        return [f"package_name: {name!r} is not a valid package name; accepted: {accepted}"]
    if len(name) > MAX_PACKAGE_NAME_LENGTH:
        return [f"package_name: {name!r} is {len(name)} characters long; accepted: {accepted}"]
    return []


def check_answers(answers: dict) -> list[str]:
    """Every problem with the answers, one line each, naming the variable and what is accepted."""
    return [
        *check_package_name(answers["package_name"]),
        *check_integer(
            "pool_size", answers["pool_size"], 1, f"a whole number from 1 to {MAX_POOL_NUMBER}"
        ),
        *check_integer(
            "max_overflow",
            answers["max_overflow"],
            -1,
            f"a whole number from 0 to {MAX_POOL_NUMBER}, or -1 for no limit",
        ),
        *check_timeout(answers["pool_timeout"]),
        *check_integer(
            "pool_recycle",
            answers["pool_recycle"],
            -1,
            f"seconds from 0 to {MAX_POOL_NUMBER}, or -1 for never",
        ),
        *check_database_url(answers["database_url"]),
    ]
