"""Queue triage on the queue page: previews of input and output, ages, `?sort=` by age or an
output field, `?state=` filters with decided items, and a 400 for a state it does not know."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import update

from smallops.review import triage
from smallops.storage.schema import review_items

from models import GOOD, Triage

pytest.importorskip("starlette", reason="the web extra is not installed")

from test_web import JSON_HEADERS, make, serve

URGENCY = {"email 0": "normal", "email 1": "high", "email 2": "low", "email 3": "high"}


def answer(request: Any) -> dict[str, Any]:
    text = request.messages[0]["content"]
    return {**GOOD, "urgency": URGENCY.get(text, "normal")}


def backdate(desk: Any, run_id: str, age: timedelta) -> None:
    with desk.engine.begin() as connection:
        connection.execute(
            update(review_items)
            .where(review_items.c.run_id == run_id)
            .values(created_at=datetime.now(timezone.utc) - age)
        )


def test_the_queue_shows_previews_of_input_and_output_and_the_age(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    long = "Invoice question " + "x" * 200
    [run_id] = [wf.run(text=long).run_id]
    client, desk = serve([wf])
    backdate(desk, run_id, timedelta(days=2, hours=1))
    [item] = client.get("/", headers=JSON_HEADERS).json()["items"]
    assert item["input_preview"].startswith("Invoice question x")
    assert len(item["input_preview"]) == 80 and item["input_preview"].endswith("…")
    assert item["output_preview"] == "category: billing · urgency: normal"
    assert 2 * 86400 <= item["age_s"] < 3 * 86400 and item["age"] == "2 d"
    assert item["run_id"] == run_id and "workflow" in item and "held_by" in item  # kept keys
    html = client.get("/").text
    assert item["input_preview"] in html and "category: billing · urgency: normal" in html
    assert ">2 d<" in html and f'href="/items/{run_id}"' in html


def test_the_queue_sorts_by_age_and_by_an_output_field_in_its_declared_order(
    tmp_path, database_url
):
    wf = make(tmp_path, database_url, answer)
    ids = [wf.run(text=f"email {i}").run_id for i in range(4)]
    client, _ = serve([wf])

    def order(query: str) -> list[str]:
        return [i["run_id"] for i in client.get(f"/{query}", headers=JSON_HEADERS).json()["items"]]

    assert order("") == ids == order("?sort=oldest")
    assert order("?sort=newest") == ids[::-1]
    # low, normal, high as Triage declares them; oldest first among equals
    assert order("?sort=urgency") == [ids[2], ids[0], ids[1], ids[3]]
    assert order("?sort=-urgency") == [ids[1], ids[3], ids[0], ids[2]]
    assert client.get("/?sort=summary", headers=JSON_HEADERS).status_code == 400  # free text
    html = client.get("/?sort=-urgency").text
    assert '<option value="-urgency" selected>' in html
    assert html.index(ids[1][-12:]) < html.index(ids[2][-12:])


def test_the_queue_filters_by_state_decided_items_included(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    ids = [wf.run(text=f"email {i}").run_id for i in range(4)]
    client, desk = serve([wf])
    desk.approve(ids[0], "ann")
    desk.correct(ids[1], "ann", {**GOOD, "urgency": "high"})
    desk.reject(ids[2], "ann", "spam")

    def shown(state: str) -> list[str]:
        data = client.get(f"/?state={state}", headers=JSON_HEADERS).json()
        assert data["state"] == state
        return [i["run_id"] for i in data["items"]]

    assert (
        shown("pending")
        == [ids[3]]
        == [i["run_id"] for i in client.get("/", headers=JSON_HEADERS).json()["items"]]
    )
    assert shown("decided") == [ids[2], ids[1], ids[0]]  # newest decided first
    assert shown("approved") == [ids[0]] and shown("rejected") == [ids[2]]
    assert shown("corrected") == [ids[1]]
    assert sorted(shown("all")) == sorted(ids)
    corrected = client.get("/?state=corrected", headers=JSON_HEADERS).json()["items"][0]
    assert corrected["output_preview"] == "category: billing · urgency: high"  # the final one
    html = client.get("/?state=decided").text
    assert "rejected" in html and "by ann" in html and f'href="/items/{ids[2]}"' in html
    assert client.get(f"/items/{ids[2]}").status_code == 200  # its link still works


def test_an_unknown_state_is_a_400_with_a_one_line_message(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    client, _ = serve([wf])
    answer = client.get("/?state=lost", headers=JSON_HEADERS)
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.startswith("unknown state 'lost'") and "decided" in message
    assert "\n" not in message
    page = client.get("/?state=lost")
    assert page.status_code == 400 and "unknown state" in page.text and "<html" in page.text


def test_the_whole_queue_pages_by_keyset_in_every_order_each_item_once(
    tmp_path, database_url, monkeypatch
):
    """Pages of 3 over 10 items, four of them created at the same instant: each order walks
    every item exactly once, sorted over the whole queue (not page by page)."""
    from smallops.web import queue_page

    monkeypatch.setattr(queue_page, "PAGE", 3)
    levels = ["high", "low", "normal", "high", "low", "normal", "low", "high", "normal", "low"]
    wf = make(
        tmp_path, database_url, lambda r: {**GOOD, "urgency": levels[int(r.messages[0]["content"])]}
    )
    ids = [wf.run(text=str(i)).run_id for i in range(10)]
    client, desk = serve([wf])
    same = datetime.now(timezone.utc) - timedelta(hours=1)
    with desk.engine.begin() as connection:  # ties on created_at: the run id breaks them
        connection.execute(
            update(review_items).where(review_items.c.run_id.in_(ids[2:6])).values(created_at=same)
        )

    def walk(query: str) -> list[str]:
        seen, url = [], f"/?{query}"
        while url:
            data = client.get(url, headers=JSON_HEADERS).json()
            assert len(data["items"]) <= 3
            seen += [item["run_id"] for item in data["items"]]
            url = data["next_page"]
        return seen

    rank = {"low": 0, "normal": 1, "high": 2}
    created = {item["run_id"]: item for item in desk.items(None, "pending", 100)}
    by_age = sorted(ids, key=lambda i: (created[i]["created_at"], i))
    assert walk("") == by_age == walk("sort=oldest")
    assert walk("sort=newest") == by_age[::-1]
    urgency = sorted(ids, key=lambda i: (rank[levels[ids.index(i)]], created[i]["created_at"], i))
    assert walk("sort=urgency") == urgency
    reverse = sorted(ids, key=lambda i: (-rank[levels[ids.index(i)]], created[i]["created_at"], i))
    assert walk("sort=-urgency") == reverse
    first = client.get("/?sort=urgency", headers=JSON_HEADERS).json()
    assert first["first_page"] is None and "after=" in first["next_page"]
    html = client.get(first["next_page"]).text
    assert "First page" in html and "Next 3" in html
    age_cursor = triage.cursor_of([same, ids[0]])
    for bad, query in [
        *((bad, "") for bad in ("nonsense", "W10", "WyJ4Il0", "%00", "x" * 5000)),
        (triage.cursor_of([1, 2]), ""),  # not a time and a run id
        (triage.cursor_of([1, same, ids[0]]), ""),  # a field sort's cursor for the age order
        (age_cursor, "&sort=urgency"),
    ]:
        answer = client.get(f"/?after={bad}{query}", headers=JSON_HEADERS)
        assert answer.status_code == 400 and "cursor" in answer.json()["error"]


def test_triage_helpers_preview_age_and_order():
    assert triage.input_preview({"body": "b", "subject": "  Hello\n there "}) == "Hello there"
    assert triage.input_preview({"n": 1, "text": "first"}) == "first"
    assert triage.input_preview(None) == ""
    assert triage.output_preview("free text answer") == "free text answer"
    assert (
        triage.output_preview({"a": "x" * 30, "b": 1, "c": True, "d": "y"})
        == "b: 1 · c: True · d: y"
    )
    assert [triage.age_text(s) for s in (5, 61, 7200, 200000)] == ["5 s", "1 min", "2 h", "2 d"]
    assert triage.declared_order(Triage, "urgency") == ["low", "normal", "high"]
    assert triage.declared_order(Triage, "summary") is None
    assert triage.states_for(None) == ("pending",) and triage.states_for("all") is None
