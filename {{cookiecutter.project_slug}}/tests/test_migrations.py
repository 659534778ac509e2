{% if cookiecutter.use_alembic -%}
"""The migrations build the models' tables, and autogenerate writes new ones that are
ruff-clean as written and run on SQLite and PostgreSQL alike.

They run on every database of the run: a SQLite file, and PostgreSQL when
``TEST_DATABASE_URL`` names a server.
"""

import ast
import io
import json
import logging
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC
from pathlib import Path
from typing import TypeVar

import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Column, Integer, column, insert, inspect, select, table, text
from sqlalchemy.engine import Connection, Inspector
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from {{ cookiecutter.package_name }} import schema
from {{ cookiecutter.package_name }}.database import Database
from {{ cookiecutter.package_name }}.models import Base, Item, UTCDateTime

from .support import PROJECT_DIR, USE_POSTGRES, make_settings

pytestmark = pytest.mark.anyio

T = TypeVar("T")

# alembic's command line, for several commands in one process (the app's imports take most
# of a second): argv[1] is [[database URL, [arguments]], ...]; then modules to import first.
ALEMBIC = """\
import importlib, json, os, sys
from alembic.config import main

for name in sys.argv[2:]:
    importlib.import_module(name)
for url, arguments in json.loads(sys.argv[1]):
    os.environ["DATABASE_URL"] = url
    main(argv=arguments, prog="alembic")
"""

# A model as a developer adds one: the app's own column type, server defaults, a unique
# constraint and a foreign key to the template's table.
PROBE_MODEL = """\
from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint, func, true
from sqlalchemy.orm import Mapped, mapped_column

from {{ cookiecutter.package_name }}.models import Base, UTCDateTime


class ProbeLabel(Base):
    __tablename__ = "probe_labels"
    __table_args__ = (UniqueConstraint("item_id", "label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(50))
    labelled_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    pinned: Mapped[bool] = mapped_column(server_default=true())
"""
probe_labels = table(
    "probe_labels", column("item_id"), column("label"), column("labelled_at", UTCDateTime())
)
# A folder name with what paths may hold and ConfigParser, shells or URLs treat specially.
AWKWARD_FOLDER = "100% $HOME 'q' \"d\" \u00e9 #;x"


