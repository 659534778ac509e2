"""Projects made with cruft, and kept up to date with the template as it changes.

The template is a git repository of its own here (cruft clones what it renders), made
from this working tree; a "template change" is a new commit in it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import TEMPLATE_DIR, BakedVenv, clean_environment, package_name, run

pytestmark = pytest.mark.slow

PASSWORD = "Zq7-cruft-pass"
URL = f"postgresql://app:{PASSWORD}@127.0.0.1:5432/app"
CRUFT = Path(sys.executable).parent / "cruft"
# The line of the template the "template change" rewrites, in a module every variant has.
TEMPLATE_LINE = "# Larger counts are typing mistakes, not pool settings."


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    identity = ("-c", "user.name=Test", "-c", "user.email=test@example.com")
    done = run("git", *identity, *args, cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def cruft(project_or_cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run(CRUFT, *args, cwd=project_or_cwd, env=clean_environment())


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """This working tree's template as a git repository with one commit."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, repo, ignore=shutil.ignore_patterns(".venv", ".git", "*.pyc"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "The template")
    return repo


def tracked_files_holding(project: Path, secret: str) -> list[str]:
    listed = git(project, "ls-files").stdout.split()
    return [name for name in listed if secret in (project / name).read_text(errors="replace")]


def test_cruft_create_keeps_the_password_in_env_only(template_repo: Path, tmp_path: Path):
    context = json.dumps({"project_name": "Kept Current", "database_url": URL})

    made = cruft(tmp_path, "create", str(template_repo), "--no-input", "--extra-context", context)

    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / "kept-current"
    recorded = json.loads((project / ".cruft.json").read_text())
    answered = recorded["context"]["cookiecutter"]["database_url"]
    assert answered == "postgresql+asyncpg://app:change-me@127.0.0.1:5432/app"
    assert PASSWORD not in (project / ".cruft.json").read_text()
    assert PASSWORD in (project / ".env").read_text()
    git(project, "add", ".cruft.json")  # as the bake's last line asks
    assert "commit it too, git add .cruft.json" in made.stdout
    assert tracked_files_holding(project, PASSWORD) == []
    assert cruft(project, "check").returncode == 0
    # cruft renders the template again, hooks and all, and finds exactly this project:
    # no .env, git repository or other leftover of the hooks' in the comparison.
    compared = cruft(project, "diff", "--exit-code")
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert compared.stdout == ""


def test_cruft_create_refuses_a_bad_answer_in_one_line_and_writes_nothing(
    template_repo: Path, tmp_path: Path
) -> None:
    context = json.dumps({"project_name": "Refused", "pool_size": "0"})

    made = cruft(tmp_path, "create", str(template_repo), "--no-input", "--extra-context", context)

    assert made.returncode == 1
    assert "Traceback" not in made.stdout + made.stderr
    assert "pool_size: 0 is out of range; accepted: a whole number from 1" in made.stderr
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("database_url", [URL, "sqlite+aiosqlite:///./app.db"])
def test_cruft_update_brings_a_template_change_into_a_project_with_its_own_edits(
    template_repo: Path, tmp_path: Path, baked_venv: BakedVenv, database_url: str
) -> None:
    context = json.dumps({"project_name": "Kept Current", "database_url": database_url})
    made = cruft(tmp_path, "create", str(template_repo), "--no-input", "--extra-context", context)
    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / "kept-current"
    git(project, "add", ".cruft.json")
    git(project, "commit", "-q", "-m", "Record the template for cruft")
    env_file = (project / ".env").read_bytes() if (project / ".env").exists() else None
    # The team's own edits, committed: a route module and the README.
    items = project / "src" / package_name(project) / "routers" / "items.py"
    items.write_text(items.read_text() + "\n# Our own note.\n")
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("## API\n", "## API\n\nOur API notes.\n", 1))
    git(project, "commit", "-q", "-am", "Our edits")
    # The template moves on.
    settings = template_repo / "{{cookiecutter.project_slug}}" / "src"
    settings = settings / "{{cookiecutter.package_name}}" / "settings.py"
    assert TEMPLATE_LINE in settings.read_text()
    settings.write_text(settings.read_text().replace(TEMPLATE_LINE, TEMPLATE_LINE + " (New.)"))
    git(template_repo, "commit", "-q", "-am", "A template change")
    assert cruft(project, "check").returncode == 1  # behind

    updated = cruft(project, "update", "--skip-apply-ask")

    assert updated.returncode == 0, updated.stdout + updated.stderr
    output = updated.stdout + updated.stderr
    for alarming in ("Traceback", "Next steps", ".env", "git repository", "is used as"):
        assert alarming not in output
    assert list(project.rglob("*.rej")) == []
    assert (
        TEMPLATE_LINE + " (New.)"
        in (project / "src" / package_name(project) / "settings.py").read_text()
    )
    assert items.read_text().endswith("# Our own note.\n")
    assert "Our API notes." in readme.read_text()
    if env_file is not None:
        assert (project / ".env").read_bytes() == env_file
    git(project, "commit", "-q", "-am", "Update from the template")
    assert cruft(project, "check").returncode == 0
    assert tracked_files_holding(project, PASSWORD) == []
    # The updated project's own fast tests pass.
    baked_venv.install(project)
    tested = run(baked_venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project,
                 env=clean_environment())  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
