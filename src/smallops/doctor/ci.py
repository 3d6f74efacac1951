"""Finding the CI file that runs the eval gate (`smallops eval --ci`).

The project may be a folder of a larger repository, so the CI files of every folder from the
project up to the repository's root (the folder holding .git) are read. A line counts when it
runs `smallops ... eval` outside a comment; it gates when it says `--ci`. CI systems read their
files at the repository's root only (`smallops init` inside a repository writes them in the
project's folder), so a gate found below the root is `misplaced`: it never runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Where the CI systems small teams use keep their pipelines, relative to the repository.
CI_FILES = (
    ".github/workflows/*.yml",
    ".github/workflows/*.yaml",
    ".gitlab-ci.yml",
    ".circleci/config.yml",
    "bitbucket-pipelines.yml",
    "azure-pipelines.yml",
    ".buildkite/*.yml",
    ".drone.yml",
    ".woodpecker.yml",
    ".woodpecker/*.yml",
    "Jenkinsfile",
)
_EVAL = re.compile(r"\bsmallops\b.*\seval\b")
_GATE = re.compile(r"\s--ci\b")
_COMMENT = re.compile(r"^\s*(#|//)")


@dataclass(frozen=True)
class Line:
    """A line of a CI file, for evidence: `path:number`."""

    path: Path
    number: int

    def shown(self, root: Path) -> str:
        try:
            where = self.path.relative_to(root)
        except ValueError:
            where = self.path
        return f"{where}:{self.number}"


@dataclass(frozen=True)
class CiScan:
    """The CI files found, the first line that runs the gate, the first that runs the evals
    without gating on them, and the first gate in a file CI never reads (below the root)."""

    files: tuple[Path, ...]
    gate: Line | None
    ungated: Line | None
    misplaced: Line | None = None


def scan_ci(root: Path) -> CiScan:
    folders = _folders(root)
    repository = folders[-1] if (folders[-1] / ".git").exists() else None
    found = [
        (path, repository is None or folder == repository)
        for folder in folders
        for path in _ci_files(folder)
    ]
    gate = ungated = misplaced = None
    for path, read in found:
        for number, text in enumerate(_lines(path), start=1):
            line = text.split(" #")[0]  # a comment at the end of the line is not run
            if _COMMENT.match(line) or not _EVAL.search(line):
                continue
            if not read:  # below the repository's root: CI never reads it
                misplaced = misplaced or (Line(path, number) if _GATE.search(line) else None)
            elif _GATE.search(line):
                gate = gate or Line(path, number)
            else:
                ungated = ungated or Line(path, number)
    return CiScan(tuple(path for path, _ in found), gate, ungated, misplaced)


def _folders(root: Path) -> list[Path]:
    """The project and the folders above it, up to the repository's root (the project alone
    when it is not in a repository)."""
    folders = []
    for folder in (root, *root.parents):
        folders.append(folder)
        if (folder / ".git").exists():
            return folders
    return [root]


def _ci_files(folder: Path) -> list[Path]:
    return sorted(path for pattern in CI_FILES for path in folder.glob(pattern) if path.is_file())


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
