"""Checks on the answers: plain functions that return one line per problem.

Each line names the variable, the value given (never a password) and what is accepted.
``check_answer`` checks one answer as soon as it is given, ``check_answers`` all of them.
"""

import keyword
import math
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

from hooks import database_url

# Connection and process counts above this are typing mistakes, not pool settings: one
# process holding 10,000 connections is far past the default limit of open files.
MAX_COUNT = 10_000
# Seconds settings up to a week: pool_recycle is commonly 1 to 24 hours (3600, 14400,
# 86400), and -1, not a huge number, is how to say never. More is a typing mistake.
MAX_SECONDS = 7 * 24 * 3600
# PostgreSQL's own ceiling for max_connections (MAX_BACKENDS, 2^18 - 1); big servers run
# thousands of connections, so nothing lower is a typing mistake.
MAX_SERVER_CONNECTIONS = 262_143
# Longer names would push the baked imports past the line length that ruff enforces.
MAX_PACKAGE_NAME_LENGTH = 40
MAX_PROJECT_NAME_LENGTH = 80
# PostgreSQL keeps superuser_reserved_connections (3 by default) for superusers.
SUPERUSER_RESERVED_CONNECTIONS = 3
# Names the package must not take: importing it would shadow what the app runs on.
DEPENDENCY_MODULES = frozenset({
    "_pytest", "aiosqlite", "alembic", "annotated_doc", "annotated_types", "anyio",
    "asgi_lifespan", "asyncpg", "certifi", "click", "coverage", "dotenv", "editables",
    "email_validator", "fastapi", "greenlet", "h11", "h2", "hatchling", "httpcore",
    "httptools", "httpx", "idna", "iniconfig", "jinja2", "markdown_it", "markupsafe", "mdurl",
    "mypy", "packaging", "pathspec", "pip", "pluggy", "py", "pydantic", "pydantic_core",
    "pydantic_settings", "pygments", "pytest", "rich", "ruff", "setuptools", "six", "sniffio",
    "sqlalchemy", "starlette", "tests", "typing_extensions", "typing_inspection", "uvicorn",
    "uvloop", "watchfiles", "websockets", "wheel", "yaml",
})  # fmt: skip
BOOLEAN_WORDS = {"yes": True, "y": True, "true": True, "1": True, "on": True,
                 "no": False, "n": False, "false": False, "0": False, "off": False}  # fmt: skip
STANDARD_LIBRARY = frozenset(getattr(sys, "stdlib_module_names", ())) | {"test"}


class Report(NamedTuple):
    problems: list[str]
    notices: list[str]


def parse_integer(name: str, value: object, low: int, high: int, accepted: str):
    """The whole number in ``value``, or a problem line when it is not one in [low, high]."""
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        shown = "empty" if not text else repr(text)
        return None, f"{name}: {shown} is not a whole number; accepted: {accepted}"
    number = int(text)
    if not low <= number <= high:
        return None, f"{name}: {number} is out of range; accepted: {accepted}"
    return number, None


def parse_seconds(name: str, value: object, low: float, high: float, accepted: str):
    """The number of seconds in ``value``, or a problem line unless low < seconds <= high."""
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", text):
        shown = "empty" if not text else repr(text)
        return None, f"{name}: {shown} is not a number; accepted: {accepted}"
    seconds = float(text)
    if not (math.isfinite(seconds) and low < seconds <= high):
        return None, f"{name}: {text} is out of range; accepted: {accepted}"
    return seconds, None


def line_problems(name: str, text: str) -> list[str]:
    if not text.isprintable():  # line breaks, tabs and other control characters
        return [f"{name}: {text!r} has a line break or control character; accepted: one line"]
    return []


def one_line(name: str) -> Callable[[dict], Report]:
    """The check of a free-text answer that ends up in a one-line field (TOML, a docstring)."""
    return lambda answers: Report(line_problems(name, str(answers[name])), [])


def check_project_name(answers: dict) -> Report:
    name = str(answers["project_name"])
    problems = line_problems("project_name", name)
    if not name.strip() or len(name) > MAX_PROJECT_NAME_LENGTH:
        problems.append(
            f"project_name: {name!r} is {'empty' if not name.strip() else 'too long'}; "
            f"accepted: 1 to {MAX_PROJECT_NAME_LENGTH} characters"
        )
    return Report(problems, [])


