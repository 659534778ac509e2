"""Schema migrations (Alembic). The app applies them at startup; `alembic` runs them by hand."""
