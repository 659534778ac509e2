"""The ASGI application: ``uvicorn {{ cookiecutter.package_name }}.main:app``."""

from .app import create_app
from .logs import configure_logging
{%- if cookiecutter.metrics %}
from .settings import export_opentelemetry_variables, load_settings
{%- else %}
from .settings import load_settings
{%- endif %}

settings = load_settings()
configure_logging(settings.log_level)
{%- if cookiecutter.metrics %}
export_opentelemetry_variables()  # OTEL_* lines of .env, for the traces' SDK
{%- endif %}
app = create_app(settings)
