"""Reject answers the baked service could not run with, before any file is written."""

import json
import sys

# Answers arrive as JSON in a raw string (spaced from its quotes): data, never code.
ANSWERS = json.loads(r""" {{ cookiecutter | tojson }} """)
sys.path.insert(0, json.loads(r""" {{ template_dir | tojson }} """))

from hooks.validation import check_answers  # noqa: E402

problems = check_answers(ANSWERS)
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
