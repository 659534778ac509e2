"""Jinja filters that render answers as data, never as code.

Listed in ``cookiecutter.json`` under ``_extensions``; cookiecutter puts the template
directory on ``sys.path`` while it renders, which is how it finds ``hooks``.
"""

import json
from pathlib import Path

from jinja2 import Environment
from jinja2.ext import Extension

from hooks import database_url


def string_literal(value: object) -> str:
    """A double-quoted string literal that Python and TOML both read back unchanged.

    JSON escapes quotes, backslashes and control characters with escapes both languages
    share. Non-ASCII text stays as typed (``\\uD83D``-style surrogate pairs are not valid
    in TOML), and DEL, which JSON leaves raw but TOML forbids, is escaped.
    """
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def url_without_password(url: str) -> str:
    parsed = database_url.parse(url)
    return parsed.without_password if parsed else url


def url_with_placeholder_password(url: str) -> str:
    parsed = database_url.parse(url)
    return parsed.with_placeholder_password if parsed else url


class TemplateFilters(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["literal"] = string_literal
        environment.filters["without_password"] = url_without_password
        environment.filters["with_placeholder_password"] = url_with_placeholder_password
        # The hook scripts run from a temporary copy; this is how they find this package.
        environment.globals["template_dir"] = str(Path(__file__).resolve().parent.parent)
