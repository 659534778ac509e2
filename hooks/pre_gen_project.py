"""Reject answers the baked service could not run with, before any file is written."""

import json
import sys

ANSWERS = json.loads(
    r"""
{{ cookiecutter | tojson }}
""".strip()
)
sys.path.insert(0, {{ template_dir | tojson }})

from hooks.validation import check_answers  # noqa: E402

problems = check_answers(ANSWERS)
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
