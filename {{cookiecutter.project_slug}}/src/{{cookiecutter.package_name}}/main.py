"""The ASGI application: ``uvicorn {{ cookiecutter.package_name }}.main:app``."""

from .app import create_app

app = create_app()
