"""README.md's CLI reference is the --help of every command (run this file to regenerate it)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def help_text(args: list[str]) -> str:
    """The help as a wide terminal shows it (help follows the terminal, up to 100 columns)."""
    from smallops.cli import main

    buffer = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    try:
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            main([*args, "--help"])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return buffer.getvalue().rstrip()


def commands() -> list[list[str]]:
    """Every command and subcommand, in the order the CLI registers them."""
    import typer

    from smallops.cli import app

    found: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def reference() -> str:
    blocks = []
    for args in commands():
        title = " ".join(["smallops", *args])
        blocks.append(f"### `{title}`\n\n```text\n{help_text(args)}\n```")
    return "\n\n".join(blocks)


def _section(text: str) -> str:
    match = re.search(re.escape(START) + r"\n(.*?)\n?" + re.escape(END), text, re.DOTALL)
    assert match, "README.md lost its cli-reference markers"
    return match.group(1).strip()


def test_readme_cli_reference_matches_help():
    assert _section(README.read_text()) == reference(), (
        "README.md's CLI reference is out of date: run `python tests/test_readme.py`"
    )


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first, second = re.findall(r"```sh\n(.*?)\n```", text, re.DOTALL)[:2]
    assert "pip install ." in first and "smallops demo" in first
    assert "pytest" in second
    assert "pytest" in (README.parent / ".ci" / "run").read_text()


if __name__ == "__main__":
    text = README.read_text()
    new = text.replace(_section(text) + "\n", "") if _section(text) else text
    new = new.replace(START + "\n" + END, f"{START}\n{reference()}\n{END}")
    README.write_text(new)
    sys.exit(0)
