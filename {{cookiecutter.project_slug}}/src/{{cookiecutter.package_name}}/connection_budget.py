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


async def warn_if_over_budget(connection: AsyncConnection, settings: Settings) -> None:
    """Log a warning when WORKERS pools could open more connections than the server allows."""
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
    needed = settings.workers * (settings.pool_size + settings.max_overflow)
    if needed > available:
        logger.warning(
            "Connection budget exceeded: WORKERS x (POOL_SIZE + MAX_OVERFLOW) = %d x (%d + %d) "
            "= %d, but the server's max_connections=%d leaves %d for applications (%d "
            "reserved); lower POOL_SIZE, MAX_OVERFLOW or WORKERS, or raise max_connections",
            settings.workers, settings.pool_size, settings.max_overflow, needed,
            max_connections, available, superuser_reserved + reserved,
        )  # fmt: skip
