"""The baked README's "Adding a resource" guide, followed to the letter on a fresh bake.

Its code blocks are applied as each one's first line says (added at the end of a file, a
new file, the app.py edit) and its commands run, ``uv run X`` as the baked venv's ``X``.
The project must then be lint-clean and formatted, the migration autogenerate wrote
included, and pass its own tests, the guide's new ones among them, on SQLite and on
PostgreSQL: the guide cannot drift from the code it extends.
"""

import re
import shlex
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .support import BakedVenv, bake_and_install, clean_environment, package_name, run

pytestmark = pytest.mark.slow

SECTION = "## Adding a resource"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# The first line of a Python block: "# src/pkg/models.py (add at the end)".
LABEL = re.compile(r"# (?P<path>\S+) \((?P<how>[^)]+)\)")
APPEND = "add at the end"
NEW_FILE = "new file"
APP_EDIT = "change the routers import, and include the router"
ROUTERS_IMPORT = re.compile(r"^from \.routers import \w+(, \w+)*$", re.MULTILINE)
INCLUDE = re.compile(r"[ \t]+app\.include_router\(\w+\.router\)")
# The existing line the guide's include line goes after.
ANCHOR = "app.include_router(items.router)"
SHELL_OPERATORS = re.compile(r"[|;&<>]+")


@dataclass
class Guide:
    """What following the guide's code blocks left to do: its commands, and its tests."""

    commands: list[list[str]] = field(default_factory=list)
    # The tests of the guide's new test modules, as junit ids ("tests.test_tags.test_x").
    tests: set[str] = field(default_factory=set)


def guide_blocks(readme: str) -> list[tuple[str, str]]:
    """The section's fenced code blocks, in order, as (language, text)."""
    start = readme.find(f"\n{SECTION}\n")
    assert start != -1, f"the baked README.md has no {SECTION!r} section"
    end = readme.find("\n## ", start + 1)
    blocks = FENCE.findall(readme[start : end if end != -1 else None])
    assert blocks, f"the baked README.md's {SECTION!r} section has no code blocks"
    return blocks


def append(path: Path, code: str) -> None:
    assert path.is_file(), f"{path} does not exist: the guide adds at the end of it"
    existing, added = path.read_text().rstrip("\n"), code.strip("\n")
    # Two blank lines before a top-level definition, as ruff format wants them.
    path.write_text(f"{existing}\n\n\n{added}\n")


def create(path: Path, code: str) -> None:
    assert not path.exists(), f"{path} exists already: the guide makes it as a new file"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code.lstrip("\n"))


def edit_app(path: Path, code: str, where: str) -> None:
    """Replace the routers import with the guide's, and include the guide's router."""
    lines = [line for line in code.splitlines() if line.strip()]
    shape = (
        f"{where} should hold one `from .routers import ...` line and one indented "
        f"`app.include_router(....router)` line, nothing else; it holds:\n{code}"
    )
    assert len(lines) == 2, shape
    new_import, include = lines
    assert ROUTERS_IMPORT.fullmatch(new_import), shape
    assert INCLUDE.fullmatch(include), shape

    source = path.read_text()
    assert len(ROUTERS_IMPORT.findall(source)) == 1, f"{path}: not one `from .routers import`"
    source = ROUTERS_IMPORT.sub(lambda _: new_import, source)
    source_lines = source.splitlines(keepends=True)
    anchors = [i for i, line in enumerate(source_lines) if line.strip() == ANCHOR]
    assert len(anchors) == 1, f"{path}: not one `{ANCHOR}` line to add the guide's after"
    source_lines.insert(anchors[0] + 1, include + "\n")
    path.write_text("".join(source_lines))


def shell_commands(text: str, where: str) -> list[list[str]]:
    """Each command of a shell block, ``uv run`` taken off; ``a && b`` is two commands."""
    commands = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        words = shlex.split(line)
        start = 0
        for end in [*(i for i, word in enumerate(words) if word == "&&"), len(words)]:
            command = words[start:end]
            start = end + 1
            assert command[:2] == ["uv", "run"] and len(command) > 2, (
                f"{where}: `{line}` is not `uv run ...` commands joined by &&"
            )
            assert not any(SHELL_OPERATORS.fullmatch(word) for word in command), (
                f"{where}: `{line}` uses shell operators other than &&"
            )
            commands.append(command[2:])
    return commands


def follow_guide(project: Path) -> Guide:
    """Apply the guide's code blocks to the project; return its commands and its tests."""
    guide = Guide()
    blocks = guide_blocks((project / "README.md").read_text())
    for number, (language, text) in enumerate(blocks, 1):
        where = f"block {number} of README.md's {SECTION!r} section"
        if language in ("bash", "sh", "shell"):
            guide.commands += shell_commands(text, where)
            continue
        assert language == "python", f"{where} is neither Python nor shell: ```{language}"
        label, _, code = text.partition("\n")
        named = LABEL.fullmatch(label)
        assert named, f"{where} does not name its file on its first line: {label!r}"
        relative = Path(named["path"])
        assert not relative.is_absolute() and ".." not in relative.parts, label
        path = project / relative
        if named["how"] == APPEND:
            append(path, code)
        elif named["how"] == NEW_FILE:
            create(path, code)
            if relative.parts[0] == "tests" and relative.name.startswith("test_"):
                module = ".".join(relative.with_suffix("").parts)
                names = re.findall(r"^(?:async )?def (test_\w+)", code, re.MULTILINE)
                guide.tests |= {f"{module}.{name}" for name in names}
        elif named["how"] == APP_EDIT:
            edit_app(path, code, where)
        else:
            pytest.fail(f"{where}: {named['how']!r} is not one of the ways the test applies")
    return guide


