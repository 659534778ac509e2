"""The bake-time helpers in hooks/, tested directly."""

import ast
import json
import sys
import tomllib
from pathlib import Path

import pytest
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from hooks import database_url, replay
from hooks.env_file import write_env_file
from hooks.jinja_extension import python_string, toml_string
from hooks.validation import ANSWER_CHECKS, check_answer, check_answers

from .support import TEMPLATE_DIR, run

AWKWARD_TEXTS = [
    "plain",
    'O\'Connor "Q" Service',
    "ends with a backslash \\",
    "quotes \"\"\" and '''",
    "line\nbreak\ttab\x7fdel",
    "emoji 😀 and ünïcode",
    '5"; __import__("os").system("touch /tmp/pwned"); x="',
]


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_python_string_reads_back_unchanged(text: str) -> None:
    assert ast.literal_eval(python_string(text)) == text


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_toml_string_reads_back_unchanged(text: str) -> None:
    assert tomllib.loads(f"value = {toml_string(text)}")["value"] == text


@pytest.mark.parametrize(
    ("url", "public", "password"),
    [
        ("sqlite+aiosqlite:///./app.db", "sqlite+aiosqlite:///./app.db", None),
        (
            "postgresql+asyncpg://app:p%40ss%23w@db:5432/app",
            "postgresql+asyncpg://app@db:5432/app",
            "p%40ss%23w",
        ),
        ("postgresql+asyncpg://app@db/app", "postgresql+asyncpg://app@db/app", None),
        (
            "postgresql+asyncpg://a:pw@[::1]:5432/db?ssl=x",
            "postgresql+asyncpg://a@[::1]:5432/db?ssl=x",
            "pw",
        ),
        # Unencoded '@' in a password: SQLAlchemy cuts at the first '@', and so does this.
        ("postgresql+asyncpg://u:p@ss@h/db", "postgresql+asyncpg://u@ss@h/db", "p"),
    ],
)
def test_url_is_split_where_sqlalchemy_splits_it(url: str, public: str, password) -> None:
    parsed = database_url.parse(url)

    assert parsed.without_password == public
    assert parsed.password == password
    assert parsed.full == url
    if password and "@" not in parsed.host:
        assert make_url(url).password == make_url(parsed.full).password


def test_placeholder_replaces_only_a_password() -> None:
    with_password = database_url.parse("postgresql+asyncpg://app:secret@db/app")
    without_password = database_url.parse("postgresql+asyncpg://app@db/app")

    assert with_password.with_placeholder_password == "postgresql+asyncpg://app:change-me@db/app"
    assert without_password.with_placeholder_password == "postgresql+asyncpg://app@db/app"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pX7@qZ9:w0rd@h/db",
        "postgresql://u:pX7@qZ9/w0rd@h/db",
        "postgresql://u:pX7@qZ9?w0rd@h/db",
        "mysql://u:pX7@qZ9:w0rd@h/db",
    ],
)
def test_unencoded_at_is_refused_without_showing_any_part_of_the_password(url: str) -> None:
    problems, _ = check_answers(DEFAULT_ANSWERS | {"database_url": url})

    assert len(problems) == 1
    assert "more than one '@'" in problems[0]
    assert "%40" in problems[0]
    assert not any(fragment in problems[0] for fragment in ("pX7", "qZ9", "w0rd"))


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("ssl=require&target_session_attrs=primary", None),
        ("host=/var/run/postgresql", None),
        ("host=h1:5432&host=h2:5432&target_session_attrs=read-write", None),
        ("connect_timeout=10", None),
        ("application_name=svc&options=-c%20search_path%3Dapp", None),
        ("sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem&sslcert=c.crt&sslkey=c.key", None),
        ("sslmode=require&channel_binding=require", None),
        ("gssencmode=disable&sslcompression=0&client_encoding=UTF8", None),
        ("application_name=billing api@corp", None),  # the query may hold ' ' and '@'
        ("sslrootcert=system&sslnegotiation=direct", None),
        ("ssl=maybe", "ssl=maybe: accepted: true, false, or one of libpq's sslmode values"),
        ("channel_binding=require", "channel_binding=require needs TLS"),
        ("sslmode=prefer&channel_binding=require", "channel_binding=require needs TLS"),
        ("sslcert=c.crt&sslpassword=Zx9secret", "sslpassword: a passphrase in the URL would"),
        ("ssl_min_protocol_version=TLSv1.3&ssl_max_protocol_version=TLSv1.2", "no TLS version"),
        ("sslnegotiation=direct", "sslnegotiation=direct needs sslmode=require"),
        ("sslcertmode=require", "sslcertmode=require: remove it"),
        ("prepared_statement_cache_size=abc", "prepared_statement_cache_size=abc: accepted"),
        ("host=h1:5432&host=h2", "host: give a port with every host or with none"),
        ("sslmode=required", "sslmode=required: accepted: disable, allow,"),
        ("connect_timeout=0", "connect_timeout=0: accepted: seconds above 0"),
        ("connect_timeout=ten", "connect_timeout=ten: accepted: seconds above 0"),
        ("sslrootcert=system&sslmode=require", "sslrootcert=system needs sslmode=verify-full"),
        ("options=-E", "options=-E: accepted: -c name=value switches"),
        ("client_encoding=LATIN1", "client_encoding=LATIN1: asyncpg speaks UTF8 only"),
        ("gssencmode=require", "gssencmode=require: asyncpg cannot encrypt with GSSAPI"),
        ("keepalives_idle=30", "keepalives_idle=30: remove it: asyncpg sets no TCP keepalives"),
        ("target_session_attrs=master", "target_session_attrs=master: accepted: any,"),
        ("pgbouncer=true", "pgbouncer=true: remove it (a Prisma setting); for PgBouncer set"),
        ("sslmode=require&sslmode=disable", "sslmode is given 2 times; give it once"),
        ("sslmod=require", "sslmod=require: remove it: not a connection parameter this app knows"),
    ],
)
def test_url_parameters_are_honoured_or_refused_in_one_line(query: str, problem) -> None:
    """The baked app's own reading (connection_parameters.py) decides; see its tests."""
    url = f"postgresql+asyncpg://app@db/app?{query}"

    problems, _ = check_answers(DEFAULT_ANSWERS | {"database_url": url})

    if problem is None:
        assert problems == []
    else:
        (line,) = problems
        assert line.startswith("database_url: ")
        assert problem in line
        assert "Zx9secret" not in line


