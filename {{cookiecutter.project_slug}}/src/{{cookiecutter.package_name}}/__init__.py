"""{{ cookiecutter.project_name }}: a FastAPI service on a pooled SQLAlchemy async engine."""
