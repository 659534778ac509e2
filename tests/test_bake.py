"""Bakes that must succeed, and what every baked file must look like."""

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hooks.validation import NUMBER_ANSWERS, parse_seconds

from .support import TEMPLATE_DIR, bake_with_cli, run
from .variants import POSTGRES_PASSWORD, POSTGRES_URL_WITH_PASSWORD, VARIANTS

EXPECTED_FILES = [
    "pyproject.toml",
    "README.md",
    ".env.example",
    ".gitignore",
    ".dockerignore",
    ".pre-commit-config.yaml",
    ".github/workflows/ci.yml",
    "Dockerfile",
    "compose.yaml",
    "alembic.ini",
    "src/{package}/migrations/env.py",
    "src/{package}/migrations/versions/0001_create_items.py",
    "tests/test_migrations.py",
    "src/{package}/__init__.py",
    "src/{package}/settings.py",
    "src/{package}/database.py",
    "src/{package}/models.py",
    "src/{package}/schemas.py",
    "src/{package}/dependencies.py",
    "src/{package}/engine.py",
    "src/{package}/schema.py",
    "src/{package}/routers/items.py",
    "src/{package}/routers/health.py",
    "src/{package}/app.py",
    "src/{package}/main.py",
    "tests/conftest.py",
    "tests/support.py",
    "tests/test_items.py",
    "tests/test_health.py",
    "tests/pool/test_pool.py",
]
LEFTOVER_TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#|cookiecutter\.")
# ruff from the environment running these tests, whether or not it is on PATH.
RUFF = Path(sys.executable).parent / "ruff"


def bake(cookies, context: dict) -> Path:
    result = cookies.bake(extra_context=context)
    assert result.exit_code == 0, result.exception
    assert result.exception is None
    return result.project_path


def text_files(project: Path) -> list[Path]:
    """The files the template wrote (the git repository the bake creates is git's)."""
    return [
        path
        for path in sorted(project.rglob("*"))
        if path.is_file() and ".git" not in path.relative_to(project).parts
    ]


def test_defaults_bake_the_expected_project(cookies) -> None:
    project = bake(cookies, {})

    assert project.name == "my-service"
    for name in EXPECTED_FILES:
        assert (project / name.format(package="my_service")).is_file(), name


@pytest.mark.parametrize("context", VARIANTS)
def test_no_template_syntax_is_left_in_any_file(cookies, context: dict) -> None:
    project = bake(cookies, context)

    for path in text_files(project):
        leftover = LEFTOVER_TEMPLATE_SYNTAX.search(path.read_text(encoding="utf-8"))
        assert leftover is None, f"{path.relative_to(project)}: {leftover.group()!r}"


@pytest.mark.parametrize("context", VARIANTS)
def test_no_blank_line_debris_in_any_file(cookies, context: dict) -> None:
    project = bake(cookies, context)

    for path in text_files(project):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(project)
        # Two blank lines separate Python definitions, in a README's Python blocks too;
        # anywhere else one is the most.
        most_blank_lines = 2 if path.suffix in (".py", ".mako") else 1
        outside_python = re.sub(r"^```python\n.*?^```$", "(code)", text, flags=re.M | re.S)
        assert "\n" * (most_blank_lines + 2) not in outside_python, f"{where}: too many blank lines"
        assert "\n\n\n\n" not in text, f"{where}: too many blank lines"
        assert not text.startswith("\n"), f"{where}: starts with a blank line"
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{where}: bad file ending"
        assert not re.search(r"[ \t]+$", text, re.MULTILINE), f"{where}: trailing whitespace"


@pytest.mark.parametrize("context", VARIANTS)
def test_baked_code_is_ruff_clean(cookies, context: dict) -> None:
    project = bake(cookies, context)

    lint = run(RUFF, "check", "--no-cache", ".", cwd=project)
    assert lint.returncode == 0, lint.stdout
    formatting = run(RUFF, "format", "--check", "--no-cache", ".", cwd=project)
    assert formatting.returncode == 0, formatting.stdout


def test_unusual_answers_round_trip_into_pyproject(cookies) -> None:
    context = VARIANTS[-1].values[0]
    project = bake(cookies, context)

    metadata = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project.name == "o-connor-q-service"
    assert metadata["name"] == "o-connor-q-service"
    assert metadata["description"] == context["description"]
    assert metadata["authors"][0]["name"] == context["author_name"]
    assert (project / "src" / "o_connor_q_service" / "main.py").is_file()