def test_parameters_asyncpg_cannot_honour_but_that_only_harden_are_dropped_with_a_note():
    url, notices = database_url.normalise(
        "postgresql://app@db/app?sslmode=require&channel_binding=require"
    )

    assert url == "postgresql+asyncpg://app@db/app?sslmode=require&channel_binding=require"
    (note,) = [notice for notice in notices if "channel_binding" in notice]
    assert note.startswith("database_url: channel_binding=require is dropped:")
    assert "sslmode=verify-full" in note


@pytest.mark.parametrize(
    ("typed", "used"),
    [
        ("postgresql://u@h/db?ssl=true", "postgresql+asyncpg://u@h/db?ssl=true"),
        ("postgres://u:pw@h/db", "postgresql+asyncpg://u:pw@h/db"),
        ("postgresql://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db?sslmode=require", "postgresql+asyncpg://u@h/db?sslmode=require"),
        ("sqlite:///./app.db", "sqlite+aiosqlite:///./app.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_common_url_forms_are_normalised_with_a_notice(typed: str, used: str) -> None:
    url, notices = database_url.normalise(typed)

    assert url == used
    assert bool(notices) is (typed != used)


DEFAULT_ANSWERS = {
    "project_name": "My Service",
    "project_slug": "my-service",
    "package_name": "my_service",
    "description": "A service.",
    "author_name": "Your Name",
    "author_email": "you@example.com",
    "database_url": "sqlite+aiosqlite:///./app.db",
    "pool_size": "5",
    "max_overflow": "10",
    "pool_timeout": "30",
    "pool_recycle": "1800",
    "pool_pre_ping": True,
    "workers": "1",
    "db_max_connections": "100",
    "connection_pooler": "none",
    "use_alembic": True,
    "metrics": True,
}
POSTGRES = {"database_url": "postgresql+asyncpg://app@db/app"}
# 16 workers x (200 + 100) = 4800 connections of a server's 5000.
BIG_SERVER = POSTGRES | {
    "db_max_connections": "5000", "workers": "16", "pool_size": "200", "max_overflow": "100"
}  # fmt: skip


def test_default_answers_have_no_problems() -> None:
    assert check_answers(DEFAULT_ANSWERS) == ([], [])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"pool_size": "0"}, "pool_size: 0 is out of range"),
        ({"pool_size": "5.5"}, "pool_size: '5.5' is not a whole number"),
        ({"max_overflow": "-2"}, "max_overflow: -2 is out of range"),
        ({"pool_timeout": "inf"}, "pool_timeout: 'inf' is not a number"),
        ({"pool_size": "\u0665"}, "pool_size: '\u0665' is not a whole number"),
        ({"pool_pre_ping": "maybe"}, "pool_pre_ping: 'maybe' is not yes or no"),
        ({"metrics": "perhaps"}, "metrics: 'perhaps' is not yes or no"),
        ({"db_max_connections": "3"}, "db_max_connections: 3 is out of range"),
        ({"project_name": "Line\u2028separator"}, "project_name: 'Line\\u2028separator' has a"),
        ({"pool_recycle": "-5"}, "pool_recycle: -5 is out of range"),
        ({"pool_recycle": "604801"}, "pool_recycle: 604801 is out of range"),
        ({"pool_timeout": "604801"}, "pool_timeout: 604801 is out of range"),
        ({"pool_size": "10001"}, "pool_size: 10001 is out of range"),
        ({"db_max_connections": "262144"}, "db_max_connections: 262144 is out of range"),
        ({"package_name": "class"}, "package_name: 'class' is a Python keyword"),
        ({"package_name": "asyncio"}, "package_name: 'asyncio' would shadow"),
        ({"package_name": "a" * 41}, f"package_name: '{'a' * 41}' is 41 characters long"),
        ({"project_slug": "../evil"}, "project_slug: '../evil' is not a valid project name"),
        ({"project_name": "x" * 81}, "project_name: "),
        (POSTGRES | {"workers": "8"}, "connection budget: workers x (pool_size + max_overflow)"),
        ({"connection_pooler": "pgbouncer"}, "connection_pooler: pgbouncer sits in front of"),
    ],
)
def test_each_bad_answer_gets_a_line_naming_it(answer: dict, expected: str) -> None:
    problems, _ = check_answers(DEFAULT_ANSWERS | answer)

    assert len(problems) == 1
    assert problems[0].startswith(expected)
    assert "accepted:" in problems[0]


