"""The git commit recorded with each run."""

from __future__ import annotations

import subprocess

from smallops.gitinfo import git_commit


def test_git_commit_is_read_from_the_repository(tmp_path):
    assert git_commit(tmp_path) is None or len(git_commit(tmp_path) or "") == 40
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    assert git_commit(repo) is None  # no commit yet
    (repo / "f").write_text("x")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(repo) == head
    run("pack-refs", "--all")
    assert git_commit(repo) == head