@pytest.fixture
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """An empty database of every kind the run has, by dialect name."""
    urls = {"sqlite": f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"}
    if USE_POSTGRES:
        urls["postgresql"] = request.getfixturevalue("database_url")
    return urls


def alembic(cwd: Path, *steps: tuple[str, str], imports: tuple[str, ...] = ()) -> str:
    """Run ``alembic <command line>`` on each database URL in turn; what it printed."""
    argv = json.dumps([[url, shlex.split(line)] for url, line in steps])
    done = subprocess.run(
        [sys.executable, "-c", ALEMBIC, argv, *imports],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout
    return done.stdout


def copy_of_the_project(root: Path) -> Path:
    """alembic.ini, the migrations and ruff's settings, to write new revisions in."""
    migrations = PROJECT_DIR / "src" / "{{ cookiecutter.package_name }}" / "migrations"
    shutil.copytree(migrations, root / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    ini = (PROJECT_DIR / "alembic.ini").read_text(encoding="utf-8")
    # The copy's own migrations: an absolute path, '%' escaped for ConfigParser.
    location = str(root / "migrations").replace("%", "%%")
    lines = [
        f"script_location = {location}" if line.startswith("script_location") else line
        for line in ini.splitlines()
    ]
    (root / "alembic.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "alembic.ini"


def body(path: Path) -> str:
    """upgrade() and downgrade() of a migration, comments and layout left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    return "\n".join(ast.dump(function) for function in functions)


def ruff(*arguments: str | Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ruff", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


async def inspected(url: str, look: Callable[[Inspector], T]) -> T:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: look(inspect(sync)))
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    return set(await inspected(url, Inspector.get_table_names))


async def test_migrations_build_the_models_tables_and_downgrade(
    databases: dict[str, str],
) -> None:
    # `alembic check`: a fresh autogenerate after the upgrade would be empty.
    lines = ("upgrade head", "check", "downgrade base")
    printed = alembic(PROJECT_DIR, *[(url, line) for url in databases.values() for line in lines])

    each = len(databases)
    assert printed.count("Running upgrade  -> 0001, Create the items table") == each, printed
    assert printed.count("No new upgrade operations detected") == each, printed
    assert printed.count("Running downgrade 0001 -> , Create the items table") == each, printed
    for url in databases.values():
        assert await table_names(url) == {"alembic_version"}


async def test_autogenerate_writes_a_ruff_clean_migration_that_runs_everywhere(
    databases: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "probe_model.py").write_text(PROBE_MODEL, encoding="utf-8")
    shutil.copy(PROJECT_DIR / "pyproject.toml", tmp_path)  # ruff's settings
    # In folders whose names hold '%' and the like, as a project's path may.
    copies = {name: tmp_path / f"{name} {AWKWARD_FOLDER}" for name in databases}
    inis = {name: shlex.quote(str(copy_of_the_project(copies[name]))) for name in databases}
    steps = []
    for name, url in databases.items():
        steps += [
            (url, f"-c {inis[name]} upgrade head"),
            (url, f"-c {inis[name]} revision --autogenerate -m 'add probe labels'"),
        ]
    # Then the one generated on SQLite, on every database.
    for url in databases.values():
        steps += [(url, f"-c {inis['sqlite']} upgrade head"), (url, f"-c {inis['sqlite']} check")]
    printed = alembic(tmp_path, *steps, imports=("probe_model",))

    assert printed.count("Detected added table 'probe_labels'") == len(databases), printed
    # Then the database and the model agree.
    assert printed.count("No new upgrade operations detected") == len(databases), printed
    generated = [
        next((copies[name] / "migrations" / "versions").glob("*_add_probe_labels.py"))
        for name in databases
    ]
    for migration in generated:
        lint = ruff("check", "--no-cache", migration)
        assert lint.returncode == 0, lint.stdout + migration.read_text(encoding="utf-8")
        formatting = ruff("format", "--check", "--no-cache", migration)
        assert formatting.returncode == 0, formatting.stdout
        # Nothing of the app's, whose code goes on changing after the migration is written.
        imported = {
            (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name)
            for node in ast.walk(ast.parse(migration.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import | ast.ImportFrom)
        }
        assert {name.split(".")[0] for name in imported} <= {"collections", "sqlalchemy", "alembic"}
    # The same migration, whichever database it was generated on.
    assert len({body(migration) for migration in generated}) == 1

    for url in databases.values():
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                rows = await connection.execute(
                    insert(Item).values(name="x").returning(Item.id, Item.created_at)
                )
                item_id, created_at = rows.one()
                # The server default of the new table, on this database.
                await connection.execute(insert(probe_labels).values(item_id=item_id, label="a"))
                labelled_at = await connection.scalar(select(probe_labels.c.labelled_at))
            with pytest.raises(IntegrityError):  # the unique constraint
                async with engine.begin() as connection:
                    await connection.execute(
                        insert(probe_labels).values(item_id=item_id, label="a")
                    )
        finally:
            await engine.dispose()
        # The database's clock, in UTC and to the second, on every database.
        for timestamp in (created_at, labelled_at):
            assert timestamp.tzinfo is UTC and timestamp.microsecond == 0, timestamp
        constraints = await inspected(
            url,
            lambda i: (
                [c["name"] for c in i.get_unique_constraints("probe_labels")],
                [c["name"] for c in i.get_foreign_keys("probe_labels")],
            ),
        )
        assert constraints == (["uq_probe_labels_item_id"], ["fk_probe_labels_item_id_items"])

    ini = inis["sqlite"]
    alembic(tmp_path, *[(url, f"-c {ini} downgrade -1") for url in databases.values()])
    for url in databases.values():
        tables = await table_names(url)
        assert "items" in tables and "probe_labels" not in tables


def test_sql_for_a_dba_is_rendered_from_the_url_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alembic upgrade head --sql`` (Alembic's offline mode) builds no engine: nothing
    connects to PostgreSQL (nothing listens on port 1) and no SQLite file is created."""
    database_file = tmp_path / "app.db"
    urls = {
        "sqlite": f"sqlite+aiosqlite:///{database_file}",
        "postgresql": "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/app",
    }
    rendered = {}
    for name, url in urls.items():
        monkeypatch.setenv("DATABASE_URL", url)
        sql = io.StringIO()
        config = Config(str(PROJECT_DIR / "alembic.ini"), output_buffer=sql)
        command.upgrade(config, "head", sql=True)
        rendered[name] = sql.getvalue()

    assert not database_file.exists()
    for name, sql in rendered.items():
        assert "CREATE TABLE items" in sql, name
        assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in sql, name
    # For each URL's own database.
    assert "created_at TIMESTAMP WITH TIME ZONE" in rendered["postgresql"]
    assert "created_at DATETIME" in rendered["sqlite"]
    assert "s3cret-pw" not in rendered["postgresql"]


async def test_migrating_on_the_apps_connection_leaves_its_logging_alone(
    tmp_path: Path,
) -> None:
    """Only the alembic command reads alembic.ini's logging, not the app's startup."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("alembic").level)
    config = Config(str(PROJECT_DIR / "alembic.ini"))  # a file even: the connection decides

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
    finally:
        await engine.dispose()

    assert (list(root.handlers), root.level, logging.getLogger("alembic").level) == before
    assert "items" in await table_names(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")


@pytest.fixture
async def item_with_a_note(tmp_path: Path) -> AsyncIterator[Database]:
    """The app's database on a SQLite file, migrated, with an item and a note that refers
    to it (ON DELETE CASCADE), as a user's own table would."""
    database = Database(make_settings(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"), Base.metadata)
    try:
        await database.check()
        async with database.engine.begin() as connection:
            await connection.execute(text(
                "CREATE TABLE notes (id INTEGER PRIMARY KEY,"
                " item_id INTEGER REFERENCES items (id) ON DELETE CASCADE)"
            ))  # fmt: skip
            await connection.execute(text("INSERT INTO items (id, name) VALUES (1, 'kept')"))
            await connection.execute(text("INSERT INTO notes (id, item_id) VALUES (1, 1)"))
        yield database
    finally:
        await database.dispose()


async def test_a_migration_at_startup_that_rebuilds_a_table_keeps_the_rows_referring_to_it(
    item_with_a_note: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a migration rebuilds a table to alter it (batch mode: copy, DROP, rename).
    With foreign keys enforced, that DROP would delete the rows that refer to the table
    (ON DELETE CASCADE): the app's startup migration runs with them off (schema.py)."""
    database = item_with_a_note

    def rebuild_items(connection: Connection) -> None:
        operations = Operations(MigrationContext.configure(connection))
        with operations.batch_alter_table("items", recreate="always") as batch:
            batch.add_column(Column("extra", Integer()))

    monkeypatch.setattr(schema, "upgrade_to_head", rebuild_items)
    database.schema_ready = False  # as after a deploy with a new migration
    await database.check()

    async with database.engine.connect() as connection:
        notes = (await connection.execute(text("SELECT id, item_id FROM notes"))).all()
        enforced = await connection.scalar(text("PRAGMA foreign_keys"))
    assert notes == [(1, 1)]
    assert enforced == 1  # on again for the requests


async def test_a_startup_migration_that_leaves_rows_pointing_nowhere_is_rolled_back(
    item_with_a_note: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Foreign keys are off during the startup migration on SQLite; the check before its
    commit still refuses rows whose parent is gone, as PostgreSQL would."""
    database = item_with_a_note

    def delete_the_parent(connection: Connection) -> None:
        connection.execute(text("DELETE FROM items"))

    monkeypatch.setattr(schema, "upgrade_to_head", delete_the_parent)
    database.schema_ready = False
    with pytest.raises(RuntimeError, match="foreign key points nowhere"):
        await database.check()

    async with database.engine.connect() as connection:
        items = (await connection.execute(text("SELECT id, name FROM items"))).all()
    assert items == [(1, "kept")]
{%- endif %}
