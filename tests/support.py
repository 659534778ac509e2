"""Helpers for the template's tests: running commands and the shared baked virtualenv."""

import subprocess
import sys
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent.parent


def run(*command: str | Path, cwd: Path | None = None, env: dict | None = None, timeout=300):
    """Run a command to completion and return it; output is kept for assertion messages."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class BakedVenv:
    """One virtualenv for every baked project of the run.

    Every variant declares the same dependencies (``test_every_variant_declares_the_same
    _dependencies`` checks it), so they are installed once, from the first bake, and each
    baked project is then installed into it editable, without dependencies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"

    def create(self, first_project: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(self.path)], check=True)
        self.pip("install", "--quiet", "--upgrade", "pip")
        # hatchling and editables: what the editable installs below build with.
        self.pip("install", "--quiet", "hatchling", "editables", f"{first_project}[dev]")

    def pip(self, *args: str) -> None:
        result = run(self.python, "-m", "pip", *args)
        assert result.returncode == 0, result.stdout + result.stderr

    def install(self, project: Path) -> None:
        self.pip(
            "install", "--quiet", "--no-deps", "--no-build-isolation", "--editable", str(project)
        )

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name
