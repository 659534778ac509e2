"""Alembic's environment: migrations run with the app's own settings and driver options.

``alembic revision --autogenerate`` writes migrations that need nothing but SQLAlchemy and
Alembic, and run on PostgreSQL and SQLite whichever of the two they were generated on:

- the app's own column types (``TypeDecorator`` subclasses such as ``UTCDateTime``) are
  written as the database type under them: a migration never imports the app's code, which
  goes on changing after the migration is written;
- server defaults built with SQLAlchemy (``func.now()``, ``func.current_timestamp()``,
  ``true()``) are written as that same expression, which each database compiles its own
  way, not as the SQL of the database autogenerate compared with (PostgreSQL's ``now()``
  is unknown to SQLite);
- changes to existing tables are written in batch mode: SQLite needs it to alter a table,
  PostgreSQL runs it as plain ALTER TABLE statements.

alembic.ini's post-write hooks then run ruff on the new file, so that it is lint-clean and
formatted as written. Still read it: a TypeDecorator whose ``load_dialect_impl()`` picks
another type on one database gets a warning; defaults read back from a database (such as
an altered column's ``existing_server_default``) are written in that database's SQL.
"""

import asyncio
import keyword
import logging
from logging.config import fileConfig
from typing import Any, Literal

import sqlalchemy
from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import _repr_type  # Alembic's own type rendering
from sqlalchemy import DefaultClause
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import (
    BindParameter,
    ClauseElement,
    ColumnClause,
    False_,
    Null,
    TextClause,
    True_,
)
from sqlalchemy.sql.functions import Function
from sqlalchemy.types import TypeDecorator, TypeEngine

from {{ cookiecutter.package_name }}.engine import connect_args, engine_url
from {{ cookiecutter.package_name }}.models import Base
from {{ cookiecutter.package_name }}.settings import load_settings

logger = logging.getLogger("alembic.env")

# The databases every migration must run on.
DIALECTS = (postgresql.dialect(), sqlite.dialect())
CONSTANTS = {True_: "sa.true()", False_: "sa.false()", Null: "sa.null()"}
LITERALS = (str, int, float, bool, type(None))


def render_item(type_: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """How autogenerate writes a column type or a server default; False: Alembic's way."""
    if type_ == "type" and is_own_type(item):
        # Alembic renders the stored type through this hook again: it may be one too.
        return _repr_type(stored_type(item), autogen_context)
    if type_ == "server_default" and isinstance(item, DefaultClause):
        built = item.arg
        if isinstance(built, ClauseElement) and not isinstance(built, TextClause):
            code = python_for(built)
            if code is not None and builds_the_same_sql(code, built, autogen_context):
                return code
    return False


def is_own_type(type_: TypeEngine[Any]) -> bool:
    """A TypeDecorator of the app's, or of any library but SQLAlchemy."""
    of_sqlalchemy = type(type_).__module__.startswith("sqlalchemy.")
    return isinstance(type_, TypeDecorator) and not of_sqlalchemy


def stored_type(type_: TypeDecorator[Any]) -> TypeEngine[Any]:
    """The type a TypeDecorator stores its values as, its ``with_variant()`` ones included."""
    stored = type_.impl_instance
    for dialect_name, variant in type_._variant_mapping.items():  # no public accessor
        stored = stored.with_variant(variant, dialect_name)
    for dialect in DIALECTS:
        if ddl(type_, dialect) != ddl(stored, dialect):
            # Its load_dialect_impl() picks another type on this database.
            logger.warning(
                "%s is written as its impl, %r, but is %s on %s: give the migration the "
                "type it has there, with .with_variant(..., %r)",
                type(type_).__name__,
                stored,
                ddl(type_, dialect),
                dialect.name,
                dialect.name,
            )
    return stored


def ddl(type_: TypeEngine[Any], dialect: Any) -> str | None:
    try:
        return type_.compile(dialect=dialect)
    except CompileError:  # a type this database does not have
        return None


def python_for(element: Any, top: bool = True) -> str | None:
    """SQLAlchemy code that builds a server default, or None to leave it to Alembic.

    Functions of literals and of other functions (``func.now()``,
    ``func.coalesce(func.lower("A"), "b")``), ``true()``, ``false()`` and ``null()``;
    as arguments, also ``text()``, ``literal_column()`` and plain values.
    """
    if type(element) in CONSTANTS:
        return CONSTANTS[type(element)]
    if isinstance(element, Function):
        path = [*element.packagenames, element.name]
        if not all(name.isidentifier() and not keyword.iskeyword(name) for name in path):
            return None
        clauses = getattr(element, "clauses", None)  # next_value() has none, but a sequence
        if clauses is None:
            return None
        arguments = [python_for(argument, top=False) for argument in clauses]
        if None in arguments:
            return None
        return f"sa.func.{'.'.join(path)}({', '.join(map(str, arguments))})"
    if top:
        return None
    if isinstance(element, TextClause):
        return f"sa.text({element.text!r})"
    if isinstance(element, ColumnClause) and element.is_literal and element.table is None:
        return f"sa.literal_column({element.name!r})"
    if isinstance(element, BindParameter) and type(element.value) in LITERALS:
        return repr(element.value)
    return None


def builds_the_same_sql(code: str, built: ClauseElement, autogen_context: AutogenContext) -> bool:
    """Whether ``code`` builds the SQL that ``built`` is, on every database.

    Not so for a function whose arguments are not its clauses, as ``Sequence.next_value()``.
    """
    try:
        rebuilt = eval(code, {"sa": sqlalchemy})  # made by python_for: names and literals
    except Exception:
        return False
    dialects = [*DIALECTS, autogen_context.dialect]
    return all(sql(rebuilt, d) == sql(built, d) for d in dialects if d is not None)


def sql(element: ClauseElement, dialect: Any) -> str | None:
    try:
        return str(element.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except (CompileError, NotImplementedError):  # not on this database
        return None


# What migrations compare and write, on a connection or as SQL.
MIGRATION_OPTIONS: dict[str, Any] = {
    "target_metadata": Base.metadata,
    "render_item": render_item,
    "render_as_batch": True,
}


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, **MIGRATION_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: the SQL printed for a DBA, from the URL alone.

    Alembic's offline mode ("Generating SQL Scripts"): given a URL instead of a connection,
    it renders for that URL's dialect. No engine is built, so nothing connects and no
    SQLite file is created; values are written into the SQL (``literal_binds``). On
    SQLite, a batch operation that rebuilds a table cannot be rendered without a
    connection (Alembic reflects the table first, and stops saying so): apply that one
    with ``alembic upgrade``.
    """
    url = make_url(load_settings().database_url.get_secret_value())
    context.configure(
        url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **MIGRATION_OPTIONS
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    settings = load_settings()
    url = make_url(settings.database_url.get_secret_value())
    engine = create_async_engine(
        engine_url(url), poolclass=NullPool, connect_args=connect_args(url, settings)
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


config = context.config
if config.cmd_opts is not None and config.config_file_name is not None:
    # The alembic command (only it sets cmd_opts): alembic.ini's logging sections make it
    # say what it does. A program calling Alembic's API, as the app migrating at startup,
    # keeps its own logging. disable_existing_loggers=False: the app's modules keep theirs.
    fileConfig(config.config_file_name, disable_existing_loggers=False)
shared_connection = config.attributes.get("connection")
if shared_connection is not None:
    run_migrations(shared_connection)  # the app's startup migration, on its connection
elif context.is_offline_mode():  # --sql
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
