"""Runs after the answers are saved and before any file is written."""

import json
import sys
from pathlib import Path

# Answers arrive as JSON in a raw string (spaced from its quotes): data, never code.
ANSWERS = json.loads(r""" {{ cookiecutter | tojson }} """)
REPLAY_FILE = json.loads(r""" {{ replay_file() | tojson }} """)
sys.path.insert(0, json.loads(r""" {{ template_dir | tojson }} """))

from hooks import replay  # noqa: E402
from hooks.validation import check_answers  # noqa: E402

# cookiecutter has just written every answer to its replay file, the password included.
if REPLAY_FILE and replay.redact(Path(REPLAY_FILE)):
    print(f"Removed the database password from cookiecutter's replay file {REPLAY_FILE}")

# The answers were checked while they were rendered; a --replay bake skips that step.
problems = check_answers(ANSWERS).problems
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
