"""Keep the database password out of cookiecutter's replay file.

cookiecutter writes every answer to ``<replay_dir>/<template>.json`` (world-readable)
after the prompts and before any hook runs, including a bake that fails later.
"""

import json
import sys
from pathlib import Path

from hooks import database_url


def replay_file_of_this_bake() -> Path | None:
    """Where cookiecutter writes this bake's answers, or None when it is not baking.

    cookiecutter hands its configuration to no template code, so this reads it from the
    running ``cookiecutter.main.cookiecutter()`` call, through which the CLI, the Python
    API and pytest-cookies all bake.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if (
            frame.f_code.co_name == "cookiecutter"
            and frame.f_globals.get("__name__") == "cookiecutter.main"
        ):
            config, template_name = (
                frame.f_locals.get("config_dict"),
                frame.f_locals.get("template_name"),
            )
            if config and template_name:
                from cookiecutter.replay import get_file_name

                return Path(get_file_name(config["replay_dir"], template_name))
        frame = frame.f_back
    return None


def redact(replay_file: Path) -> bool:
    """Drop the password from the database URL answers in ``replay_file``.

    Returns whether there was one to drop.
    """
    if not replay_file.is_file():
        return False
    replay = json.loads(replay_file.read_text(encoding="utf-8"))
    redacted = False
    # "cookiecutter" holds the answers; "_cookiecutter" the defaults with --no-input values.
    for answers in (replay.get("cookiecutter", {}), replay.get("_cookiecutter", {})):
        url = answers.get("database_url")
        parsed = database_url.parse(url) if isinstance(url, str) else None
        if parsed is not None and parsed.password:
            answers["database_url"] = parsed.without_password
            redacted = True
    if redacted:
        replay_file.write_text(json.dumps(replay, indent=2), encoding="utf-8")
    return redacted