def check_author_email(answers: dict) -> Report:
    email = str(answers["author_email"])
    problems = line_problems("author_email", email)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        problems.append(
            f"author_email: {email!r} is not an email address; accepted: name@example.com"
        )
    return Report(problems, [])


def project_slug_problems(slug: str) -> list[str]:
    accepted = (
        "letters, digits, '-', '_' and '.', starting and ending with a letter or digit "
        "(a folder and distribution name)"
    )
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?", slug):
        return [f"project_slug: {slug!r} is not a valid project name; accepted: {accepted}"]
    return []


def package_name_problems(name: str) -> list[str]:
    accepted = (
        f"a Python identifier of at most {MAX_PACKAGE_NAME_LENGTH} characters: lower-case "
        "letters, digits and underscores, not starting with a digit"
    )
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        return [f"package_name: {name!r} is not a valid package name; accepted: {accepted}"]
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return [f"package_name: {name!r} is a Python keyword; accepted: {accepted}"]
    if name in STANDARD_LIBRARY or name in DEPENDENCY_MODULES:
        return [
            f"package_name: {name!r} would shadow the module of that name that the app or its "
            f"tests import; accepted: {accepted}, and not such a name"
        ]
    if len(name) > MAX_PACKAGE_NAME_LENGTH:
        return [f"package_name: {name!r} is {len(name)} characters long; accepted: {accepted}"]
    return []


def check_database_url(answers: dict) -> Report:
    url, notices = database_url.normalise(str(answers["database_url"]))
    return Report(database_url.problems(url), notices)


# Each number answer: how it is read, its lowest and highest values, and what is accepted.
NUMBER_ANSWERS = {
    "pool_size": (
        parse_integer, 1, MAX_COUNT,
        f"a whole number from 1 to {MAX_COUNT} (0 would mean no limit to SQLAlchemy)",
    ),
    "max_overflow": (
        parse_integer, -1, MAX_COUNT, f"a whole number from 0 to {MAX_COUNT}, or -1 for no limit"
    ),
    "pool_timeout": (
        parse_seconds, 0, MAX_SECONDS, f"seconds above 0, at most {MAX_SECONDS} (a week)"
    ),
    "pool_recycle": (
        parse_integer, -1, MAX_SECONDS,
        f"seconds from 0 to {MAX_SECONDS} (a week; 86400 is a day), or -1 for never",
    ),
    "workers": (parse_integer, 1, MAX_COUNT, f"a whole number from 1 to {MAX_COUNT}"),
    "db_max_connections": (
        parse_integer, SUPERUSER_RESERVED_CONNECTIONS + 1, MAX_SERVER_CONNECTIONS,
        "the PostgreSQL server's max_connections, a whole number from "
        f"{SUPERUSER_RESERVED_CONNECTIONS + 1} to {MAX_SERVER_CONNECTIONS} (PostgreSQL's limit)",
    ),
}  # fmt: skip


def parse_number(name: str, answers: dict):
    """The number answered for ``name`` and None, or None and the problem line about it."""
    parse, low, high, accepted = NUMBER_ANSWERS[name]
    return parse(name, answers[name], low, high, accepted)


def number(name: str) -> Callable[[dict], Report]:
    def check(answers: dict) -> Report:
        _, problem = parse_number(name, answers)
        return Report([problem] if problem else [], [])

    return check


def check_max_overflow(answers: dict) -> Report:
    report = number("max_overflow")(answers)
    if parse_number("max_overflow", answers)[0] == -1:
        report.notices.append(
            "Warning: max_overflow -1 means no limit: under load each worker opens as many "
            "connections as it has requests waiting, bounded only by the database server"
        )
    return report


