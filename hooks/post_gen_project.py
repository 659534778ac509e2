"""Put the password where git will not see it, then tell the user what to do next."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

# Answers arrive as JSON in a raw string (spaced from its quotes): data, never code.
ANSWERS = json.loads(r""" {{ cookiecutter | tojson }} """)
sys.path.insert(0, json.loads(r""" {{ template_dir | tojson }} """))

from hooks import database_url  # noqa: E402
from hooks.env_file import write_env_file  # noqa: E402

project_dir = Path.cwd()
if ANSWERS["use_alembic"] not in (True, "yes", "y", "true"):
    # cookiecutter cannot leave out a directory by its name; the hook removes it.
    (project_dir / "alembic.ini").unlink()
    (project_dir / "tests" / "test_migrations.py").unlink()
    shutil.rmtree(project_dir / "src" / ANSWERS["package_name"] / "migrations")
url, _ = database_url.normalise(ANSWERS["database_url"])
if write_env_file(project_dir, url):
    print(
        f"The database URL with its password is in {project_dir / '.env'} (git-ignored, "
        "owner-only); tracked files carry it with change-me in place of the password."
    )
else:
    print(
        "The database URL has no password; it is the default in settings.py. If the server "
        "needs one, set DATABASE_URL in .env (git-ignored), as .env.example shows."
    )
if ANSWERS["git_init"] in (True, "yes", "y", "true"):
    if shutil.which("git") is None:
        print("git is not installed: no repository was created (run `git init` later).")
    else:
        subprocess.run(["git", "init", "--quiet"], cwd=project_dir, check=False)
        print("Created a git repository; .env and SQLite files are in .gitignore.")
print(
    f"""
Next steps:
    cd {ANSWERS["project_slug"]}
    python -m venv .venv && .venv/bin/pip install -e ".[dev]"
    .venv/bin/uvicorn {ANSWERS["package_name"]}.main:app --reload
    .venv/bin/pytest
"""
)
