"""Keep the database password out of every file git would commit in a baked project."""

from pathlib import Path

from hooks import database_url

# Characters that python-dotenv reads specially even inside quotes (a closing quote,
# "${...}" expansion, " #" comments). Percent-encoded, SQLAlchemy decodes them back to
# the same password.
DOTENV_SAFE_ESCAPES = str.maketrans(
    {"'": "%27", '"': "%22", "$": "%24", "#": "%23", "\\": "%5C", " ": "%20", "`": "%60"}
)


def write_env_file(project_dir: Path, url: str) -> bool:
    """Write the full URL to the project's git-ignored ``.env`` when it holds a password.

    Tracked files carry the URL without its password; the settings read ``.env`` at start,
    so the app still connects. Returns whether a file was written.
    """
    parsed = database_url.parse(url)
    if parsed is None or not parsed.password:
        return False
    safe_url = parsed.render(password=parsed.password.translate(DOTENV_SAFE_ESCAPES))
    env_file = project_dir / ".env"
    env_file.write_text(f"DATABASE_URL='{safe_url}'\n", encoding="utf-8")
    env_file.chmod(0o600)
    return True
