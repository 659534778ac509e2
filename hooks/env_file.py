"""Keep the database password out of every file git would commit in a baked project."""

import os
from pathlib import Path

from hooks import database_url

# Characters that python-dotenv reads specially even inside quotes (a closing quote,
# "${...}" expansion, " #" comments). Percent-encoded, SQLAlchemy decodes them back to
# the same user name, password and database name.
DOTENV_SAFE_ESCAPES = str.maketrans(
    {"'": "%27", '"': "%22", "$": "%24", "#": "%23", "\\": "%5C", " ": "%20", "`": "%60"}
)


def write_env_file(project_dir: Path, url: str) -> bool:
    """Put the full URL in the project's git-ignored ``.env`` when it holds a password.

    Tracked files carry the URL with a placeholder; the settings read ``.env`` at start, so
    the app still connects. An existing ``.env`` (a bake over an earlier one) keeps its
    other lines. Returns whether the URL was written.
    """
    parsed = database_url.parse(url)
    if parsed is None or not parsed.password:
        return False
    scheme, separator, rest = parsed.full.partition("://")
    line = f"DATABASE_URL='{scheme}{separator}{rest.translate(DOTENV_SAFE_ESCAPES)}'\n"
    env_file = project_dir / ".env"
    kept = []
    if env_file.exists():
        kept = [
            kept_line
            for kept_line in env_file.read_text(encoding="utf-8").splitlines(keepends=True)
            if not kept_line.lstrip().startswith("DATABASE_URL=")
        ]
    # Created owner-only, so the password is never readable by others, even for a moment.
    descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("".join(kept) + line)
    env_file.chmod(0o600)
    return True
