"""The review UI through its JSON API and its HTML forms (Starlette's TestClient, no browser)."""

from __future__ import annotations

import json
import logging
import re
import stat
import time
from datetime import datetime, timezone
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smallops import FakeProvider, FakeReply, Settings, Workflow
from smallops.errors import ConfigError
from smallops.review.desk import ReviewDesk
from smallops.storage.db import ensure_schema
from smallops.storage.schema import review_decisions

from models import GOOD, Triage

pytest.importorskip("starlette", reason="the web extra is not installed")
from starlette.testclient import TestClient

from smallops.web import auth
from smallops.web.app import create_app, webhook_sender

PASSWORD = "correct horse battery"
TOKEN = "review-token-0123456789"
JSON_HEADERS = {"Accept": "application/json"}


def make(tmp_path: Path, database_url: str, answer: Any = None, **options: Any) -> Workflow:
    prompt = tmp_path / "triage.prompt"
    if not prompt.exists():
        prompt.write_text("[user]\n{{ text }}")
    provider = (
        answer if isinstance(answer, FakeProvider) else FakeProvider(answer or (lambda _: GOOD))
    )
    return Workflow(
        options.pop("name", "triage"),
        model="fake:rules",
        prompt="triage.prompt",
        output=options.pop("output", Triage),
        provider=provider,
        base_dir=tmp_path,
        retries=0,
        fallback="review",
        settings=Settings(root=tmp_path, database_url=database_url),
        **options,
    )


def serve(
    workflows: list[Workflow],
    *,
    require_login: bool = False,
    reviewer: str = "ann",
    reviewers: dict[str, str] | None = None,
    token: str | None = None,
    token_name: str | None = None,
) -> tuple[TestClient, ReviewDesk]:
    """A client for the app over these workflows' database, as tests/test_review.py builds it."""
    engine = workflows[0].plan().writer.store.engine
    workflows[0].plan().writer.flush()
    ensure_schema(engine)  # for tests that run nothing before asking
    desk = ReviewDesk(engine, {wf.name: wf for wf in workflows})
    settings = Settings(
        root=workflows[0].base_dir, database_url="unused", reviewers=reviewers or {}
    )
    app = create_app(
        desk,
        settings,
        require_login=require_login,
        reviewer=reviewer,
        secret_key=b"test-secret-key",
        env={
            **({auth.TOKEN_ENV: token} if token else {}),
            **({auth.TOKEN_NAME_ENV: token_name} if token_name else {}),
        },
    )
    return TestClient(app, base_url="http://127.0.0.1"), desk


def csrf(client: TestClient, path: str = "/") -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def decisions(desk: ReviewDesk) -> list[Any]:
    with desk.engine.connect() as connection:
        return connection.execute(select(review_decisions).order_by(review_decisions.c.id)).all()


def runs(wf: Workflow, count: int) -> list[str]:
    return [wf.run(text=f"email {i}").run_id for i in range(count)]


def test_the_queue_lists_pending_items_per_workflow_in_html_and_the_same_data_as_json(
    tmp_path, database_url
):
    wf = make(tmp_path, database_url)
    ids = runs(wf, 2)
    client, _ = serve([wf])
    page = client.get("/")
    assert page.status_code == 200 and "Start reviewing" in page.text
    assert all(run_id[-12:] in page.text for run_id in ids)
    data = client.get("/", headers=JSON_HEADERS).json()
    assert data["counts"] == {"triage": 2} and data["total"] == 2
    assert [i["run_id"] for i in data["items"]] == ids and data["reviewer"] == "ann"
    assert client.get("/?format=json").json()["counts"] == {"triage": 2}


