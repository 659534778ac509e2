"""The bake-time helpers in hooks/, tested directly."""

import ast
import sys
import tomllib
from pathlib import Path

import pytest
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from hooks import database_url
from hooks.env_file import write_env_file
from hooks.jinja_filters import python_string, toml_string
from hooks.validation import check_answers

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
        # Unencoded '@' in a password: SQLAlchemy cuts at the first '@', and so does this.
        ("postgresql+asyncpg://u:p@ss@h/db", "postgresql+asyncpg://u@ss@h/db", "p"),
    ],
)
def test_url_is_split_where_sqlalchemy_splits_it(url: str, public: str, password) -> None:
    parsed = database_url.parse(url)

    assert parsed.without_password == public
    assert parsed.password == password


def test_placeholder_replaces_only_a_password() -> None:
    with_password = database_url.parse("postgresql+asyncpg://app:secret@db/app")
    without_password = database_url.parse("postgresql+asyncpg://app@db/app")

    assert with_password.with_placeholder_password == "postgresql+asyncpg://app:change-me@db/app"
    assert without_password.with_placeholder_password == "postgresql+asyncpg://app@db/app"


DEFAULT_ANSWERS = {
    "package_name": "my_service",
    "database_url": "sqlite+aiosqlite:///./app.db",
    "pool_size": "5",
    "max_overflow": "10",
    "pool_timeout": "30",
    "pool_recycle": "1800",
}


def test_default_answers_have_no_problems() -> None:
    assert check_answers(DEFAULT_ANSWERS) == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"pool_size": "0"}, "pool_size: 0 is out of range"),
        ({"pool_size": "abc"}, "pool_size: 'abc' is not a whole number"),
        ({"max_overflow": "-2"}, "max_overflow: -2 is out of range"),
        ({"pool_timeout": "0"}, "pool_timeout: 0 is out of range"),
        ({"pool_recycle": "-5"}, "pool_recycle: -5 is out of range"),
        ({"database_url": "mysql+aiomysql://u@h/db"}, "database_url: the driver 'mysql+aiomysql'"),
        ({"database_url": "nonsense"}, "database_url: 'nonsense' is not a database URL"),
        ({"package_name": "class"}, "package_name: 'class' is not a valid package name"),
        ({"package_name": "123_service"}, "package_name: '123_service' is not a valid"),
        ({"package_name": "my-pkg"}, "package_name: 'my-pkg' is not a valid package name"),
        ({"package_name": "a" * 41}, f"package_name: '{'a' * 41}' is 41 characters long"),
    ],
)
def test_each_bad_answer_gets_a_line_naming_it(answer: dict, expected: str) -> None:
    problems = check_answers(DEFAULT_ANSWERS | answer)

    assert len(problems) == 1
    assert problems[0].startswith(expected)
    assert "accepted:" in problems[0]


def test_every_problem_is_reported_not_only_the_first() -> None:
    problems = check_answers(DEFAULT_ANSWERS | {"pool_size": "x", "pool_timeout": "-1"})

    assert [line.split(":")[0] for line in problems] == ["pool_size", "pool_timeout"]


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
    url = f"postgresql+asyncpg://app:{password}@db:5432/app"

    assert write_env_file(tmp_path, url)

    # The parsers the baked app reads it with: pydantic-settings' python-dotenv, SQLAlchemy.
    read_back = dotenv_values(tmp_path / ".env")["DATABASE_URL"]
    assert make_url(read_back).password == make_url(url).password
