"""The scorecard page (`/doctor`): the same findings as `smallops doctor --json`, in HTML and
JSON, behind the same login as every page; a log that does not answer is a failed practice on
the page, not a 503 (test_doctor_browser.py shows it in a real Chromium)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smallops.project import Project
from smallops.review.desk import ReviewDesk
from smallops.storage.db import get_engine, normalise_url

from conftest import smallops

pytest.importorskip("starlette", reason="the web extra is not installed")
from starlette.testclient import TestClient

from smallops.web.app import create_app
from smallops.web.auth import hash_password

JSON_HEADERS = {"Accept": "application/json"}


def demo(tmp_path: Path, capsys: Any) -> Path:
    folder = tmp_path / "demo"
    assert smallops(capsys, "demo", "--dir", str(folder))[0] == 0
    return folder


def app_for(folder: Path, **options: Any) -> Any:
    project = Project(folder)
    desk = ReviewDesk(project.engine(), project.workflows)
    return create_app(desk, project.settings, env={}, secret_key=b"test-secret-key", **options)


def with_reviewer(folder: Path, name: str, password: str) -> None:
    toml = folder / "smallops.toml"
    toml.write_text(toml.read_text() + f'\n[reviewers]\n{name} = "{hash_password(password)}"\n')


def client_for(folder: Path) -> TestClient:
    app = app_for(folder, require_login=False, reviewer="ann")
    return TestClient(app, base_url="http://127.0.0.1")


def test_the_page_shows_what_the_cli_finds_in_html_and_json(tmp_path, capsys):
    folder = demo(tmp_path, capsys)
    code, out, _ = smallops(capsys, "-p", str(folder), "doctor", "--json")
    cli = json.loads(out)
    client = client_for(folder)
    page = client.get("/doctor", headers=JSON_HEADERS).json()
    assert code == 1 and page["met"] is cli["met"] is False
    assert [(p["id"], p["status"], p["fix"]) for p in page["practices"]] == [
        (p["id"], p["status"], p["fix"]) for p in cli["practices"]
    ]
    assert page["tiers"] == cli["tiers"] and page["project"] == str(folder.resolve())
    html = client.get("/doctor").text
    assert 'aria-current="page">Doctor' in html.replace('class="current" ', "")
    assert "Tier 3 not met." in html and "3 practices fail" in html
    assert html.count('<li class="practice status-') == 12
    assert '<li class="practice status-fail" id="cost_tracked">' in html
    assert "[prices.&#34;fake:keyword-rules&#34;]" in html  # escaped, as every value is
    assert client.get("/doctor?tier=1", headers=JSON_HEADERS).json()["met"] is True
    html = client.get("/doctor?tier=1").text
    assert "Tier 1 met." in html and "beyond tier 1: shown, not judged" in html


def test_a_tier_that_is_not_1_2_or_3_is_a_400(tmp_path, capsys):
    client = client_for(demo(tmp_path, capsys))
    answer = client.get("/doctor?tier=4", headers=JSON_HEADERS)
    assert answer.status_code == 400 and "tier '4' is not one of 1, 2, 3" in answer.json()["error"]


def test_the_page_asks_for_a_login_like_every_page(tmp_path, capsys):
    folder = demo(tmp_path, capsys)
    with_reviewer(folder, "dana", "a long test password")
    app = app_for(folder, require_login=True)
    client = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
    assert client.get("/doctor").headers["location"] == "/login?next=%2Fdoctor"
    assert client.get("/doctor", headers=JSON_HEADERS).status_code == 401


def test_a_log_that_does_not_answer_is_a_failed_practice_on_the_page(tmp_path, capsys):
    folder = init_with_log_elsewhere(tmp_path, capsys)
    client = client_for(folder)
    assert client.get("/doctor", headers=JSON_HEADERS).json()["practices"][0]["status"] == "warn"
    get_engine(normalise_url(f"sqlite:///{tmp_path / 'db' / 'log.db'}", folder)).dispose()
    (tmp_path / "db").rename(tmp_path / "db-away")
    answer = client.get("/doctor", headers=JSON_HEADERS)
    assert answer.status_code == 200
    logged = answer.json()["practices"][0]
    assert (logged["status"], logged["evidence"]) == ("fail", "the log database does not answer")
    assert "Every call logged" in client.get("/doctor").text


def init_with_log_elsewhere(tmp_path: Path, capsys: Any) -> Path:
    """A fresh project whose SQLite log lives in a folder the test can take away."""
    folder = tmp_path / "ops"
    assert smallops(capsys, "init", str(folder))[0] == 0
    (tmp_path / "db").mkdir()
    toml = folder / "smallops.toml"
    database = f"sqlite:///{tmp_path / 'db' / 'log.db'}"
    toml.write_text(toml.read_text().replace("sqlite:///.smallops/smallops.db", database))
    return folder
