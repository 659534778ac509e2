"""Bakes that must succeed, and what every baked file must look like."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .support import TEMPLATE_DIR, run
from .variants import POSTGRES_PASSWORD, POSTGRES_URL_WITH_PASSWORD, VARIANTS

EXPECTED_FILES = [
    "pyproject.toml",
    "README.md",
    ".env.example",
    ".gitignore",
    "src/{package}/__init__.py",
    "src/{package}/settings.py",
    "src/{package}/database.py",
    "src/{package}/models.py",
    "src/{package}/schemas.py",
    "src/{package}/routes.py",
    "src/{package}/health.py",
    "src/{package}/app.py",
    "src/{package}/main.py",
    "tests/conftest.py",
    "tests/support.py",
    "tests/test_items.py",
    "tests/test_health.py",
    "tests/test_pool.py",
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
    return [path for path in sorted(project.rglob("*")) if path.is_file()]


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
        # Two blank lines separate Python definitions; anywhere else one is the most.
        most_blank_lines = 2 if path.suffix == ".py" else 1
        assert "\n" * (most_blank_lines + 2) not in text, f"{where}: too many blank lines"
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
    defaults = tomllib.loads((bake(cookies, {}) / "pyproject.toml").read_text())["project"]
    variant = tomllib.loads((bake(cookies, context) / "pyproject.toml").read_text())["project"]

    assert variant["dependencies"] == defaults["dependencies"]
    assert variant["optional-dependencies"] == defaults["optional-dependencies"]


def test_password_is_only_in_the_git_ignored_env_file(cookies) -> None:
    project = bake(cookies, {"database_url": POSTGRES_URL_WITH_PASSWORD})
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    tracked = run("git", "ls-files", cwd=project).stdout.split()

    assert ".env" not in tracked
    assert ".env.example" in tracked
    for name in tracked:
        assert POSTGRES_PASSWORD not in (project / name).read_text(encoding="utf-8"), name
    env_file = project / ".env"
    assert POSTGRES_URL_WITH_PASSWORD in env_file.read_text(encoding="utf-8")
    assert env_file.stat().st_mode & 0o077 == 0, ".env must be readable by its owner only"


def test_url_without_password_writes_no_env_file(cookies) -> None:
    project = bake(cookies, {"database_url": "postgresql+asyncpg://app@db.internal:5432/app"})

    assert not (project / ".env").exists()
    assert "postgresql+asyncpg://app@db.internal:5432/app" in (
        project / "src" / "my_service" / "settings.py"
    ).read_text(encoding="utf-8")


def bake_with_cli(tmp_path: Path, *answers: str):
    """Bake as a user does, with the cookiecutter command; replay files stay in tmp_path."""
    config = tmp_path / "config.yaml"
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path / 'cc'}\n")
    output = tmp_path / "out"
    output.mkdir()
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    result = run(
        cookiecutter, TEMPLATE_DIR, "--no-input", "--config-file", config, "-o", output, *answers
    )
    return result, output


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("pool_size=0", "pool_size: 0 is out of range"),
        ("max_overflow=lots", "max_overflow: 'lots' is not a whole number"),
        ("database_url=mysql://u@h/db", "database_url: the driver 'mysql'"),
    ],
)
def test_bad_answer_is_rejected_and_leaves_no_project(
    tmp_path: Path, answer: str, expected: str
) -> None:
    result, output = bake_with_cli(tmp_path, answer)

    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert list(output.iterdir()) == []


def test_injected_answers_never_run(cookies, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    payload = f'5"; __import__("pathlib").Path({str(marker)!r}).touch(); x="'
    context = {
        "project_name": f"Svc {payload}",
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
