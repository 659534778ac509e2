"""A schema change under a running pool: statements prepared before it have gone stale.

SQLAlchemy's asyncpg dialect prepares each statement once per connection and keeps it
(``prepared_statement_cache_size``). When DDL from elsewhere, another instance's
migration say, changes what a prepared statement returns (``ALTER TABLE items ALTER
COLUMN name TYPE text``, or a ``search_path`` that now finds another table), PostgreSQL
refuses to run it: "cached plan must not change result type", SQLSTATE 0A000, which
asyncpg raises as ``InvalidCachedStatementError`` (it recognises the condition by the
server function that raised it, RevalidateCachedQuery, not by the localised message).
asyncpg would prepare again by itself outside a transaction, but the dialect's own cache
is in the way (asyncpg issue #458, SQLAlchemy issue #6645). The dialect then clears the
caches of every connection of the engine, so each connection fails this way at most once
per change, and only with a statement that was already under way.

Nothing ran: the server refuses the statement before executing it. So a read is simply
run again (read_session.py, whatever ``POOL_PRE_PING`` says), while in a transaction the
server has aborted the transaction, which cannot be run again behind the code that made
it: a 503 with ``Retry-After`` (errors.py). The same goes for asyncpg's
``OutdatedSchemaCacheError``: a type the statement returns (a composite or enum) was
changed, and the rows could not be decoded.

Not this kind: DDL that drops or renames a column or table the code still uses. The
statement then fails whatever is cached (42703 undefined_column, 42P01 undefined_table):
the code and the schema disagree, a bug that stays a 500 until they agree again.
"""

from asyncpg.exceptions import InvalidCachedStatementError, OutdatedSchemaCacheError

from .connection_failures import Failure, exception_chain

STALE = (InvalidCachedStatementError, OutdatedSchemaCacheError)
STALE_STATEMENT = Failure(
    "the schema changed during the request",
    "a statement prepared before a schema change went stale (0A000 feature_not_supported: "
    "cached plan must not change result type); every connection prepares it anew",
    connect=False,
)


def is_stale_statement(error: BaseException) -> bool:
    """Whether ``error`` is, or wraps, asyncpg's error for a statement gone stale."""
    return any(isinstance(cause, STALE) for cause in exception_chain(error))