@pytest.mark.parametrize("context", VARIANTS)
def test_every_variant_declares_the_same_dependencies(cookies, context: dict) -> None:
    """What lets the slow tests share one virtualenv between all variants honestly."""
    defaults = tomllib.loads((bake(cookies, {}) / "pyproject.toml").read_text())
    variant = tomllib.loads((bake(cookies, context) / "pyproject.toml").read_text())

    # A variant may leave a dependency out (alembic, prometheus-client) or ask for less of
    # one (an older FastAPI without metrics' traces), never add one: what the defaults
    # install satisfies it.
    default_requirements = {
        requirement.name: requirement
        for requirement in map(Requirement, defaults["project"]["dependencies"])
    }
    for requirement in map(Requirement, variant["project"]["dependencies"]):
        assert requirement.name in default_requirements, requirement
        default = default_requirements[requirement.name]
        assert default.extras == requirement.extras, requirement
        lower_bounds = [bound.version for bound in default.specifier]
        assert all(requirement.specifier.contains(v, prereleases=True) for v in lower_bounds)
    assert variant["dependency-groups"] == defaults["dependency-groups"]


def test_password_is_only_in_the_git_ignored_env_file(cookies) -> None:
    project = bake(cookies, {"database_url": POSTGRES_URL_WITH_PASSWORD})
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    tracked = run("git", "ls-files", cwd=project).stdout.split()

    assert ".env" not in tracked
    assert ".env.example" in tracked
    for name in tracked:
        assert POSTGRES_PASSWORD not in (project / name).read_text(encoding="utf-8"), name
    settings = (project / "src" / "my_service" / "settings.py").read_text(encoding="utf-8")
    assert '"postgresql+asyncpg://app:change-me@127.0.0.1:5432/app"' in settings
    env_file = project / ".env"
    assert POSTGRES_URL_WITH_PASSWORD in env_file.read_text(encoding="utf-8")
    assert env_file.stat().st_mode & 0o077 == 0, ".env must be readable by its owner only"


def test_without_metrics_no_metrics_or_tracing_code_or_dependency_is_left(cookies) -> None:
    project = bake(cookies, {"metrics": False})

    assert not (project / "src" / "my_service" / "metrics.py").exists()
    assert not (project / "tests" / "test_metrics.py").exists()
    assert not (project / "tests" / "pool" / "test_metrics.py").exists()
    assert not (project / "src" / "my_service" / "tracing.py").exists()
    assert not (project / "tests" / "test_tracing.py").exists()
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    for dependency in metadata["dependencies"]:
        assert not dependency.startswith(("prometheus", "opentelemetry")), dependency
    for path in (project / "src").rglob("*.py"):
        code = path.read_text(encoding="utf-8")
        assert "metrics" not in code and "import opentelemetry" not in code, path
        assert "from opentelemetry" not in code, path


def test_without_alembic_no_migration_files_are_left(cookies) -> None:
    project = bake(cookies, {"use_alembic": False})

    assert not (project / "alembic.ini").exists()
    assert not (project / "src" / "my_service" / "migrations").exists()
    assert not (project / "tests" / "test_migrations.py").exists()
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert not any(dependency.startswith("alembic") for dependency in metadata["dependencies"])
    schema = (project / "src" / "my_service" / "schema.py").read_text()
    assert "metadata.create_all" in schema and "alembic" not in schema


def test_url_without_password_writes_no_env_file(cookies) -> None:
    project = bake(cookies, {"database_url": "postgresql+asyncpg://app@db.internal:5432/app"})

    assert not (project / ".env").exists()
    assert "postgresql+asyncpg://app@db.internal:5432/app" in (
        project / "src" / "my_service" / "settings.py"
    ).read_text(encoding="utf-8")


