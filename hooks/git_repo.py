"""The new project's git repository, with the baked files as its first commit.

A repository whose every file is untracked leaves the newcomer to find out what to add
and what not to (.env); a first commit shows the baseline, and ``git diff`` what they
changed since. Nothing here may fail the bake: the files are written by now.
"""

import shutil
import subprocess
from pathlib import Path

COMMIT_MESSAGE = "Initial commit from cookiecutter-fastapi-pool"


def git(project_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", *args], cwd=project_dir, capture_output=True, text=True, check=False
    )


def identity_options(project_dir: Path, author_name: str, author_email: str) -> list[str]:
    """``-c`` options that commit as the author answers, when git knows nobody to commit as.

    ``git var`` fails exactly when ``git commit`` would for want of a name or an email (none
    in any config file, no GIT_AUTHOR_*/GIT_COMMITTER_* or EMAIL variable), so an identity
    the user has configured is always the one used.
    """
    for ident in ("GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"):
        if git(project_dir, "var", ident).returncode != 0:
            return ["-c", f"user.name={author_name}", "-c", f"user.email={author_email}"]
    return []


def reason(result: subprocess.CompletedProcess) -> str:
    """Git's last line of complaint, for a message of one line."""
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines()]
    return next((line for line in reversed(lines) if line), f"exit status {result.returncode}")


def create_repository(project_dir: Path, author_name: str, author_email: str) -> str:
    """``git init``, then commit every file git does not ignore; the one line to print.

    The baked ``.gitignore`` lists ``.env`` (the password) and SQLite files, which is what
    keeps them out of ``git add --all``. A commit that fails anyway (a signing key that is
    missing, a hook of the user's that refuses) leaves the repository initialised.
    """
    if shutil.which("git") is None:
        return "git is not installed: no repository was created (run `git init` later)."
    initialised = git(project_dir, "init", "--quiet")
    if initialised.returncode != 0:
        return f"git init failed ({reason(initialised)}): no repository was created."
    options = identity_options(project_dir, author_name, author_email)
    for step in (["add", "--all"], [*options, "commit", "--quiet", "-m", COMMIT_MESSAGE]):
        done = git(project_dir, *step)
        if done.returncode != 0:
            return (
                f"Created a git repository, but the first commit failed ({reason(done)}): "
                "run `git add --all && git commit` in it."
            )
    return (
        f"Created a git repository with one commit, {COMMIT_MESSAGE!r}; .env and SQLite "
        "files are git-ignored."
    )
