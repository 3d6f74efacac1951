"""The git commit a workflow's files are at, read from .git without running git."""

from __future__ import annotations

from pathlib import Path


def git_commit(start: Path) -> str | None:
    """HEAD's commit id for the repository holding `start`, or None outside a repository."""
    for folder in (start, *start.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = git.read_text(encoding="utf-8").strip()
            if text.startswith("gitdir:"):
                git = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if git.is_dir():
            return _resolve_head(git)
    return None


def _resolve_head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head.removeprefix("ref:").strip()
    common = _common_dir(git)
    for base in (git, common):
        try:
            return (base / ref).read_text(encoding="utf-8").strip()
        except OSError:
            pass
    try:
        packed = (common / "packed-refs").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in packed.splitlines():
        commit, _, name = line.partition(" ")
        if name == ref:
            return commit
    return None  # an unborn branch: no commit yet


def _common_dir(git: Path) -> Path:
    try:
        return (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
    except OSError:
        return git