@pytest.mark.parametrize(
    "answer",
    [
        {"pool_recycle": "14400"},
        {"pool_recycle": "86400"},
        {"pool_recycle": "604800"},
        {"pool_recycle": "-1"},
        {"pool_timeout": "3600"},
        {"pool_timeout": "0.25"},
        {"pool_size": "10000", "max_overflow": "10000", "workers": "10000"},
        {"db_max_connections": "262143"},
        BIG_SERVER,
    ],
    ids=lambda answer: " ".join(f"{name}={value}" for name, value in answer.items()),
)
def test_values_used_in_production_are_accepted(answer: dict) -> None:
    assert check_answers(DEFAULT_ANSWERS | answer) == ([], [])


def test_budget_line_shows_the_arithmetic() -> None:
    answers = POSTGRES | {"workers": "4", "pool_size": "20", "db_max_connections": "50"}

    problems, _ = check_answers(DEFAULT_ANSWERS | answers)

    assert "= 4 x (20 + 10) = 120 connections" in problems[0]
    assert "db_max_connections=50 has 47 for applications" in problems[0]


def test_behind_pgbouncer_the_server_budget_is_pgbouncers_to_keep() -> None:
    answers = POSTGRES | {"workers": "8", "connection_pooler": "pgbouncer"}

    problems, notices = check_answers(DEFAULT_ANSWERS | answers)

    assert problems == []
    assert any("max_client_conn" in notice for notice in notices)


def test_budget_fits_exactly_at_the_limit() -> None:
    answers = POSTGRES | {"workers": "97", "pool_size": "1", "max_overflow": "0"}

    assert check_answers(DEFAULT_ANSWERS | answers).problems == []


def test_unlimited_overflow_still_needs_the_pools_held_open_to_fit() -> None:
    answers = POSTGRES | {"max_overflow": "-1", "workers": "50", "pool_size": "100"}

    problems, _ = check_answers(DEFAULT_ANSWERS | answers)

    assert "= 50 x (100 + 0) = 5000 connections" in problems[0]


def test_unlimited_overflow_is_accepted_with_a_warning() -> None:
    problems, notices = check_answers(DEFAULT_ANSWERS | POSTGRES | {"max_overflow": "-1"})

    assert problems == []
    assert any("no limit" in notice for notice in notices)


def test_every_problem_is_reported_not_only_the_first() -> None:
    problems, _ = check_answers(DEFAULT_ANSWERS | {"pool_size": "x", "pool_timeout": "-1"})

    assert [line.split(":")[0] for line in problems] == ["pool_size", "pool_timeout"]


