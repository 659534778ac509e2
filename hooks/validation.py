"""Checks on the answers, as plain functions that return one line per problem."""

from hooks import database_url

SUPPORTED_URL_FORMS = (
    "postgresql+asyncpg://user:password@host:5432/dbname or sqlite+aiosqlite:///./app.db"
)
SUPPORTED_SCHEMES = ("postgresql+asyncpg", "sqlite+aiosqlite")
MAX_POOL_NUMBER = 10_000


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


def check_answers(answers: dict) -> list[str]:
    """Every problem with the answers, one line each, naming the variable and what is accepted."""
    return [
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
