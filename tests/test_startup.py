"""Start-up stays light: `import smallops`, `import smallops.cli` and `smallops --help` load no
database driver, SDK, web server or template engine; each command imports those when it runs.

Structural, not timed (bench/startup.py times it): each case runs in a fresh interpreter and
lists the heavy packages it ended up with.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import smallops

#: What start-up must not load: each costs tens to hundreds of milliseconds.
HEAVY = (
    "sqlalchemy",
    "openai",
    "anthropic",
    "starlette",
    "uvicorn",
    "jinja2",
    "alembic",
    "psycopg",
    "limits",
    "redis",
    "genai_prices",
    "httpx",
)

SRC = Path(smallops.__file__).resolve().parent.parent

REPORT = (
    "import json, sys\n"
    f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
)


def _heavy_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after running `code`."""
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{REPORT}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    heavy: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return heavy


@pytest.mark.parametrize(
    "code", ["import smallops", "import smallops.cli", "from smallops import __version__"]
)
def test_importing_loads_no_heavy_package(code):
    assert _heavy_after(code) == []


@pytest.mark.parametrize(
    "argv", [["--help"], ["list", "--help"], ["review", "--help"], ["db", "--help"], ["--version"]]
)
def test_help_loads_no_heavy_package(argv):
    """As `smallops` runs it: main(), exiting through SystemExit."""
    code = f"from smallops.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _heavy_after(code) == []


def test_a_command_still_loads_what_it_needs():
    """The check above would pass vacuously if the subprocess never saw the packages."""
    assert "sqlalchemy" in _heavy_after("from smallops import Workflow")


def test_every_public_name_resolves_and_is_listed():
    names = [name for name in smallops.__all__ if name != "__version__"]
    for name in names:
        assert getattr(smallops, name) is not None
    assert set(smallops.__all__) <= set(dir(smallops))
    assert smallops.flush is importlib.import_module("smallops.storage.writer").flush_all
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = smallops.nothing_here  # type: ignore[attr-defined]


def test_a_database_error_is_still_one_line_and_exit_1(project, capsys, monkeypatch):
    """main() names SQLAlchemy's errors without importing SQLAlchemy at start-up."""
    from sqlalchemy.exc import OperationalError

    import smallops.storage.queries

    from conftest import smallops as run_cli

    def refused(*args: object, **kwargs: object) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused\nmore"))

    monkeypatch.setattr(smallops.storage.queries, "list_runs", refused)
    code, out, err = run_cli(capsys, "--project", str(project), "logs")
    assert code == 1 and out == ""
    assert err.startswith("error: database: (builtins.Exception) connection refused")
    assert len(err.splitlines()) == 1


def test_a_bug_still_raises_with_its_traceback(project, capsys, monkeypatch):
    import smallops.storage.queries

    from conftest import smallops as run_cli

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(smallops.storage.queries, "list_runs", broken)
    with pytest.raises(ZeroDivisionError):
        run_cli(capsys, "--project", str(project), "logs")