def parse_boolean(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    return BOOLEAN_WORDS.get(str(value).strip().lower())


def yes_or_no(name: str) -> Callable[[dict], Report]:
    def check(answers: dict) -> Report:
        if parse_boolean(answers[name]) is None:
            shown = repr(str(answers[name]))
            return Report([f"{name}: {shown} is not yes or no; accepted: yes, no"], [])
        return Report([], [])

    return check


def check_connection_pooler(answers: dict) -> Report:
    """The pooler, and the connection budget, which needs it and every answer before it."""
    pooler = str(answers.get("connection_pooler", "none"))
    url, _ = database_url.normalise(str(answers["database_url"]))
    if pooler not in ("none", "pgbouncer"):
        problem = f"connection_pooler: {pooler!r} is not a choice; accepted: none, pgbouncer"
        return Report([problem], [])
    if pooler == "pgbouncer" and not url.startswith("postgresql"):
        problem = (
            "connection_pooler: pgbouncer sits in front of PostgreSQL; accepted: none for "
            "SQLite, or a postgresql+asyncpg:// database_url"
        )
        return Report([problem], [])
    if pooler == "pgbouncer":
        notice = (
            "connection budget: behind PgBouncer the app's connections count against its "
            "max_client_conn; PgBouncer's default_pool_size is what reaches max_connections"
        )
        return Report([], [notice])
    names = ("workers", "pool_size", "max_overflow", "db_max_connections")
    workers, pool_size, max_overflow, max_connections = (
        parse_number(name, answers)[0] for name in names
    )
    if None in (workers, pool_size, max_overflow, max_connections):
        return Report([], [])  # the number itself has been reported
    if database_url.problems(url) or not url.startswith("postgresql"):
        return Report([], [])
    # With no overflow limit, the pools held open must fit all the same.
    overflow = max(max_overflow, 0)
    return Report(budget_problems(workers, pool_size, overflow, max_connections), [])


def budget_problems(workers: int, pool_size: int, max_overflow: int, max_connections: int):
    needed = workers * (pool_size + max_overflow)
    available = max_connections - SUPERUSER_RESERVED_CONNECTIONS
    if needed <= available:
        return []
    return [
        f"connection budget: workers x (pool_size + max_overflow) = {workers} x "
        f"({pool_size} + {max_overflow}) = {needed} connections, but a server with "
        f"db_max_connections={max_connections} has {max(available, 0)} for applications "
        f"({SUPERUSER_RESERVED_CONNECTIONS} are reserved for superusers); accepted: at most "
        f"{max(available, 0)}: lower pool_size, max_overflow or workers, or raise "
        "db_max_connections if the server allows more"
    ]


# The checks of each answer, in the order cookiecutter asks for them. A check reads its
# own answer and the ones before it only, never a later one: it runs as soon as its
# answer is given (cookiecutter.json renders "__check_<name>" right after each prompt), so
# a check across answers, such as the connection budget, belongs to the last it reads.
ANSWER_CHECKS: dict[str, Callable[[dict], Report]] = {
    "project_name": check_project_name,
    "project_slug": lambda answers: Report(project_slug_problems(str(answers["project_slug"])), []),
    "package_name": lambda answers: Report(package_name_problems(str(answers["package_name"])), []),
    "description": one_line("description"),
    "author_name": one_line("author_name"),
    "author_email": check_author_email,
    "database_url": check_database_url,
    "pool_size": number("pool_size"),
    "max_overflow": check_max_overflow,
    "pool_timeout": number("pool_timeout"),
    "pool_recycle": number("pool_recycle"),
    "pool_pre_ping": yes_or_no("pool_pre_ping"),
    "workers": number("workers"),
    "db_max_connections": number("db_max_connections"),
    "connection_pooler": check_connection_pooler,
    "metrics": yes_or_no("metrics"),
}


def check_answer(name: str, answers: dict) -> Report:
    """The problems and notices that are known once ``name`` is answered.

    ``answers`` holds that answer and the ones asked before it (later ones may be missing).
    """
    return ANSWER_CHECKS[name](answers)


def check_answers(answers: dict) -> Report:
    """Every problem with the answers, and the notices worth telling the user."""
    report = Report([], [])
    for name in ANSWER_CHECKS:
        problems, notices = check_answer(name, answers)
        report.problems.extend(problems)
        report.notices.extend(notices)
    return report