def test_a_long_queue_is_counted_once_every_few_seconds_and_a_short_one_from_the_page(
    tmp_path, database_url, monkeypatch
):
    from sqlalchemy import event

    from smallops.web import queue_page

    monkeypatch.setattr(queue_page, "PAGE", 2)  # a queue of 3 is longer than a page
    wf = make(tmp_path, database_url)
    ids = runs(wf, 3)
    client, desk = serve([wf])
    statements: list[str] = []
    event.listen(desk.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    counted = lambda: sum("count(" in s.lower() for s in statements)  # noqa: E731
    assert client.get("/", headers=JSON_HEADERS).json()["counts"] == {"triage": 3}
    assert client.get("/", headers=JSON_HEADERS).json()["counts"] == {"triage": 3}
    assert counted() == 1  # the second page showed the count the first one read
    runs(wf, 1)  # queued by another process: counted once the count is FRESH seconds old
    wf.plan().writer.flush()
    assert client.get("/", headers=JSON_HEADERS).json()["counts"] == {"triage": 3}
    client.app.state.web.pending.fresh = 0  # type: ignore[attr-defined]
    assert client.get("/", headers=JSON_HEADERS).json()["counts"] == {"triage": 4}
    assert counted() == 2
    client.app.state.web.pending.fresh = 60  # type: ignore[attr-defined]
    for run_id in ids[:2]:
        assert client.post(f"/items/{run_id}/approve", data={"csrf": csrf(client)}).is_success
    data = client.get("/", headers=JSON_HEADERS).json()  # 2 left: the page holds them all
    assert data["counts"] == {"triage": 2} and len(data["items"]) == 2 and counted() == 2
    assert client.get("/?workflow=triage", headers=JSON_HEADERS).json()["counts"] == {"triage": 2}


def test_pending_counts_are_kept_while_fresh_and_a_page_that_shows_a_queue_whole_is_exact():
    import time

    from smallops.web.pending import PendingCounts, counted_from_page

    pending = PendingCounts(fresh=60)
    assert pending.recent() is None
    pending.keep({"triage": 2}, time.monotonic())
    assert pending.recent() == {"triage": 2}
    pending.keep({"triage": 9}, time.monotonic() - 30)  # a read that began before the last
    assert pending.recent() == {"triage": 2}
    pending.keep({}, time.monotonic())
    assert pending.recent() == {}  # an empty queue is a count too
    pending.fresh = 0
    assert pending.recent() is None
    page = [{"workflow": "triage"}, {"workflow": "triage"}, {"workflow": "leads"}]
    assert counted_from_page({"triage": 5, "spam": 1}, page, None) == {"triage": 2, "leads": 1}
    kept = {"triage": 5, "leads": 4}
    assert counted_from_page(kept, page[:2], "triage") == {"triage": 2, "leads": 4}
    assert counted_from_page(kept, [], "triage") == {"leads": 4}


def claimed(desk: ReviewDesk) -> dict[str, str]:
    """Who holds which pending item now (run id -> reviewer)."""
    now = datetime.now(timezone.utc)
    return {
        i["run_id"]: i["claimed_by"]
        for i in desk.items(limit=1000)
        if i["claimed_until"] is not None and i["claimed_until"] > now
    }


def test_reading_an_item_claims_nothing_and_a_posted_claim_shows_its_form(tmp_path, database_url):
    """A GET (a link from any site) only reads; the claim is a CSRF-checked POST, after which
    the page shows the output as a form with the choices as radio buttons."""
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    html = client.get(f"/items/{run_id}").text
    assert "email 0" in html and "Asks for the May invoice." in html
    assert 'id="claim"' in html and "Nobody holds this item" in html
    data = client.get(f"/items/{run_id}", headers=JSON_HEADERS).json()
    assert data["held_by"] is None and data["yours"] is False and data["read_only"] is False
    assert claimed(desk) == {}
    token = csrf(client, f"/items/{run_id}")
    page = client.post(f"/items/{run_id}/claim", data={"csrf": token})
    assert page.url.path == f"/items/{run_id}" and claimed(desk) == {run_id: "ann"}
    html = page.text
    billing = re.search(r'<input type="radio" name="out.category" value="billing"[^>]*>', html)
    assert billing and "checked" in billing.group(0)
    assert 'value="support">' in html  # the others are not checked
    assert re.search(r'<input type="radio" name="out.urgency" value="normal" checked>', html)
    assert 'name="out.summary"' in html and "Approve" in html and "<kbd>a</kbd>" in html
    assert 'id="claim"' not in html
    data = client.get(f"/items/{run_id}", headers=JSON_HEADERS).json()
    assert data["yours"] is True and data["held_by"] == "ann" and data["item"]["output"] == GOOD
    assert data["cannot_approve"] is None
    assert [f["type"] for f in data["item"]["fields"]] == ["choice", "choice", "string"]


def test_a_reviewer_holds_one_item_at_a_time_claiming_the_next_gives_back_the_one_before(
    tmp_path, database_url
):
    """Opening 20 items holds none; claiming, moving on with /next and deciding leave the
    reviewer holding exactly the item in front of them."""
    wf = make(tmp_path, database_url)
    ids = runs(wf, 22)
    client, desk = serve([wf])
    for run_id in ids[:20]:
        assert client.get(f"/items/{run_id}").status_code == 200
    assert claimed(desk) == {}
    token = csrf(client)
    for run_id in ids[5:10]:
        client.post(f"/items/{run_id}/claim", data={"csrf": token})
        assert claimed(desk) == {run_id: "ann"}
    assert client.post("/next", data={"csrf": token}).url.path == f"/items/{ids[0]}"
    assert claimed(desk) == {ids[0]: "ann"}
    answer = client.post(f"/items/{ids[3]}/claim", json={})
    assert answer.json()["yours"] is True and claimed(desk) == {ids[3]: "ann"}
    page = client.post(f"/items/{ids[3]}/approve", data={"csrf": token})
    assert page.url.path == f"/items/{ids[0]}" and claimed(desk) == {ids[0]: "ann"}
    desk.claim(ids[21], "bob")  # another reviewer's hold is not this reviewer's to give back
    client.post(f"/items/{ids[1]}/claim", data={"csrf": token})
    assert claimed(desk) == {ids[1]: "ann", ids[21]: "bob"}
    assert [h["action"] for h in desk.item(ids[0])["history"]] == []  # not recorded as a skip


def test_approve_correct_reject_and_skip_by_form_go_to_the_next_item_and_record_the_reviewer(
    tmp_path, database_url
):
    wf = make(tmp_path, database_url)
    a, b, c, d = runs(wf, 4)
    client, desk = serve([wf], reviewer="ann")
    token = csrf(client)
    assert client.post("/next", data={"csrf": token}).url.path == f"/items/{a}"
    page = client.post(f"/items/{a}/approve", data={"csrf": token})
    assert page.url.path == f"/items/{b}" and "Approved run" in page.text
    fixed = {"out.category": "support", "out.urgency": "high", "out.summary": "Fixed by hand."}
    page = client.post(f"/items/{b}/correct", data={"csrf": token, **fixed})
    assert page.url.path == f"/items/{c}"
    page = client.post(f"/items/{c}/skip", data={"csrf": token})
    assert page.url.path == f"/items/{d}"  # past the skipped one
    page = client.post(f"/items/{d}/reject", data={"csrf": token, "reason": "not an email"})
    assert page.url.path == "/" and "The queue is empty" in page.text
    assert [(r.run_id, r.action, r.reviewer) for r in decisions(desk)] == [
        (a, "approve", "ann"),
        (b, "correct", "ann"),
        (c, "skip", "ann"),
        (d, "reject", "ann"),
    ]
    assert desk.item(b)["final_output"] == {
        "category": "support",
        "urgency": "high",
        "summary": "Fixed by hand.",
    }
    assert desk.item(d)["reject_reason"] == "not an email"
    assert desk.item(c)["state"] == "pending"


def test_json_clients_decide_with_the_review_token_under_its_own_name(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    a, b, c = runs(wf, 3)
    client, desk = serve([wf], require_login=True, token=TOKEN, token_name="ci-bot")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/", headers=headers).json()["reviewer"] == "token:ci-bot"
    answer = client.post(f"/items/{a}/approve", headers=headers, json={})
    assert answer.status_code == 200 and answer.json()["decision"]["reviewer"] == "token:ci-bot"
    fixed = {**GOOD, "category": "sales"}
    named = {**headers, "X-Reviewer": "token:ci-bot"}  # its own name may be sent
    answer = client.post(f"/items/{b}/correct", headers=named, json={"output": fixed})
    assert answer.json()["decision"]["output"] == fixed
    answer = client.post(f"/items/{c}/reject", headers=headers, json={"reason": "duplicate"})
    assert answer.json()["decision"]["status"] == "rejected" and answer.json()["next"] is None
    assert {r.reviewer for r in decisions(desk)} == {"token:ci-bot"}
    wrong = client.get("/", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_the_review_token_never_acts_as_a_password_reviewer(tmp_path, database_url):
    """X-Reviewer: ann with the token is refused; the token cannot decide the item ann holds;
    the login form does not let the token in under ann's name."""
    wf = make(tmp_path, database_url)
    mine, free = runs(wf, 2)
    reviewers = {"ann": auth.hash_password(PASSWORD)}
    client, desk = serve([wf], require_login=True, reviewers=reviewers, token=TOKEN)
    desk.claim(mine, "ann")
    as_ann = {"Authorization": f"Bearer {TOKEN}", "X-Reviewer": "ann"}
    refused = client.post(f"/items/{mine}/approve", headers=as_ann, json={})
    assert refused.status_code == 401 and "cannot name another reviewer" in refused.json()["error"]
    assert client.get("/", headers=as_ann).status_code == 401
    token_only = {"Authorization": f"Bearer {TOKEN}"}
    held = client.post(f"/items/{mine}/approve", headers=token_only, json={})
    assert held.status_code == 409 and "held by ann" in held.json()["error"]
    assert decisions(desk) == [] and desk.item(mine)["claimed_by"] == "ann"
    form = {"csrf": csrf(client, "/login"), "name": "ann", "password": TOKEN}
    assert client.post("/login", data=form).status_code == 401
    form = {"csrf": csrf(client, "/login"), "name": "token", "password": TOKEN}
    assert client.post("/login", data=form).url.path == "/"
    assert client.get("/", headers=JSON_HEADERS).json()["reviewer"] == "token"
    client.post(f"/items/{free}/approve", data={"csrf": csrf(client)})
    assert [(r.run_id, r.reviewer) for r in decisions(desk)] == [(free, "token")]


def test_a_review_token_named_like_a_reviewer_is_refused_at_start(tmp_path):
    settings = Settings(root=tmp_path, reviewers={"Token": auth.hash_password(PASSWORD)})
    desk = ReviewDesk(None, {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="also a reviewer") as caught:
        create_app(desk, settings, require_login=True, env={auth.TOKEN_ENV: TOKEN})
    assert auth.TOKEN_NAME_ENV in str(caught.value)
    named = {auth.TOKEN_ENV: TOKEN, auth.TOKEN_NAME_ENV: "ops"}
    ready = auth.Auth.for_server(settings.reviewers, require_login=True, env=named)
    assert ready.token_name == "token:ops"  # free: no reviewer has that name


@pytest.mark.parametrize("how", ["form", "json"])
def test_a_correction_that_breaks_the_schema_is_a_400_and_changes_nothing(
    tmp_path, database_url, how
):
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    if how == "form":
        bad = {"out.category": "billing", "out.urgency": "whenever", "out.summary": "x"}
        page = client.post(f"/items/{run_id}/correct", data={"csrf": csrf(client), **bad})
        assert page.status_code == 400 and "does not fit Triage" in page.text
        assert "whenever" in page.text  # the reviewer's input is kept on the page
    else:
        output = {**GOOD, "urgency": "whenever"}
        answer = client.post(f"/items/{run_id}/correct", json={"output": output})
        assert answer.status_code == 400
        assert (
            "urgency" in answer.json()["error"] and answer.json()["hint"] == "nothing was changed"
        )
    item = desk.item(run_id)
    assert item["state"] == "pending" and item["history"] == [] and decisions(desk) == []


def test_a_number_field_that_is_not_a_number_is_refused_by_name(tmp_path, database_url):
    from pydantic import BaseModel

    class Quote(BaseModel):
        seats: int
        tags: list[str]

    wf = make(tmp_path, database_url, lambda _: {"seats": 3, "tags": ["a"]}, output=Quote)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    html = client.get(f"/items/{run_id}").text
    assert 'type="number"' in html and 'name="out.tags"' in html
    token = csrf(client, f"/items/{run_id}")
    page = client.post(f"/items/{run_id}/correct", data={"csrf": token, "out.seats": "three"})
    assert page.status_code == 400 and "Seats: &#39;three&#39; is not a whole number" in page.text
    good = {"csrf": token, "out.seats": "5", "out.tags": '["x", "y"]'}
    assert client.post(f"/items/{run_id}/correct", data=good).status_code == 200
    assert desk.item(run_id)["final_output"] == {"seats": 5, "tags": ["x", "y"]}


@pytest.mark.parametrize("how", ["body", "output", "form"])
def test_deeply_nested_json_posted_to_the_desk_is_a_400_and_changes_nothing(
    tmp_path, database_url, how
):
    from pydantic import BaseModel

    class Quote(BaseModel):
        seats: int
        tags: list[Any]

    wf = make(tmp_path, database_url, lambda _: {"seats": 3, "tags": ["a"]}, output=Quote)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    deep = "[" * 100_000 + "]" * 100_000
    url = f"/items/{run_id}/correct"
    if how == "body":
        answer = client.post(url, content=deep, headers={"content-type": "application/json"})
    elif how == "output":
        answer = client.post(url, json={"output": deep})
    else:
        answer = client.post(url, data={"csrf": csrf(client, f"/items/{run_id}"), "out.tags": deep})
    assert answer.status_code == 400 and "nest more than 100 levels deep" in answer.text
    item = desk.item(run_id)
    assert item["state"] == "pending" and item["history"] == [] and decisions(desk) == []


def test_a_rejection_without_a_reason_is_a_400_with_a_clear_message(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    page = client.post(f"/items/{run_id}/reject", data={"csrf": csrf(client), "reason": "  "})
    assert page.status_code == 400 and "a rejection needs a reason" in page.text
    answer = client.post(f"/items/{run_id}/reject", json={"reason": ""})
    assert answer.status_code == 400 and answer.json()["error"] == "a rejection needs a reason"
    assert desk.item(run_id)["state"] == "pending"


@pytest.mark.parametrize("token", [None, "forged"])
def test_a_form_post_without_the_right_csrf_token_is_a_403(tmp_path, database_url, token):
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    client.get("/")  # a session cookie, but no token in the form
    data = {"csrf": token} if token else {}
    assert client.post(f"/items/{run_id}/approve", data=data).status_code == 403
    assert client.post("/next", data=data).status_code == 403
    assert client.post(f"/items/{run_id}/claim", data=data).status_code == 403
    other, _ = serve([wf], reviewer="mallory")
    stolen = csrf(other)  # a real token, for another session
    assert client.post(f"/items/{run_id}/approve", data={"csrf": stolen}).status_code == 403
    assert client.post(f"/items/{run_id}/claim", data={"csrf": stolen}).status_code == 403
    assert desk.item(run_id)["state"] == "pending" and decisions(desk) == []
    assert desk.item(run_id)["claimed_by"] is None


def test_an_item_held_by_another_reviewer_is_read_only_and_a_409(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf], reviewer="bob")
    desk.claim(run_id, "ann")
    page = client.get(f"/items/{run_id}")
    assert page.status_code == 200 and "Held by <strong>ann</strong>" in page.text
    assert 'action="/items/' not in page.text  # no decision forms, no claim
    data = client.get(f"/items/{run_id}", headers=JSON_HEADERS).json()
    assert data["read_only"] is True and data["held_by"] == "ann" and data["yours"] is False
    page = client.post(f"/items/{run_id}/claim", data={"csrf": csrf(client)})
    assert page.status_code == 409 and "held by ann" in page.text
    page = client.post(f"/items/{run_id}/approve", data={"csrf": csrf(client)})
    assert page.status_code == 409 and "held by ann" in page.text
    answer = client.post(f"/items/{run_id}/approve", json={})
    assert answer.status_code == 409 and answer.json()["hint"]
    assert desk.item(run_id)["claimed_by"] == "ann" and decisions(desk) == []


def test_a_decided_item_shows_its_history_and_refuses_a_second_decision(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    desk.reject(run_id, "cat", "spam really")
    page = client.get(f"/items/{run_id}")
    assert page.status_code == 200 and "was <strong>rejected</strong> by cat" in page.text
    assert "spam really" in page.text and "History" in page.text
    answer = client.post(f"/items/{run_id}/approve", json={})
    assert answer.status_code == 409 and "already rejected" in answer.json()["error"]
    missing = client.get("/items/01234567-0000-7000-8000-000000000000", headers=JSON_HEADERS)
    assert missing.status_code == 404 and "no review item" in missing.json()["error"]


def _broken(kind: str) -> Any:
    """A provider whose answer fails as `kind`, leaving something behind for the reviewer."""
    cut = json.dumps(GOOD)
    answers = {
        "refused": FakeReply(refusal="no"),
        "truncated": FakeReply(text=cut[:30], finish="length"),
        "truncated_but_parses": FakeReply(text=cut, finish="length"),
        "invalid_json": FakeReply(text="Category: billing, urgency: normal"),
        "schema_mismatch": {"category": "billing", "urgency": "whenever"},
    }
    return FakeProvider(lambda _: answers[kind])


BROKEN = ["refused", "truncated", "truncated_but_parses", "invalid_json", "schema_mismatch"]


@pytest.mark.parametrize("kind", BROKEN)
def test_an_output_that_failed_the_schema_can_only_be_corrected_or_rejected(
    tmp_path, database_url, kind
):
    """Approve is off and says why; a posted approve is a 400 that changes nothing, by form
    and by JSON; a correction that fits goes through."""
    wf = make(tmp_path, database_url, _broken(kind))
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    token = csrf(client)
    page = client.post(f"/items/{run_id}/claim", data={"csrf": token})
    assert f"The model failed: {kind.removesuffix('_but_parses')}" in page.text
    assert re.search(r'id="approve" disabled aria-describedby="approve-why"', page.text)
    assert 'id="approve-why"' in page.text and "Approve is off" in page.text
    why = client.get(f"/items/{run_id}", headers=JSON_HEADERS).json()["cannot_approve"]
    assert why and why in html_unescape(page.text)
    answer = client.post(f"/items/{run_id}/approve", json={})
    assert answer.status_code == 400 and "cannot be approved" in answer.json()["error"]
    assert (
        answer.json()["hint"]
        == "correct it with output that fits, or reject it; nothing was changed"
    )
    page = client.post(f"/items/{run_id}/approve", data={"csrf": token})
    assert page.status_code == 400 and "cannot be approved" in page.text
    item = desk.item(run_id)
    assert item["state"] == "pending" and item["history"] == [] and decisions(desk) == []
    answer = client.post(f"/items/{run_id}/correct", json={"output": GOOD})
    assert answer.status_code == 200 and desk.item(run_id)["final_output"] == GOOD


def test_an_output_the_schema_no_longer_accepts_cannot_be_approved(tmp_path, database_url):
    """A clean run queued for review by policy, whose workflow's schema changed since: its
    output does not fit any more, so it is corrected or rejected, never approved."""
    from pydantic import BaseModel

    class Stricter(BaseModel):
        category: str
        urgency: str
        summary: str
        owner: str

    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    stricter = make(tmp_path, database_url, output=Stricter)
    client, desk = serve([stricter])
    data = client.post(f"/items/{run_id}/claim", json={}).json()
    assert data["cannot_approve"] == "the output does not fit Stricter: owner: Field required"
    assert client.post(f"/items/{run_id}/approve", json={}).status_code == 400
    assert desk.item(run_id)["state"] == "pending"


def test_a_free_text_workflow_is_corrected_in_one_textarea(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}", lambda _: "Draft reply.", output=None)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    html = client.get(f"/items/{run_id}").text
    assert re.search(r'<textarea id="f-output" name="output"[^>]*>Draft reply\.</textarea>', html)
    token = csrf(client, f"/items/{run_id}")
    client.post(f"/items/{run_id}/correct", data={"csrf": token, "output": "Better reply."})
    assert desk.item(run_id)["final_output"] == "Better reply."


def test_login_is_required_when_asked_for_and_checks_the_password(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    [run_id] = runs(wf, 1)
    reviewers = {"dana": auth.hash_password(PASSWORD)}
    client, desk = serve([wf], require_login=True, reviewers=reviewers)
    first = client.get(f"/items/{run_id}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/login")
    assert client.get("/", headers=JSON_HEADERS).status_code == 401
    form = {"csrf": csrf(client, "/login"), "name": "dana", "password": "wrong", "next": "/"}
    refused = client.post("/login", data=form)
    assert refused.status_code == 401 and "wrong name or password" in refused.text
    form = {
        **form,
        "csrf": csrf(client, "/login"),
        "password": PASSWORD,
        "next": f"/items/{run_id}",
    }
    page = client.post("/login", data=form)
    assert page.url.path == f"/items/{run_id}" and "dana" in page.text
    client.post(f"/items/{run_id}/approve", data={"csrf": csrf(client, f"/items/{run_id}")})
    assert [(r.action, r.reviewer) for r in decisions(desk)] == [("approve", "dana")]
    client.post("/logout", data={"csrf": csrf(client)})
    assert client.get("/", follow_redirects=False).status_code == 303


def test_the_login_form_needs_its_csrf_token_and_accepts_the_review_token_as_itself(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    client, _ = serve([wf], require_login=True, token=TOKEN, token_name="ops-bot")
    forged = client.post("/login", data={"name": "eve", "password": TOKEN, "csrf": "x"})
    assert forged.status_code == 403
    form = {"csrf": csrf(client, "/login"), "name": "eve", "password": TOKEN}
    assert client.post("/login", data=form).status_code == 401
    form = {"csrf": csrf(client, "/login"), "name": "token:ops-bot", "password": TOKEN}
    assert client.post("/login", data=form).url.path == "/"
    assert client.get("/", headers=JSON_HEADERS).json()["reviewer"] == "token:ops-bot"


def test_the_login_required_answer_tells_a_script_to_send_the_review_token(tmp_path):
    """The 401 hint names the token, not X-Reviewer (which can only repeat the token's name)."""
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    client, _ = serve([wf], require_login=True, token=TOKEN)
    answer = client.get("/", headers=JSON_HEADERS)
    assert answer.status_code == 401 and answer.json()["error"] == "login required"
    hint = answer.json()["hint"]
    assert "Authorization: Bearer" in hint and auth.TOKEN_ENV in hint and "X-Reviewer" not in hint


UNREADABLE = {  # a body, and what the hint tells the client to send instead
    "not-json": ("{bad", "JSON object"),
    "not-an-object": ("[1]", "JSON object"),
    "a-5000-digit-number": ('{"name": "ann", "password": ' + "7" * 5000 + "}", "as strings"),
}


@pytest.mark.parametrize("content, hint", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_body_that_cannot_be_read_is_a_400_on_every_post_route_never_a_500(
    tmp_path, content, hint
):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    [run_id] = runs(wf, 1)
    client, desk = serve([wf], require_login=True, token=TOKEN)
    as_json = {"Content-Type": "application/json"}
    bearer = {**as_json, "Authorization": f"Bearer {TOKEN}"}
    posts = [("/next", bearer), ("/login", as_json)]
    posts += [(f"/items/{run_id}/{action}", bearer) for action in ("claim", "approve", "correct")]
    for path, headers in posts:
        answer = client.post(path, content=content, headers=headers)
        assert answer.status_code == 400, (path, answer.text)
        assert set(answer.json()) == {"error", "hint"} and "request body" in answer.json()["error"]
        assert hint in answer.json()["hint"]
    item = desk.item(run_id)
    assert item["state"] == "pending" and item["claimed_by"] is None and decisions(desk) == []


def test_a_malformed_form_is_a_400_page_not_a_500(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    client.get("/")  # a session
    broken = {"Content-Type": "multipart/form-data", "Accept": "text/html"}  # no boundary
    for path in ("/next", f"/items/{run_id}/approve"):
        page = client.post(path, content=b"--x\r\n", headers=broken)
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
        assert "the request body is not a form" in page.text
    assert desk.item(run_id)["state"] == "pending" and decisions(desk) == []


def test_a_body_over_1_mib_is_a_413_before_anyone_is_asked_who_they_are(tmp_path):
    """Declared too large: refused before the body is read or the sender is known; sent
    without a length: refused once the bytes read pass 1 MiB. A body under it is read."""
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    [run_id] = runs(wf, 1)
    client, desk = serve([wf], require_login=True, token=TOKEN)
    as_json = {"Content-Type": "application/json"}
    big = json.dumps({"name": "token", "password": TOKEN, "pad": "x" * 2**20}).encode()
    for path in ("/login", "/next", f"/items/{run_id}/approve"):  # nobody logged in
        answer = client.post(path, content=big, headers=as_json)
        assert answer.status_code == 413, (path, answer.text)
        assert answer.json() == {
            "error": "the request body is larger than this server takes (1 MiB)",
            "hint": "send less: a login, a decision or a correction fits well within that",
        }
    bearer = {**as_json, "Authorization": f"Bearer {TOKEN}"}
    for path in ("/login", f"/items/{run_id}/approve"):
        streamed = client.post(path, content=iter([big]), headers=bearer)  # chunked, no length
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "1 MiB" in streamed.json()["error"]
    form = {"name": "token", "password": "x" * 2**20}
    page = client.post("/login", data=form, headers={"Accept": "text/html"})
    assert page.status_code == 413 and "larger than this server takes (1 MiB)" in page.text
    assert desk.item(run_id)["state"] == "pending" and decisions(desk) == []
    almost = json.dumps({"name": "token", "password": TOKEN, "pad": "x" * (2**20 - 100)})
    assert client.post("/login", content=almost, headers=as_json).status_code == 200


def test_a_login_nobody_could_pass_is_refused_at_start(tmp_path):
    settings = Settings(root=tmp_path)
    desk = ReviewDesk(None, {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no reviewer can log in") as caught:
        create_app(desk, settings, require_login=True, env={})
    assert "hash-password" in str(caught.value) and auth.TOKEN_ENV in str(caught.value)


def test_a_login_free_server_answers_only_to_localhost_names(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    client, _ = serve([wf])
    assert client.get("/", headers={"Host": "evil.example:8787"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost:8787"}).status_code == 200


def test_skipped_items_are_passed_over_until_the_reviewer_starts_again(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    a, b = runs(wf, 2)
    client, _ = serve([wf])
    token = csrf(client)
    assert client.post(f"/items/{a}/skip", data={"csrf": token}).url.path == f"/items/{b}"
    page = client.post(f"/items/{b}/skip", data={"csrf": token})
    assert page.url.path == "/" and "2 items you skipped are still waiting" in page.text
    assert client.post("/next", data={"csrf": token}).url.path == f"/items/{a}"


def test_passwords_hash_with_scrypt_and_verify_in_constant_time():
    stored = auth.hash_password(PASSWORD)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1") and salt and digest
    assert auth.verify_password(PASSWORD, stored)
    assert not auth.verify_password("wrong", stored)
    assert stored != auth.hash_password(PASSWORD)  # salted
    for broken in ["", "scrypt$1$2", "bcrypt$1$1$1$a$b", "scrypt$3$8$1$!!$!!"]:
        assert not auth.verify_password(PASSWORD, broken)


def test_sessions_are_signed_and_expire_and_csrf_tokens_belong_to_one_session():
    sessions = auth.Sessions(b"key", ttl=60)
    cookie = sessions.issue("ann", now=1000)
    assert sessions.reviewer(cookie, now=1001) == "ann"
    assert sessions.reviewer(cookie, now=1061) is None  # expired
    _, expires, signature = cookie.split(".")
    forged = f"{auth._b64(b'bob', url=True)}.{expires}.{signature}"
    assert sessions.reviewer(forged, now=1001) is None
    assert auth.Sessions(b"other").reviewer(cookie, now=1001) is None
    other = sessions.issue("ann", now=1001)
    assert sessions.check_csrf(cookie, sessions.csrf_token(cookie))
    assert not sessions.check_csrf(other, sessions.csrf_token(cookie))


def test_the_secret_key_is_made_once_with_mode_0600(tmp_path):
    key = auth.load_secret_key(tmp_path / ".smallops", env={})
    path = tmp_path / ".smallops" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_secret_key(tmp_path / ".smallops", env={}) == key and len(key) >= 32
    assert auth.load_secret_key(tmp_path, env={auth.SECRET_ENV: "from-env"}) == b"from-env"


def test_due_webhooks_are_sent_and_those_without_a_secret_are_skipped_with_one_warning(
    tmp_path, monkeypatch, caplog
):
    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_WEBHOOK_SECRET", "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg=")
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with Receiver() as receiver:
        unsigned = make(
            tmp_path,
            f"sqlite:///{tmp_path / 'log.db'}",
            name="unsigned",
            webhook=receiver.url + "?unsigned",
            webhook_secret_env="NO_SUCH_SECRET",
        )
        signed = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}", webhook=receiver.url)
        first, second = unsigned.run(text="x").run_id, signed.run(text="y").run_id
        _, desk = serve([unsigned, signed])
        desk._send_soon = lambda _decision: None  # leave the sending to the sender
        desk.approve(first, "ann")  # first in line
        desk.approve(second, "ann")
        send = webhook_sender(desk)
        with caplog.at_level(logging.WARNING, logger="smallops"):
            assert send() == 1
            assert send() == 0
    assert len(receiver.accepted) == 1 and receiver.accepted[0][1]["webhook-signature"]
    warnings = [r for r in caplog.records if "NO_SUCH_SECRET" in r.getMessage()]
    assert len(warnings) == 1


def test_the_app_sends_due_webhooks_in_the_background_while_it_runs(tmp_path, monkeypatch):
    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_WEBHOOK_SECRET", "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg=")
    with Receiver() as receiver:
        wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}", webhook=receiver.url)
        [run_id] = runs(wf, 1)
        _, desk = serve([wf])
        desk._send_soon = lambda _workflow: None  # leave the sending to the app
        desk.approve(run_id, "ann")
        app = create_app(
            desk, Settings(root=tmp_path), require_login=False, env={}, webhook_interval=0.05
        )
        with TestClient(app, base_url="http://127.0.0.1"):
            deadline = time.monotonic() + 10
            while not receiver.accepted and time.monotonic() < deadline:
                time.sleep(0.05)
    assert len(receiver.accepted) == 1 and run_id in receiver.accepted[0][0]


#: SQL statements of one open-and-approve cycle (GET the item page, POST approve, which claims
#: the next item): 15 on Postgres before they were cut down. SQLite adds a BEGIN per transaction.
CYCLE_STATEMENTS = {"postgresql": 7, "sqlite": 10}


def test_an_open_and_approve_cycle_takes_a_few_statements_and_one_schema(
    tmp_path, database_url, monkeypatch
):
    from sqlalchemy import event

    import smallops.review.desk as desk_module

    wf = make(tmp_path, database_url)
    ids = runs(wf, 4)
    client, desk = serve([wf])
    made: list[Any] = []
    real_form_fields = desk_module.form_fields
    monkeypatch.setattr(
        desk_module, "form_fields", lambda output: made.append(output) or real_form_fields(output)
    )
    statements: list[str] = []
    event.listen(desk.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    location = client.post("/next", data={"csrf": csrf(client)}, follow_redirects=False)
    location = location.headers["location"]
    counts = []
    for run_id in ids[:3]:
        assert location.startswith(f"/items/{run_id}")
        statements.clear()
        token = re.search(r'name="csrf" value="([^"]+)"', client.get(location).text)
        assert token
        answer = client.post(
            f"/items/{run_id}/approve", data={"csrf": token.group(1)}, follow_redirects=False
        )
        assert answer.status_code == 303
        location = answer.headers["location"]
        counts.append(len(statements))
    limit = CYCLE_STATEMENTS[desk.engine.dialect.name]
    assert max(counts) <= limit, (counts, statements)
    assert [d.action for d in decisions(desk)] == ["approve"] * 3
    assert made == [Triage]  # the form of a prompt version is made once


def test_every_block_of_the_stylesheet_is_closed():
    """An unclosed block (a merge that dropped a brace) puts every later rule inside it: the
    dashboards lost their styles at desktop width that way."""
    from smallops.web.app import HERE

    depth = 0
    css = (HERE / "static" / "app.css").read_text()
    for number, line in enumerate(css.splitlines(), 1):
        depth += line.count("{") - line.count("}")
        assert depth >= 0, f"app.css line {number} closes a block that is not open"
        if line.startswith("/*"):  # a section comment starts at the top level
            assert depth == 0, f"app.css line {number}: a block above it is not closed"
    assert depth == 0
