"""The baked project's containers, CI and git setup, and the template's own uv setup:
what can be checked without Docker.
"""

import ast
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from .support import TEMPLATE_DIR, bake_with_cli, run


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result, output = bake_with_cli(tmp_path_factory.mktemp("tooling"))
    assert result.returncode == 0, result.stdout + result.stderr
    return output / "my-service"


def settings_variables(project: Path) -> set[str]:
    """The environment variables the baked Settings read: its fields, in upper case."""
    tree = ast.parse((project / "src" / "my_service" / "settings.py").read_text())
    (settings,) = [node for node in tree.body if getattr(node, "name", "") == "Settings"]
    return {node.target.id.upper() for node in settings.body if isinstance(node, ast.AnnAssign)}


def test_compose_wires_postgres_and_the_app_through_settings_variables(project: Path):
    compose = yaml.safe_load((project / "compose.yaml").read_text())

    app, db = compose["services"]["app"], compose["services"]["db"]
    assert set(app["environment"]) <= settings_variables(project)
    assert app["environment"]["DATABASE_URL"].startswith("postgresql+asyncpg://app:")
    assert "@db:5432/app" in app["environment"]["DATABASE_URL"]
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert ":?" in db["environment"]["POSTGRES_PASSWORD"]  # required, never a default


def test_dockerfile_runs_the_app_the_way_readme_says(project: Path) -> None:
    dockerfile = (project / "Dockerfile").read_text()
    readme = (project / "README.md").read_text()

    (command,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    arguments = yaml.safe_load(command)
    assert arguments[:2] == ["uvicorn", "my_service.main:app"]
    assert " ".join(arguments[:6]) in readme
    assert re.search(r"^USER app$", dockerfile, re.MULTILINE)
    assert dockerfile.index("pip install .") < dockerfile.index("COPY src")


def test_ci_workflow_runs_the_commands_readme_gives(project: Path) -> None:
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    readme = (project / "README.md").read_text()

    (job,) = workflow["jobs"].values()
    commands = [step["run"] for step in job["steps"] if "run" in step]
    assert commands[1:] == [
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/pytest",
    ]
    for command in commands:
        assert command in readme, command
    assert job["services"]["postgres"]["image"].startswith("postgres")
    assert job["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_bake_creates_a_git_repository(project: Path) -> None:
    assert (project / ".git").is_dir()


def test_bake_without_git_init_creates_none(tmp_path: Path) -> None:
    result, output = bake_with_cli(tmp_path, "git_init=no")

    assert result.returncode == 0, result.stderr
    assert not (output / "my-service" / ".git").exists()


def test_bake_succeeds_when_git_is_missing(tmp_path: Path) -> None:
    """PATH holds only the interpreter's folder: cookiecutter, but no git."""
    path = os.environ["PATH"]
    os.environ["PATH"] = str(Path(os.sys.executable).parent)
    try:
        result, output = bake_with_cli(tmp_path)
    finally:
        os.environ["PATH"] = path

    assert result.returncode == 0, result.stderr
    assert "git is not installed" in result.stdout
    assert (output / "my-service" / "pyproject.toml").is_file()


def test_uv_lock_matches_the_template_dependencies() -> None:
    """`uv sync` installs what uv.lock pins: it must list what pyproject.toml asks for.

    Offline when it matches; after a change to the dependency groups, `uv lock` updates it.
    """
    uv = Path(sys.executable).parent / "uv"

    checked = run(uv, "lock", "--check", cwd=TEMPLATE_DIR, timeout=120)

    assert checked.returncode == 0, checked.stdout + checked.stderr + "\nRun `uv lock`."
