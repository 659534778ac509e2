"""A FastAPI service on a pooled SQLAlchemy async engine."""
