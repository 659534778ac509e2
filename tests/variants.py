"""The answers the template is baked with in tests, each variant named for what it tries."""

import pytest

POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# A percent-encoded password with every character that needs it: @ : / % # ? $
POSTGRES_PASSWORD = "p%40ss%3Aw%2Fo%25r%23d%3F%24"
POSTGRES_URL_WITH_PASSWORD = f"postgresql+asyncpg://app:{POSTGRES_PASSWORD}@127.0.0.1:5432/app"

VARIANTS = [
    pytest.param({}, id="defaults-sqlite-file"),
    pytest.param(
        {
            "database_url": "sqlite+aiosqlite:///:memory:",
            "pool_pre_ping": False,
            "use_alembic": False,
            "metrics": False,
        },
        id="sqlite-memory-no-pre-ping-no-alembic-no-metrics",
    ),
    pytest.param(
        {
            "database_url": POSTGRES_URL,
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": 5,
            "pool_pre_ping": False,
            "use_alembic": False,
        },
        id="postgres-single-connection-no-alembic",
    ),
    pytest.param(
        {
            "database_url": POSTGRES_URL_WITH_PASSWORD,
            "pool_size": 20,
            "max_overflow": -1,
            "pool_timeout": 2.5,
            "pool_recycle": -1,
        },
        id="postgres-password-unbounded-overflow",
    ),
    pytest.param(
        {"database_url": POSTGRES_URL, "connection_pooler": "pgbouncer", "workers": 8},
        id="postgres-behind-pgbouncer",
    ),
    pytest.param(
        {
            # Quotes and dashes that ruff flags in source must arrive escaped.
            "project_name": "Accounts Receivable\u2019s Service \u2013 Invoices, Credit Notes",
            # The longest package name accepted.
            "package_name": "accounts_receivable_service_for_invoices",
            "database_url": f"{POSTGRES_URL}?ssl=disable",
        },
        id="long-name-and-url",
    ),
    pytest.param(
        {
            "project_name": 'O\'Connor "Q" Service',
            "description": "Says \"hi\", a \\backslash and 'quotes' — ünïcode",
            "author_name": "Zoë O\u2019Brien \u2013 Café",
        },
        id="unusual-names",
    ),
]
