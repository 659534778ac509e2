"""The template's Jinja extension: answers are checked, and rendered as data, never as code.

Listed in ``cookiecutter.json`` under ``_extensions``; cookiecutter puts the template
directory on ``sys.path`` while it renders, which is how it finds ``hooks``.
"""

import atexit
import json
import sys
from pathlib import Path

from cookiecutter.exceptions import FailedHookException
from jinja2 import Environment
from jinja2.ext import Extension

from hooks import database_url, replay
from hooks.validation import check_answers, parse_boolean


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
    JSON's, which Python shares, and non-ASCII characters are escaped so that look-alikes
    of quotes and dashes (which ruff flags) cannot hide in the source.
    """
    text = str(value)
    literal = toml_string(text)
    if text.count('"') > text.count("'"):
        literal = "'" + literal[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
    return "".join(
        char
        if char.isascii()
        else f"\\u{ord(char):04x}"
        if ord(char) <= 0xFFFF
        else f"\\U{ord(char):08x}"
        for char in literal
    )


def python_bool(value: object) -> str:
    return str(parse_boolean(value))


def seconds(value: object) -> str:
    """A checked number of seconds as written in settings: 30, not 30.0; 2.5 as is."""
    number = float(str(value).strip())
    return str(int(number)) if number.is_integer() else str(number)


def _parsed_url(url: str) -> database_url.DatabaseUrl:
    parsed = database_url.parse(database_url.normalise(url)[0])
    if parsed is None:  # check_answers has rejected it before anything is rendered
        raise FailedHookException(f"database_url: {database_url.mask(url)!r} is not a URL")
    return parsed


def public_database_url(url: str) -> str:
    """The URL with the app's async driver and without its password: fit for tracked files."""
    return _parsed_url(url).without_password


def database_url_with_placeholder(url: str) -> str:
    return _parsed_url(url).with_placeholder_password


def reject_bad_answers(answers: dict) -> str:
    """Stop the bake, before anything is written, when an answer cannot work.

    Rendered from ``cookiecutter.json`` after the last prompt. cookiecutter's command line
    prints a FailedHookException's message alone and exits 1, where a failing
    pre_gen_project hook would be buried under a traceback; and the replay file, which
    would hold every answer, has not been written yet.
    """
    report = check_answers(answers)
    for notice in report.notices:
        print(notice, file=sys.stderr)
    if report.problems:
        lines = ["The answers were not accepted, and nothing was written:", *report.problems]
        raise FailedHookException("\n".join(lines))
    replay_file = replay.replay_file_of_this_bake()
    if replay_file is not None and database_url.parse(str(answers["database_url"])).password:
        # The hooks redact it on every path that reaches them; this covers the rest.
        atexit.register(redact_replay_at_exit, replay_file)
    return "checked"


def redact_replay_at_exit(replay_file: Path) -> None:
    if replay.redact(replay_file):
        print(f"Removed the database password from cookiecutter's replay file {replay_file}")


def replay_file() -> str:
    path = replay.replay_file_of_this_bake()
    return str(path) if path else ""


class TemplateExtension(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["toml_string"] = toml_string
        environment.filters["python_string"] = python_string
        environment.filters["python_bool"] = python_bool
        environment.filters["seconds"] = seconds
        environment.filters["public_database_url"] = public_database_url
        environment.filters["database_url_with_placeholder"] = database_url_with_placeholder
        environment.filters["reject_bad_answers"] = reject_bad_answers
        environment.globals["replay_file"] = replay_file
        # The hook scripts run from a temporary copy; this is how they find this package.
        environment.globals["template_dir"] = str(Path(__file__).resolve().parent.parent)
