"""The connection budget: every worker's pool must fit in the server's max_connections."""

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .settings import Settings

logger = logging.getLogger(__name__)

# Connections the server keeps for superusers (and, from PostgreSQL 16, reserved roles).
SERVER_LIMITS = text(
    "SELECT current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int, "
    "coalesce(current_setting('reserved_connections', true), '0')::int"
)


async def warn_if_over_budget(
    connection: AsyncConnection,
    settings: Settings,
    pools: int = 1,
    server: str = "the server",
    with_replica_checks: bool = False,
) -> None:
    """Log a warning when the pools that reach the server of ``connection`` could open
    more connections than it allows: ``pools`` pools in each of WORKERS processes (the
    primary's, and a replica's whose URL names the same host and port), each of up to
    POOL_SIZE + MAX_OVERFLOW connections, and, ``with_replica_checks``, one more per pool
    for the replica checks (replicas.py). ``server`` names it in the warning."""
    if connection.dialect.name != "postgresql":
        return
    if settings.connection_pooler == "pgbouncer":
        # These are PgBouncer's clients: its own default_pool_size guards the server.
        return
    max_connections, superuser_reserved, reserved = (await connection.execute(SERVER_LIMITS)).one()
    available = max_connections - superuser_reserved - reserved
    if settings.max_overflow == -1:
        logger.warning(
            "MAX_OVERFLOW=-1 puts no limit on connections; the server's max_connections=%d "
            "leaves %d for applications, shared by %d worker(s)",
            max_connections, available, settings.workers,
        )  # fmt: skip
        return
    checks = 1 if with_replica_checks else 0
    needed = pools * settings.workers * (settings.pool_size + settings.max_overflow + checks)
    if needed > available:
        formula = "WORKERS x (POOL_SIZE + MAX_OVERFLOW)"
        numbers = f"{settings.workers} x ({settings.pool_size} + {settings.max_overflow})"
        if checks:
            formula = "WORKERS x (POOL_SIZE + MAX_OVERFLOW + 1 for the replica checks)"
            numbers = numbers.removesuffix(")") + " + 1)"
        if pools > 1:  # the primary's pool and replicas' on one server
            formula, numbers = f"pools x {formula}", f"{pools} x {numbers}"
        logger.warning(
            "Connection budget exceeded on %s: %s = %s = %d, but its max_connections=%d "
            "leaves %d for applications (%d reserved); lower POOL_SIZE, MAX_OVERFLOW or "
            "WORKERS, or raise max_connections",
            server, formula, numbers, needed, max_connections, available,
            superuser_reserved + reserved,
        )  # fmt: skip