def run_suites(
    venv: BakedVenv, project: Path, arguments: list[str], databases: dict[str, dict[str, str]]
) -> dict[str, dict[str, set[str]]]:
    """The guide's pytest command on each database, side by side; the test ids by outcome.

    The suites share nothing but the project's files, which they only read (the migration
    tests write their revisions in a copy), so they run at the same time, one a core.
    """
    reports = {database: project.parent / f"report-{database}.xml" for database in databases}

    def suite(database: str) -> str:
        done = run(
            venv.bin("pytest"), *arguments,
            "-p", "no:cacheprovider", f"--junitxml={reports[database]}",
            cwd=project,
            env=clean_environment(**databases[database]),
        )  # fmt: skip
        return "" if done.returncode == 0 else done.stdout[-6000:] + done.stderr[-2000:]

    with ThreadPoolExecutor() as pool:
        failures = dict(zip(databases, pool.map(suite, databases), strict=True))
    for database, output in failures.items():
        assert not output, f"`uv run pytest` failed on {database}:\n{output}"

    outcomes: dict[str, dict[str, set[str]]] = {}
    for database, report in reports.items():
        outcomes[database] = {"passed": set(), "skipped": set()}
        for case in ElementTree.parse(report).iter("testcase"):
            outcome = "passed" if case.find("skipped") is None else "skipped"
            # A parametrized test's cases count under the test's name.
            name = case.get("name", "").split("[")[0]
            outcomes[database][outcome].add(f"{case.get('classname')}.{name}")
    return outcomes


CASES = [
    pytest.param({}, False, id="defaults-autogenerate-on-sqlite"),
    # autogenerate on PostgreSQL: left to Alembic, a server default such as func.now() is
    # written in PostgreSQL's SQL (now(), unknown to SQLite); the suites run it on both.
    pytest.param({}, True, id="defaults-autogenerate-on-postgres"),
    pytest.param({"use_alembic": False}, False, id="no-alembic"),
]


@pytest.mark.parametrize(("context", "autogenerate_on_postgres"), CASES)
def test_adding_a_resource_as_the_readme_says(
    cookies,
    baked_venv: BakedVenv,
    scratch_database: str,
    context: dict,
    autogenerate_on_postgres: bool,
) -> None:
    project = bake_and_install(cookies, baked_venv, context)
    use_alembic = context.get("use_alembic", True)
    versions = project / "src" / package_name(project) / "migrations" / "versions"
    migrations_before = set(versions.glob("*.py"))
    # The database the guide's commands (alembic) work on; the app's default otherwise.
    guide_env = {"DATABASE_URL": scratch_database} if autogenerate_on_postgres else {}
    guide_database = guide_env.get("DATABASE_URL", "unset (the settings' default)")
    # Where the project's tests run: SQLite, and a PostgreSQL database of their own.
    test_databases = {"SQLite": {}, "PostgreSQL": {"TEST_DATABASE_URL": scratch_database}}

    guide = follow_guide(project)

    assert guide.tests, f"the guide adds no test module (tests/test_*.py) in {SECTION!r}"
    suites: dict[str, dict[str, set[str]]] = {}
    for command in guide.commands:
        if command[0] == "pytest":
            suites = run_suites(baked_venv, project, command[1:], test_databases)
            continue
        executable = baked_venv.bin(command[0])
        assert executable.exists(), f"`uv run {shlex.join(command)}`: no {command[0]} in the venv"
        done = run(executable, *command[1:], cwd=project, env=clean_environment(**guide_env))
        assert done.returncode == 0, (
            f"`uv run {shlex.join(command)}` failed on the freshly baked project the guide's "
            f"blocks and commands before it were applied to, DATABASE_URL {guide_database}:\n"
            f"{done.stdout[-4000:]}{done.stderr[-4000:]}"
        )

    alembic_commands = [command for command in guide.commands if command[0] == "alembic"]
    if use_alembic:
        autogenerate = ["revision", "--autogenerate"]
        assert any(command[1:3] == autogenerate for command in alembic_commands), guide.commands
        (migration,) = set(versions.glob("*.py")) - migrations_before
        assert '"tags"' in migration.read_text(), migration.read_text()
    else:
        assert not alembic_commands, "without Alembic the guide has no migration step"
    # The whole project, the new migration included, whatever commands the guide gives.
    for check in (["check", "."], ["format", "--check", "."]):
        ruff = run(baked_venv.bin("ruff"), *check, cwd=project, env=clean_environment())
        assert ruff.returncode == 0, f"ruff {shlex.join(check)}:\n{ruff.stdout}{ruff.stderr}"
    assert set(suites) == {"SQLite", "PostgreSQL"}, f"the guide runs no pytest: {guide.commands}"
    for database, outcomes in suites.items():
        missing = guide.tests - outcomes["passed"]
        assert not missing, f"the guide's tests that did not pass on {database}: {missing}"
    assert not suites["PostgreSQL"]["skipped"], suites["PostgreSQL"]["skipped"]
