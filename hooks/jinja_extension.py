"""The template's Jinja extension: answers are checked, and rendered as data, never as code.

Listed in ``cookiecutter.json`` under ``_extensions``; cookiecutter puts the template
directory on ``sys.path`` while it renders, which is how it finds ``hooks``.
"""

import atexit
import inspect
import json
import sys
from pathlib import Path

from cookiecutter.exceptions import FailedHookException
from jinja2 import Environment
from jinja2.ext import Extension

from hooks import database_url, replay
from hooks.validation import check_answer, check_answers, parse_boolean


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


def prompted_interactively() -> bool:
    """Whether the answers are being typed at cookiecutter's prompts, one after the other.

    cookiecutter hands a filter the answers and nothing else, so this asks the running
    ``cookiecutter.prompt.prompt_for_config()`` call for its ``no_input`` argument; the
    command line, the Python API, pytest-cookies and cruft all ask their questions
    through it. Outside it (or if cookiecutter renames it) the answer is no, and every
    answer is checked after the last one, as with --no-input: later, never skipped.
    """
    frame = inspect.currentframe()
    while frame is not None:
        if (
            frame.f_code.co_name == "prompt_for_config"
            and frame.f_globals.get("__name__") == "cookiecutter.prompt"
        ):
            return not frame.f_locals.get("no_input", True)
        frame = frame.f_back
    return False


def refuse(problems: list[str]) -> FailedHookException:
    """The exception that stops the bake, with one line per problem and nothing else.

    cookiecutter's command line prints a FailedHookException's message alone and exits 1,
    where a failing pre_gen_project hook would be buried under a traceback.
    """
    answers = "The answer was" if len(problems) == 1 else "The answers were"
    return FailedHookException(
        "\n".join([f"{answers} not accepted, and nothing was written:", *problems])
    )


def check_answer_now(answers: dict, name: str) -> str:
    """Check the answer just given to ``name``, right after its prompt.

    Rendered from ``cookiecutter.json``'s ``__check_<name>`` key, which follows ``name``.
    Typed at the prompts, a bad answer stops the bake at once, instead of after every later
    question has been answered in vain. With --no-input there is nothing to stop early, so
    its problems wait for ``reject_bad_answers``, which reports them all together. Notices
    (a URL rewritten for the async driver, ...) are printed either way.
    """
    report = check_answer(name, answers)
    for notice in report.notices:
        print(notice, file=sys.stderr)
    if report.problems and prompted_interactively():
        raise refuse(report.problems)
    return "checked"


def reject_bad_answers(answers: dict) -> str:
    """Stop the bake, before anything is written, when an answer cannot work.

    Rendered from ``cookiecutter.json`` after the last prompt, and so before cookiecutter
    writes the replay file, which would hold every answer. A --no-input bake's problems
    are reported here, all at once; at the prompts ``check_answer_now`` has stopped at the
    first bad answer already. Notices are ``check_answer_now``'s to print.
    """
    report = check_answers(answers)
    if report.problems:
        raise refuse(report.problems)
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
        environment.filters["check_answer_now"] = check_answer_now
        environment.filters["reject_bad_answers"] = reject_bad_answers
        environment.globals["replay_file"] = replay_file
        # The hook scripts run from a temporary copy; this is how they find this package.
        environment.globals["template_dir"] = str(Path(__file__).resolve().parent.parent)
