"""Put the password where git will not see it, commit, then tell the user what to do next."""

import json
import shlex
import shutil
import sys
from pathlib import Path

# Answers arrive as JSON in a raw string (spaced from its quotes): data, never code.
ANSWERS = json.loads(r""" {{ cookiecutter | tojson }} """)
# The answers hold change-me for the password, which the Jinja extension kept aside.
PASSWORD = json.loads(r""" {{ cookiecutter.database_url | database_password | tojson }} """)
# "create" under cruft create, "regenerate" while cruft update or diff renders again.
CRUFT = json.loads(r""" {{ cruft_command() | tojson }} """)
sys.path.insert(0, json.loads(r""" {{ template_dir | tojson }} """))

from hooks import database_url  # noqa: E402
from hooks.env_file import write_env_file  # noqa: E402
from hooks.git_repo import create_repository  # noqa: E402

project_dir = Path.cwd()
if ANSWERS["use_alembic"] not in (True, "yes", "y", "true"):
    # cookiecutter cannot leave out a directory by its name; the hook removes it.
    (project_dir / "alembic.ini").unlink()
    (project_dir / "tests" / "test_migrations.py").unlink()
    shutil.rmtree(project_dir / "src" / ANSWERS["package_name"] / "migrations")
if ANSWERS["metrics"] not in (True, "yes", "y", "true"):
    (project_dir / "src" / ANSWERS["package_name"] / "metrics.py").unlink()
    (project_dir / "src" / ANSWERS["package_name"] / "tracing.py").unlink()
    (project_dir / "tests" / "test_metrics.py").unlink()
    (project_dir / "tests" / "test_tracing.py").unlink()
    (project_dir / "tests" / "pool" / "test_metrics.py").unlink()
    shutil.rmtree(project_dir / "grafana")  # the dashboard reads those metrics
if CRUFT == "regenerate":
    # cruft compares this temporary copy with another: no .env, repository or advice.
    sys.exit(0)
url = database_url.parse(database_url.normalise(ANSWERS["database_url"])[0])
if PASSWORD is not None and write_env_file(project_dir, url._replace(password=PASSWORD).full):
    print(
        f"The database URL with its password is in {project_dir / '.env'} (git-ignored, "
        "owner-only); tracked files carry it with change-me in place of the password."
    )
elif url.password == database_url.PLACEHOLDER:
    print(
        "The database URL has the placeholder password change-me (the answers held no "
        "password: a --replay bake saves none). Put the real URL in .env (git-ignored), as "
        ".env.example shows; the app says so at startup until then."
    )
elif not url.scheme.startswith("sqlite"):  # a SQLite file has no server and no password
    print(
        "The database URL has no password; it is the default in settings.py. If the server "
        "needs one, set DATABASE_URL in .env (git-ignored), as .env.example shows."
    )
if ANSWERS["git_init"] in (True, "yes", "y", "true"):
    # After .env is written: the first commit must show that git ignores it.
    print(create_repository(project_dir, ANSWERS["author_name"], ANSWERS["author_email"]))
    if CRUFT == "create":
        print(
            "cruft writes .cruft.json (the template, its commit and your answers, no "
            "password) after this: commit it too, git add .cruft.json && git commit -m "
            "'Record the template for cruft'"
        )
# python3, not python: Debian and Ubuntu have no `python` unless python-is-python3 is
# installed. pip takes PEP 735 groups (--group) from 25.1 on, hence the upgrade first.
# The full path to cd to: the project is wherever --output-dir put it.
cd = f"cd {shlex.quote(str(project_dir))}"
venv = "python3 -m venv .venv && .venv/bin/pip install --upgrade pip"
app = f"{ANSWERS['package_name']}.main:app --reload"
print(
    f"""
Next steps, with pip:
    {cd}
    {venv} && .venv/bin/pip install -e . --group dev
    .venv/bin/uvicorn {app}
    .venv/bin/pytest
or with uv (https://docs.astral.sh/uv/):
    {cd}
    uv sync
    uv run uvicorn {app}
    uv run pytest
"""
)
