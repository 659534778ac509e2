"""The template's Jinja extension: answers are checked, and rendered as data, never as code.

Listed in ``cookiecutter.json`` under ``_extensions``; cookiecutter puts the template
directory on ``sys.path`` while it renders, which is how it finds ``hooks``.
"""

import atexit
import inspect
import json
import sys
from pathlib import Path
from types import FrameType

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


def calling_frame(module: str, function: str) -> FrameType | None:
    """The frame of a running call of ``module.function`` below this one, if any.

    cookiecutter hands a filter the answers and nothing else; what it and cruft are doing
    is read off their running calls instead.
    """
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == function and frame.f_globals.get("__name__") == module:
            return frame
        frame = frame.f_back
    return None


def prompted_interactively() -> bool:
    """Whether the answers are being typed at cookiecutter's prompts, one after the other.

    Asks the running ``cookiecutter.prompt.prompt_for_config()`` call for its ``no_input``
    argument; the command line, the Python API, pytest-cookies and cruft all ask their
    questions through it. Outside it (or if cookiecutter renames it) the answer is no, and
    every answer is checked after the last one, as with --no-input: later, never skipped.
    """
    frame = calling_frame("cookiecutter.prompt", "prompt_for_config")
    return frame is not None and not frame.f_locals.get("no_input", True)


def cruft_command() -> str | None:
    """What cruft is doing, if this bake is cruft's.

    "create" under ``cruft create``; "regenerate" while ``cruft update`` or ``cruft diff``
    renders the template again in a temporary folder to compute the change (cruft #143,
    #199, #334: the hooks run there too, and must neither touch the user's project nor
    make a git repository that would end up in the diff); None otherwise.
    """
    if calling_frame("cruft._commands.utils.generate", "_generate_output"):
        return "regenerate"
    if calling_frame("cruft._commands.create", "create"):
        return "create"
    return None


def refuse(problems: list[str]) -> Exception:
    """The exception that stops the bake, with one line per problem and nothing else.

    cookiecutter's command line prints a FailedHookException's message alone and exits 1,
    where a failing pre_gen_project hook would be buried under a traceback. cruft prints a
    traceback for any exception but SystemExit: under cruft the lines are printed here,
    and SystemExit(1) ends the command.
    """
    answers = "The answer was" if len(problems) == 1 else "The answers were"
    message = "\n".join([f"{answers} not accepted, and nothing was written:", *problems])
    if cruft_command() is not None:
        print(message, file=sys.stderr)
        return SystemExit(1)
    return FailedHookException(message)


def check_answer_now(answers: dict, name: str) -> str:
    """Check the answer just given to ``name``, right after its prompt.

    Rendered from ``cookiecutter.json``'s ``__check_<name>`` key, which follows ``name``.
    Typed at the prompts, a bad answer stops the bake at once, instead of after every later
    question has been answered in vain. With --no-input there is nothing to stop early, so
    its problems wait for ``reject_bad_answers``, which reports them all together. Notices
    (a URL rewritten for the async driver, ...) are printed either way.
    """
    report = check_answer(name, answers)
    if cruft_command() != "regenerate":  # the user saw them when the project was made
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
    keep_the_password_out_of_the_answers(answers)
    return "checked"


# The database password of the bake under way, in this process only, by the URL without it.
_passwords: dict[str, str] = {}


def keep_the_password_out_of_the_answers(answers: dict) -> None:
    """Put change-me in the answers in place of the database password, and keep the
    password here for the post_gen_project hook, which writes it to ``.env`` only.

    What cookiecutter and cruft save of a bake is these answers: cookiecutter's replay
    file, and cruft's ``.cruft.json``, which the project commits and which ``cruft update``
    renders the template from again. Neither then holds the password, and a re-render
    puts the same change-me in tracked files as the first bake did.
    """
    _passwords.clear()
    parsed = database_url.parse(database_url.normalise(str(answers["database_url"]))[0])
    if parsed is not None and parsed.password and parsed.password != database_url.PLACEHOLDER:
        _passwords[parsed.without_password] = parsed.password
        answers["database_url"] = parsed.with_placeholder_password


def database_password(url: str) -> str | None:
    """The password taken out of this bake's ``url``, for the hook that writes ``.env``;
    None when the answers came without one (a --replay bake, a cruft re-render)."""
    return _passwords.get(_parsed_url(url).without_password)


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
        environment.filters["database_password"] = database_password
        environment.globals["replay_file"] = replay_file
        environment.globals["cruft_command"] = cruft_command
        # The hook scripts run from a temporary copy; this is how they find this package.
        environment.globals["template_dir"] = str(Path(__file__).resolve().parent.parent)