COOKIECUTTER_JSON = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
PROMPTED = [key for key in COOKIECUTTER_JSON if not key.startswith("_")]


def test_cookiecutter_json_checks_each_answer_right_after_its_prompt() -> None:
    """cookiecutter renders a "__" key where it stands among the prompts, so a check placed
    right after its variable runs right after that prompt. Dict variables are asked after
    every other one, so none of them may have a check of its own.
    """
    keys = list(COOKIECUTTER_JSON)

    assert [name for name in PROMPTED if name in ANSWER_CHECKS] == list(ANSWER_CHECKS)
    for name in ANSWER_CHECKS:
        check = keys[keys.index(name) + 1]
        assert check == f"__check_{name}"
        assert COOKIECUTTER_JSON[check] == f"{{{{ cookiecutter | check_answer_now('{name}') }}}}"
        assert not isinstance(COOKIECUTTER_JSON[name], dict), name
    assert keys.index("__answers_checked") > keys.index(PROMPTED[-1])


@pytest.mark.parametrize(
    "answers",
    [
        DEFAULT_ANSWERS,
        DEFAULT_ANSWERS | POSTGRES | {"workers": "8"},
        DEFAULT_ANSWERS | POSTGRES | {"connection_pooler": "pgbouncer", "max_overflow": "-1"},
        DEFAULT_ANSWERS | {"connection_pooler": "pgbouncer", "pool_size": "x"},
    ],
    ids=["defaults", "over-budget", "pgbouncer", "sqlite-pgbouncer"],
)
def test_each_check_needs_only_its_answer_and_the_ones_asked_before(answers: dict) -> None:
    """What lets a check run right after its prompt, before later answers exist."""
    for name in ANSWER_CHECKS:
        asked = {key: answers[key] for key in PROMPTED[: PROMPTED.index(name) + 1]}

        assert check_answer(name, asked) == check_answer(name, answers), name


def test_budget_is_checked_with_the_last_answer_it_needs() -> None:
    answers = DEFAULT_ANSWERS | POSTGRES | {"workers": "8"}

    found = {name: check_answer(name, answers).problems for name in ANSWER_CHECKS}

    assert [name for name, problems in found.items() if problems] == ["connection_pooler"]
    assert found["connection_pooler"][0].startswith("connection budget: ")


def test_replay_redaction_drops_the_password_from_answers_and_defaults(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:hunter2@db/app"
    replay_file = tmp_path / "template.json"
    replay_file.write_text(
        json.dumps({"cookiecutter": {"database_url": url}, "_cookiecutter": {"database_url": url}})
    )

    assert replay.redact(replay_file)

    assert "hunter2" not in replay_file.read_text()
    assert json.loads(replay_file.read_text())["cookiecutter"]["database_url"] == (
        "postgresql+asyncpg://app@db/app"
    )
    assert not replay.redact(replay_file)


def test_template_code_is_ruff_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"

    for command in (["check"], ["format", "--check"]):
        result = run(ruff, *command, "--no-cache", ".", cwd=TEMPLATE_DIR)
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "password",
    ["p%40ss%23w%24rd", "it's", 'say "hi"', "a b #c", "${HOME}", "back\\slash", "tick`"],
)
def test_env_file_gives_the_url_back_to_dotenv_and_sqlalchemy(tmp_path: Path, password: str):
    url = f"postgresql+asyncpg://o'brien:{password}@db:5432/app's db"

    assert write_env_file(tmp_path, url)

    # The parsers the baked app reads it with: pydantic-settings' python-dotenv, SQLAlchemy.
    read_back = make_url(dotenv_values(tmp_path / ".env")["DATABASE_URL"])
    assert read_back.password == make_url(url).password
    assert (read_back.username, read_back.database) == ("o'brien", "app's db")


def test_env_file_keeps_other_settings_and_is_never_readable_by_others(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET_KEY=abc\nDATABASE_URL=old\nPOOL_SIZE=7\n")
    env_file.chmod(0o644)

    write_env_file(tmp_path, "postgresql+asyncpg://app:new@db/app")

    assert dotenv_values(env_file) == {
        "SECRET_KEY": "abc",
        "POOL_SIZE": "7",
        "DATABASE_URL": "postgresql+asyncpg://app:new@db/app",
    }
    assert env_file.stat().st_mode & 0o077 == 0
