"""Keep the database password out of every file git would commit in a baked project."""

from pathlib import Path

from hooks import database_url


def write_env_file(project_dir: Path, url: str) -> bool:
    """Write the full URL to the project's git-ignored ``.env`` when it holds a password.

    Tracked files carry the URL without its password; the settings read ``.env`` at start,
    so the app still connects. Returns whether a file was written.
    """
    parsed = database_url.parse(url)
    if parsed is None or not parsed.password:
        return False
    env_file = project_dir / ".env"
    # Single quotes: python-dotenv takes the value literally, so '#' does not start a comment.
    env_file.write_text(f"DATABASE_URL='{url.strip()}'\n", encoding="utf-8")
    env_file.chmod(0o600)
    return True
