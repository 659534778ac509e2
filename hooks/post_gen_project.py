"""Put the password where git will not see it, then tell the user what to do next."""

import json
import sys
from pathlib import Path

ANSWERS = json.loads(
    r"""
{{ cookiecutter | tojson }}
""".strip()
)
sys.path.insert(0, {{ template_dir | tojson }})

from hooks.env_file import write_env_file  # noqa: E402

project_dir = Path.cwd()
if write_env_file(project_dir, ANSWERS["database_url"]):
    print(f"The database password went to {project_dir / '.env'} (git-ignored), not to tracked files.")
print(
    f"""
Next steps:
    cd {ANSWERS["project_slug"]}
    python -m venv .venv && .venv/bin/pip install -e ".[dev]"
    .venv/bin/uvicorn {ANSWERS["package_name"]}.main:app --reload
    .venv/bin/pytest
"""
)