# Each bad answer, what the one line about it must say, and nothing else going wrong.
POSTGRES = "database_url=postgresql+asyncpg://app@127.0.0.1:5432/app"
BAD_ANSWERS = [
    (["pool_size=0"], "pool_size: 0 is out of range; accepted: a whole number from 1"),
    (["pool_size=-1"], "pool_size: -1 is out of range"),
    (["pool_size=abc"], "pool_size: 'abc' is not a whole number"),
    (["pool_size=5.5"], "pool_size: '5.5' is not a whole number"),
    (["pool_size="], "pool_size: empty is not a whole number"),
    (["pool_size=100000"], "pool_size: 100000 is out of range; accepted: a whole number from 1 to"),
    (["max_overflow=-2"], "max_overflow: -2 is out of range; accepted: a whole number from 0"),
    (["max_overflow=lots"], "max_overflow: 'lots' is not a whole number"),
    (["pool_timeout=0"], "pool_timeout: 0 is out of range; accepted: seconds above 0"),
    (["pool_timeout=-3"], "pool_timeout: -3 is out of range"),
    (["pool_timeout=soon"], "pool_timeout: 'soon' is not a number"),
    (["pool_recycle=-2"], "pool_recycle: -2 is out of range; accepted: seconds from 0 to"),
    (["pool_recycle=1.5"], "pool_recycle: '1.5' is not a whole number"),
    (["pool_recycle=604801"], "pool_recycle: 604801 is out of range; accepted: seconds from 0 to"),
    (["pool_timeout=604800.5"], "pool_timeout: 604800.5 is out of range; accepted: seconds above"),
    (["db_max_connections=262144"], "db_max_connections: 262144 is out of range"),
    (["workers=0"], "workers: 0 is out of range"),
    (["db_max_connections=none"], "db_max_connections: 'none' is not a whole number"),
    (["database_url=mysql://app:hunter2@db/app"], "the driver 'mysql', which is not supported"),
    (["database_url=nonsense"], "database_url: 'nonsense' is not a database URL"),
    (["database_url=postgresql+asyncpg://app:hunter2@db:port/app"], "has the port 'port'"),
    (["database_url=postgresql+asyncpg://app:hunter2@db:5432"], "names no database"),
    (["database_url=postgresql+asyncpg://app:hun@ter2@db/app"], "has more than one '@'"),
    (["database_url=postgresql://app:hun@ter2:x@db/app"], "has more than one '@'"),
    (["database_url=postgresql://app@db/app?connect_timeout=0"], "connect_timeout=0: accepted"),
    (["database_url=postgresql://app@db/app?sslmode=requre"], "sslmode=requre: accepted:"),
    (["database_url=postgresql://app@db/app?keepalives=1"], "keepalives=1: remove it"),
    (["pool_size=\u0665"], "pool_size: '\u0665' is not a whole number"),
    (["db_max_connections=3"], "db_max_connections: 3 is out of range"),
    (["database_url=postgresql+asyncpg://app@db/app?password=hunter2"], "password: it would be"),
    (["database_url=sqlite+aiosqlite://db/app.db"], "names a host, which SQLite has none of"),
    (["database_url="], "database_url: it is empty"),
    (["package_name=class"], "package_name: 'class' is a Python keyword"),
    (["package_name=fastapi"], "package_name: 'fastapi' would shadow"),
    (["package_name=test"], "package_name: 'test' would shadow"),
    (["package_name=asyncio"], "package_name: 'asyncio' would shadow"),
    (["package_name=my-pkg"], "package_name: 'my-pkg' is not a valid package name"),
    (["project_name=123 Service"], "package_name: '123_service' is not a valid package name"),
    (["project_slug=../evil"], "project_slug: '../evil' is not a valid project name"),
    (["author_email=nobody"], "author_email: 'nobody' is not an email address"),
    (["project_name=Two\nLines"], "project_name: 'Two\\nLines' has a line break"),
    (
        [POSTGRES, "workers=8"],
        "connection budget: workers x (pool_size + max_overflow) = 8 x (5 + 10) = 120 connections",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answers", "expected"), BAD_ANSWERS, ids=[" ".join(answers) for answers, _ in BAD_ANSWERS]
)
def test_bad_answer_is_rejected_with_one_clear_line_and_leaves_nothing(
    tmp_path: Path, answers: list[str], expected: str
) -> None:
    result, output = bake_with_cli(tmp_path, *[a.replace("\\n", "\n") for a in answers])

    printed = result.stdout + result.stderr
    assert result.returncode == 1
    assert expected in printed
    assert "Traceback" not in printed
    assert "hunter2" not in printed and "ter2" not in printed
    assert list(output.iterdir()) == []
    assert not (tmp_path / "home" / ".cookiecutter_replay").exists()


def test_every_bad_answer_is_reported_in_one_run(tmp_path: Path) -> None:
    """With --no-input there is no prompt to stop at: every problem, in the prompts' order."""
    answers = ["pool_size=0", "max_overflow=x", "pool_timeout=0", "database_url=mysql://u@h/d"]
    result, output = bake_with_cli(tmp_path, *answers)

    problems = [line.split(":")[0] for line in result.stdout.splitlines()[1:] if line]
    assert problems == ["database_url", "pool_size", "max_overflow", "pool_timeout"]
    assert list(output.iterdir()) == []


@pytest.mark.parametrize(
    "answers",
    [
        ["pool_recycle=14400"],
        ["pool_recycle=86400", "pool_timeout=3600"],
        [POSTGRES, "db_max_connections=5000", "workers=16", "pool_size=200", "max_overflow=100"],
    ],
    ids=["recycle-4h", "recycle-1d-timeout-1h", "big-server"],
)
def test_settings_used_in_production_bake(tmp_path: Path, answers: list[str]) -> None:
    result, output = bake_with_cli(tmp_path, *answers)

    assert result.returncode == 0, result.stdout + result.stderr
    settings = (output / "my-service" / "src" / "my_service" / "settings.py").read_text()
    for answer in answers:
        name, value = answer.split("=", 1)
        if name in ("pool_recycle", "pool_size", "max_overflow", "workers"):
            assert re.search(rf"{name}: int = Field\(default={value},", settings), answer


def field_bounds(settings_py: str) -> dict[str, dict[str, float]]:
    """The ge/gt/le bounds of each Field in the baked settings.py, its constants evaluated."""
    tree = ast.parse(settings_py)
    constants: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.BinOp)):
            names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            value = eval(compile(ast.Expression(node.value), "settings.py", "eval"), {}, constants)
            constants.update(dict.fromkeys(names, value))
    bounds = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call):
            keywords = {
                keyword.arg: eval(compile(ast.Expression(keyword.value), "", "eval"), {}, constants)
                for keyword in node.value.keywords
                if keyword.arg in ("ge", "gt", "le")
            }
            bounds[node.target.id] = keywords
    return bounds


