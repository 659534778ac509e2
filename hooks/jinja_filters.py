"""Jinja filters that render answers as data, never as code.

Listed in ``cookiecutter.json`` under ``_extensions``; cookiecutter puts the template
directory on ``sys.path`` while it renders, which is how it finds ``hooks``.
"""

import json
from pathlib import Path

from jinja2 import Environment
from jinja2.ext import Extension

from hooks import database_url


def toml_string(value: object) -> str:
    """A TOML basic string that reads back as ``value``, whatever it holds.

    JSON escapes quotes, backslashes and control characters with escapes TOML shares.
    Non-ASCII text stays as typed (TOML rejects JSON's surrogate-pair escapes), and DEL,
    which JSON leaves raw but TOML forbids, is escaped.
    """
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def python_string(value: object) -> str:
    """A Python string literal that reads back as ``value``, quoted the way ruff formats it.

    Double quotes unless the text holds more double than single quotes; the escapes are
    JSON's, which Python shares.
    """
    text = str(value)
    double_quoted = toml_string(text)
    if text.count('"') <= text.count("'"):
        return double_quoted
    inner = double_quoted[1:-1].replace('\\"', '"').replace("'", "\\'")
    return f"'{inner}'"


def url_without_password(url: str) -> str:
    parsed = database_url.parse(url)
    return parsed.without_password if parsed else url


def url_with_placeholder_password(url: str) -> str:
    parsed = database_url.parse(url)
    return parsed.with_placeholder_password if parsed else url


class TemplateFilters(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["toml_string"] = toml_string
        environment.filters["python_string"] = python_string
        environment.filters["without_password"] = url_without_password
        environment.filters["with_placeholder_password"] = url_with_placeholder_password
        # The hook scripts run from a temporary copy; this is how they find this package.
        environment.globals["template_dir"] = str(Path(__file__).resolve().parent.parent)
