"""The baked project's containers, CI and git setup, and the template's own uv setup:
what can be checked without Docker.
"""

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from hooks.git_repo import COMMIT_MESSAGE

from .support import TEMPLATE_DIR, bake_with_cli, run
from .variants import POSTGRES_URL_WITH_PASSWORD


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A bake with the defaults, as the command prints it, and the project's folder."""
    result, output = bake_with_cli(tmp_path_factory.mktemp("tooling"))
    assert result.returncode == 0, result.stdout + result.stderr
    return result, output / "my-service"


@pytest.fixture(scope="module")
def project(baked: tuple[subprocess.CompletedProcess, Path]) -> Path:
    return baked[1]


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
    shell, flag, line = yaml.safe_load(command)
    # A shell, so that --workers takes WORKERS, the setting the budget check counts.
    assert (shell, flag) == ("sh", "-c")
    # Before uvicorn, only the metrics directory is emptied, as prometheus_client asks.
    emptied, exec_, command = line.partition("exec ")
    directory = '"$PROMETHEUS_MULTIPROC_DIR"'
    assert emptied == f"rm -rf {directory} && mkdir -p {directory} && "
    assert re.search(r"^ENV PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus$", dockerfile, re.MULTILINE)
    arguments = (exec_ + command).split()
    assert arguments[:3] == ["exec", "uvicorn", "my_service.main:app"]
    assert arguments[arguments.index("--workers") + 1] == '"$WORKERS"'
    assert re.search(r"^ENV WORKERS=1$", dockerfile, re.MULTILINE)
    assert " ".join(arguments[1:6]) in " ".join(readme.split())
    assert re.search(r"^USER app$", dockerfile, re.MULTILINE)
    assert dockerfile.index("pip install .") < dockerfile.index("COPY src")


def test_pre_commit_runs_the_ruff_of_the_dev_dependencies(project: Path) -> None:
    """The hook and `ruff check` must agree: the hook's rev is the dev group's lower bound."""
    hooks = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    groups = tomllib.loads((project / "pyproject.toml").read_text())["dependency-groups"]

    (ruff_repo,) = [repo for repo in hooks["repos"] if "ruff-pre-commit" in repo["repo"]]
    (ruff,) = [spec for spec in groups["dev"] if spec.startswith("ruff")]
    assert ruff_repo["rev"] == "v" + ruff.removeprefix("ruff>=")
    assert any(spec.startswith("pre-commit") for spec in groups["dev"])


def test_ci_workflow_runs_the_commands_readme_gives(project: Path) -> None:
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    readme = (project / "README.md").read_text()

    (job,) = workflow["jobs"].values()
    commands = [step["run"] for step in job["steps"] if "run" in step]
    assert commands == [
        "uv sync",
        "uv run ruff check .",
        "uv run ruff format --check .",
        "uv run pytest --slow",
    ]
    for command in commands:
        assert command in readme, command
    assert job["services"]["postgres"]["image"].startswith("postgres")
    assert job["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")


def git(project: Path, *args: str) -> str:
    done = run("git", *args, cwd=project)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def no_git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """No identity for git beyond the empty HOME bake_with_cli gives: no system config, no
    identity variables (git would commit as root@host.(none), or refuse)."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("AUTHOR_NAME", "AUTHOR_EMAIL", "COMMITTER_NAME", "COMMITTER_EMAIL"):
        monkeypatch.delenv(f"GIT_{name}", raising=False)
    monkeypatch.delenv("EMAIL", raising=False)


def test_bake_commits_every_file_but_the_password(tmp_path: Path, no_git_identity) -> None:
    result, output = bake_with_cli(
        tmp_path, f"database_url={POSTGRES_URL_WITH_PASSWORD}", "author_name=Zoë O'Brien"
    )
    project = output / "my-service"

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Created a git repository with one commit" in result.stdout
    assert git(project, "log", "--format=%an <%ae>|%s").splitlines() == [
        f"Zoë O'Brien <you@example.com>|{COMMIT_MESSAGE}"
    ]
    assert git(project, "status", "--porcelain", "--ignored=no") == ""
    tracked = git(project, "ls-files").splitlines()
    assert (project / ".env").is_file() and ".env" not in tracked
    assert {"pyproject.toml", ".gitignore", ".env.example"} <= set(tracked)
    files = {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}
    assert set(tracked) == {name for name in files if not name.startswith(".git/")} - {".env"}


def test_first_commit_is_the_users_when_git_knows_them(tmp_path: Path, no_git_identity):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".gitconfig").write_text(
        "[user]\n\tname = Configured Person\n\temail = configured@example.org\n"
    )

    result, output = bake_with_cli(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    log = git(output / "my-service", "log", "--format=%an <%ae>")
    assert log == "Configured Person <configured@example.org>\n"


def test_failed_first_commit_leaves_the_repository_and_one_line(tmp_path: Path) -> None:
    """Commit signing with a signing program that fails: the commit cannot be made."""
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".gitconfig").write_text(
        "[user]\n\tname = A\n\temail = a@example.org\n"
        "[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = false\n"
    )

    result, output = bake_with_cli(tmp_path)
    project = output / "my-service"

    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "git repository" in line]
    assert line.startswith("Created a git repository, but the first commit failed (")
    assert "Traceback" not in result.stdout + result.stderr
    assert run("git", "rev-parse", "--verify", "HEAD", cwd=project).returncode != 0
    assert (project / ".git").is_dir() and (project / "pyproject.toml").is_file()


def test_bake_creates_a_git_repository_with_a_clean_work_tree(project: Path) -> None:
    assert len(git(project, "log", "--oneline").splitlines()) == 1
    assert git(project, "status", "--porcelain") == ""


def test_next_steps_use_python3_and_offer_uv(baked) -> None:
    result, project = baked
    steps = result.stdout[result.stdout.index("Next steps") :]

    # Debian and Ubuntu have no `python` command unless python-is-python3 is installed.
    assert not re.search(r"(^|[\s/])python\s", steps), steps
    assert f"cd {project}\n" in steps
    assert "python3 -m venv .venv && .venv/bin/pip install --upgrade pip" in steps
    # The group the baked project declares its tools in (PEP 735; pip 25.1 and later).
    assert ".venv/bin/pip install -e . --group dev" in steps
    baked_groups = tomllib.loads((project / "pyproject.toml").read_text())["dependency-groups"]
    assert "pytest" in " ".join(baked_groups["dev"])
    for command in ("uv sync", "uv run uvicorn my_service.main:app --reload", "uv run pytest"):
        assert f"    {command}\n" in steps


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
