"""The ASGI application: ``uvicorn {{ cookiecutter.package_name }}.main:app``."""

from .app import create_app
from .logs import configure_logging
from .settings import load_settings

settings = load_settings()
configure_logging(settings.log_level)
app = create_app(settings)