def test_the_baked_settings_accept_exactly_the_numbers_the_bake_accepts(tmp_path: Path):
    """A value the bake accepts must not stop the app at start, nor the other way round."""
    result, output = bake_with_cli(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    settings = (output / "my-service" / "src" / "my_service" / "settings.py").read_text()

    bounds = field_bounds(settings)
    for name, (parse, low, high, _) in NUMBER_ANSWERS.items():
        if name == "db_max_connections":  # the server's, checked at startup against the server
            continue
        lowest = {"gt": low} if parse is parse_seconds else {"ge": low}
        assert bounds[name] == lowest | {"le": high}, name


# The variables cookiecutter prompts for, in order: the stdin lines of an interactive bake.
PROMPTED = [
    key
    for key in json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    if not key.startswith("_")
]


def bake_interactively(tmp_path: Path, **typed: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Answer cookiecutter's prompts through stdin as a user does: ``typed`` at the prompts
    it names, Enter (the default) at the others; stdout and stderr in one stream, in order.
    """
    output = tmp_path / "out"
    output.mkdir()
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    # A wide terminal, so that rich does not wrap a prompt across lines.
    env = os.environ | {"HOME": str(tmp_path / "home"), "COLUMNS": "300"}
    env.pop("COOKIECUTTER_CONFIG", None)
    result = subprocess.run(
        [str(cookiecutter), str(TEMPLATE_DIR), "-o", str(output)],
        input="".join(typed.get(name, "") + "\n" for name in PROMPTED),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return result, output


def prompt_number(name: str) -> str:
    """How cookiecutter numbers the prompt for ``name``: [8/17]."""
    return f"[{PROMPTED.index(name) + 1}/{len(PROMPTED)}]"


@pytest.mark.parametrize(
    ("typed", "expected", "asked_last"),
    [
        ({"project_name": "123 Service"}, "package_name: '123_service' is not", "package_name"),
        (
            {"database_url": "mysql://app:hunter2@db/app"},
            "database_url: 'mysql://app:***@db/app' uses the driver 'mysql'",
            "database_url",
        ),
        ({"pool_size": "0"}, "pool_size: 0 is out of range; accepted: a whole", "pool_size"),
        ({"pool_recycle": "1.5"}, "pool_recycle: '1.5' is not a whole number", "pool_recycle"),
        (
            {"database_url": "postgresql+asyncpg://app@127.0.0.1:5432/app", "workers": "8"},
            "connection budget: workers x (pool_size + max_overflow) = 8 x (5 + 10) = 120",
            "connection_pooler",
        ),
    ],
    ids=["package_name", "database_url", "pool_size", "pool_recycle", "connection-budget"],
)
def test_bad_answer_at_a_prompt_is_reported_before_the_next_prompt(
    tmp_path: Path, typed: dict, expected: str, asked_last: str
) -> None:
    result, output = bake_interactively(tmp_path, **typed)

    next_prompt = prompt_number(PROMPTED[PROMPTED.index(asked_last) + 1])
    assert result.returncode == 1, result.stdout
    assert prompt_number(asked_last) in result.stdout
    assert expected in result.stdout
    assert next_prompt not in result.stdout
    assert "Traceback" not in result.stdout and "hunter2" not in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if "accepted:" in line]
    assert line.startswith(expected)
    assert list(output.iterdir()) == []
    assert not (tmp_path / "home" / ".cookiecutter_replay").exists()


def test_notice_about_an_answer_follows_its_prompt(tmp_path: Path) -> None:
    typed = {"database_url": "postgres://app@db:5432/app", "pool_recycle": "14400"}
    result, output = bake_interactively(tmp_path, **typed)

    assert result.returncode == 0, result.stdout
    notice = result.stdout.index("database_url: postgres:// is used as postgresql+asyncpg://")
    assert result.stdout.index(prompt_number("database_url")) < notice
    assert notice < result.stdout.index(prompt_number("pool_size"))
    settings = (output / "my-service" / "src" / "my_service" / "settings.py").read_text()
    assert '"postgresql+asyncpg://app@db:5432/app"' in settings
    assert "default=14400," in settings


def test_unlimited_overflow_bakes_with_a_warning(tmp_path: Path) -> None:
    result, output = bake_with_cli(tmp_path, "max_overflow=-1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "max_overflow -1 means no limit" in result.stderr
    assert (output / "my-service" / "pyproject.toml").is_file()


@pytest.mark.parametrize(
    ("typed", "used"),
    [
        ("postgres://app:hunter2@db:5432/app", "postgresql+asyncpg://app:change-me@db:5432/app"),
        (
            "postgresql://app@db/app?sslmode=require&connect_timeout=10",
            "postgresql+asyncpg://app@db/app?sslmode=require&connect_timeout=10",
        ),
        ("postgresql+psycopg://app@db/app", "postgresql+asyncpg://app@db/app"),
        ("sqlite:///./data/app.db", "sqlite+aiosqlite:///./data/app.db"),
    ],
)
def test_common_url_forms_bake_with_the_async_driver(tmp_path: Path, typed: str, used: str):
    result, output = bake_with_cli(tmp_path, f"database_url={typed}")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"is used as {used.split(':')[0]}://" in result.stderr
    settings = (output / "my-service" / "src" / "my_service" / "settings.py").read_text()
    assert f'"{used}"' in settings


def test_replay_file_keeps_no_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:hunter2@127.0.0.1:5432/app"
    result, output = bake_with_cli(tmp_path, f"database_url={url}")

    assert result.returncode == 0, result.stdout + result.stderr
    (replay_file,) = (tmp_path / "home" / ".cookiecutter_replay").iterdir()
    assert f"Removed the database password from cookiecutter's replay file {replay_file}" in (
        result.stdout
    )
    assert "hunter2" not in replay_file.read_text()
    assert "postgresql+asyncpg://app@127.0.0.1:5432/app" in replay_file.read_text()
    assert "hunter2" in (output / "my-service" / ".env").read_text()


def test_replay_file_keeps_no_password_when_the_bake_fails_late(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:hunter2@127.0.0.1:5432/app"
    first, _ = bake_with_cli(tmp_path, f"database_url={url}")
    assert first.returncode == 0, first.stdout + first.stderr

    # The same bake again fails after the answers were saved, before any hook runs.
    second, _ = bake_with_cli(tmp_path, f"database_url={url}")

    assert second.returncode == 1
    assert "already exists" in second.stdout
    assert "Removed the database password" in second.stdout
    (replay_file,) = (tmp_path / "home" / ".cookiecutter_replay").iterdir()
    assert "hunter2" not in replay_file.read_text()


def test_injected_answers_never_run(cookies, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    payload = f'5"; __import__("pathlib").Path({str(marker)!r}).touch(); x="'
    context = {
        "project_name": 'Svc 5"; __import__("os").getcwd(); x="',
        "project_slug": "injected",
        "package_name": "injected",
        "description": payload,
        "author_name": payload,
    }

    project = bake(cookies, context)

    assert not marker.exists()
    for path in project.rglob("*.py"):
        names = {
            node.id for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Name)
        }
        assert "__import__" not in names, f"{path.relative_to(project)} runs the answer"
    metadata = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert metadata["description"] == payload
