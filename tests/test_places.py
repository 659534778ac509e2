"""A baked project works wherever it lives and from wherever it is started: under a path
holding characters that ConfigParser, shells, .env files or URLs treat specially, with
the alembic command run in the project and from another directory."""

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from .support import BakedVenv, bake_with_cli, clean_environment, run

pytestmark = pytest.mark.slow

# '%' (ConfigParser interpolation, as in alembic.ini), a space, '$' and quotes (shells),
# non-ASCII, '#' and ';' (comments in .ini and .env files).
AWKWARD_FOLDER = "100% $HOME 'q' \"d\" \u00e9 #;x"
# Nothing listens on port 1: a command that tried to connect would fail.
CLOSED_POSTGRES_URL = "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/app"


def test_a_project_under_an_awkward_path_migrates_and_passes_its_tests(
    baked_venv: BakedVenv, tmp_path: Path
) -> None:
    where = tmp_path / AWKWARD_FOLDER
    where.mkdir()
    baked, output = bake_with_cli(where, "project_name=Odd Places")
    assert baked.returncode == 0, baked.stdout + baked.stderr
    project = output / "odd-places"
    baked_venv.install(project)
    alembic = baked_venv.bin("alembic")
    env = clean_environment()
    env.pop("ENV_FILE", None)

    # In the project, as the README says: the default SQLite file, ./app.db.
    steps = [
        ("upgrade", "head"),
        ("revision", "--autogenerate", "-m", "nothing yet"),
        ("upgrade", "head"),
        ("downgrade", "-1"),
    ]
    printed = ""
    for step in steps:
        done = run(alembic, *step, cwd=project, env=env)
        assert done.returncode == 0, f"alembic {' '.join(step)}:\n{done.stdout}{done.stderr}"
        printed += done.stdout + done.stderr
    versions = project / "src" / "odd_places" / "migrations" / "versions"
    (generated,) = versions.glob("*_nothing_yet.py")  # in the project's own package
    revision = generated.name.split("_")[0]
    assert "Running upgrade  -> 0001, Create the items table" in printed
    assert printed.count("Running post write hook") == 3  # ruff, on the new file's path
    assert f"Running upgrade 0001 -> {revision}, nothing yet" in printed
    assert f"Running downgrade {revision} -> 0001, nothing yet" in printed
    assert (project / "app.db").is_file()

    # From another directory: the project's .env is read, and ENV_FILE's file instead when
    # it names one; --sql renders from the URL alone, connecting to nothing.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (project / ".env").write_text(f"DATABASE_URL={CLOSED_POSTGRES_URL}\n", encoding="utf-8")
    (elsewhere / "sqlite.env").write_text(
        "DATABASE_URL=sqlite+aiosqlite:///./offline.db\n", encoding="utf-8"
    )
    ini = project / "alembic.ini"
    from_project_env = run(alembic, "-c", ini, "upgrade", "head", "--sql", cwd=elsewhere, env=env)
    named = env | {"ENV_FILE": "sqlite.env"}
    from_env_file = run(alembic, "-c", ini, "upgrade", "head", "--sql", cwd=elsewhere, env=named)
    (project / ".env").unlink()  # the baked suite runs on its own settings

    assert from_project_env.returncode == 0, from_project_env.stderr
    assert "created_at TIMESTAMP WITH TIME ZONE" in from_project_env.stdout  # PostgreSQL's
    assert "s3cret-pw" not in from_project_env.stdout + from_project_env.stderr
    assert from_env_file.returncode == 0, from_env_file.stderr
    assert "created_at DATETIME" in from_env_file.stdout  # SQLite's
    assert list(elsewhere.iterdir()) == [elsewhere / "sqlite.env"]  # no offline.db

    # The project's own fast tests, there: its alembic command, settings and startup. (The
    # report goes outside the project: pytest expands the '$HOME' in a --junitxml path.)
    report = tmp_path / "report.xml"
    suite = run(
        baked_venv.python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}",
        cwd=project, env=env,
    )  # fmt: skip

    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    outcomes = {
        f"{case.get('classname')}.{case.get('name')}": case.find("skipped")
        for case in ElementTree.parse(report).iter("testcase")
    }
    skipped = [skip.get("message", "") for skip in outcomes.values() if skip is not None]
    assert all("needs PostgreSQL" in reason for reason in skipped), skipped
    for test in (
        "tests.test_migrations.test_migrations_build_the_models_tables_and_downgrade",
        "tests.test_migrations.test_sql_for_a_dba_is_rendered_from_the_url_alone",
        "tests.test_settings.test_the_projects_env_file_is_read_from_any_working_directory",
    ):
        assert test in outcomes and outcomes[test] is None, test  # ran, and passed
