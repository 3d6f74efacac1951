"""The item page's form as a browser posts it: a list editor for list[str] fields (one entry per
line without JavaScript), one-line inputs for short strings, a null box for nullable fields,
corrections still validated against the schema; and the styled 404 and 503 pages."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed")

from smallops.web.item_page import _widget, form_view, output_from_form
from smallops.web.outage import DatabaseDown
from test_web import JSON_HEADERS, csrf, decisions, make, runs, serve

from models import Lead

LEAD = {
    "company": "Acme",
    "stage": "warm",
    "tags": ["pricing", "q3"],
    "owner": "ann",
    "summary": "Wants a quote.",
    "notes": "",
}


@pytest.fixture
def lead(tmp_path, database_url):
    wf = make(tmp_path, database_url, lambda _: LEAD, output=Lead)
    [run_id] = runs(wf, 1)
    client, desk = serve([wf])
    return client, desk, run_id


def test_each_field_gets_the_widget_its_schema_calls_for(lead):
    _, desk, run_id = lead
    fields = {f["name"]: f for f in desk.item(run_id)["fields"]}
    widgets = {name: _widget(field) for name, field in fields.items()}
    assert widgets == {
        "company": "input",
        "stage": "choice",
        "tags": "list",
        "owner": "input",
        "summary": "textarea",  # no maxLength, and a name of prose
        "notes": "textarea",  # maxLength over 200
    }
    assert fields["owner"]["nullable"] and not fields["company"]["nullable"]
    assert fields["tags"]["items"] == "string"


def test_single_line_fields_are_text_inputs_and_a_list_is_one_entry_per_line(lead):
    client, _, run_id = lead
    html = client.post(f"/items/{run_id}/claim", data={"csrf": csrf(client)}).text
    assert re.search(r'<input id="f-company" type="text" name="out.company" value="Acme"', html)
    assert re.search(r'<input id="f-owner" type="text" name="out.owner" value="ann"', html)
    assert re.search(r'<textarea id="f-tags" name="out.tags"[^>]*>pricing\nq3</textarea>', html)
    assert re.search(r'<textarea id="f-summary" name="out.summary"', html)
    assert 'name="null.owner"' in html and 'name="null.company"' not in html
    assert "/static/list_editor.js" in html


def test_a_list_corrected_through_the_form_is_saved_as_a_list(lead):
    client, desk, run_id = lead
    token = csrf(client, f"/items/{run_id}")
    form = {
        "csrf": token,
        "out.company": "Acme Ltd",
        "out.stage": "hot",
        "out.tags": "pricing\r\n\r\n  renewal  \r\nq4\r\n",  # as a browser sends a textarea
        "out.owner": "bo",
        "out.summary": "Wants a quote for 40 seats.",
        "out.notes": "",
    }
    assert client.post(f"/items/{run_id}/correct", data=form).status_code == 200
    saved = desk.item(run_id)["final_output"]
    assert saved["tags"] == ["pricing", "renewal", "q4"] and saved["company"] == "Acme Ltd"
    assert [row.action for row in decisions(desk)] == ["correct"]


def test_a_nullable_field_with_its_null_box_ticked_is_saved_as_null(lead):
    client, desk, run_id = lead
    token = csrf(client, f"/items/{run_id}")
    form = {
        "csrf": token,
        "out.company": "Acme",
        "out.stage": "warm",
        "out.tags": "pricing",
        "out.owner": "ann",  # what the input still holds; the box wins
        "null.owner": "1",
        "out.summary": "Wants a quote.",
    }
    assert client.post(f"/items/{run_id}/correct", data=form).status_code == 200
    assert desk.item(run_id)["final_output"]["owner"] is None


def test_a_null_value_shows_its_box_ticked():
    fields = [
        {
            "name": "owner",
            "title": "Owner",
            "type": "string",
            "choices": [],
            "required": True,
            "max_length": None,
            "nullable": True,
            "items": None,
        }
    ]
    [view] = form_view({"output": {"owner": None}, "fields": fields}, None)
    assert view["null"] and view["text"] == ""
    assert output_from_form({"fields": fields}, {"out.owner": ""}) == {"owner": ""}


def test_a_bad_value_is_still_refused_with_the_schemas_message(lead):
    client, desk, run_id = lead
    token = csrf(client, f"/items/{run_id}")
    form = {
        "csrf": token,
        "out.company": "x" * 81,
        "out.stage": "warm",
        "out.tags": "a",
        "out.owner": "ann",
        "out.summary": "s",
    }
    page = client.post(f"/items/{run_id}/correct", data=form)
    assert page.status_code == 400
    assert "does not fit Lead" in page.text and "at most 80 characters" in page.text
    assert 'value="' + "x" * 81 + '"' in page.text  # the reviewer's input is kept
    assert desk.item(run_id)["state"] == "pending" and decisions(desk) == []


def test_an_unknown_item_is_a_404_page_in_the_apps_layout_and_json_when_asked(lead):
    client, _, _ = lead
    page = client.get("/items/no-such-run")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert 'class="bar"' in page.text and 'class="error-page"' in page.text
    assert "404 · Not found" in page.text and 'href="/"' in page.text
    answer = client.get("/items/no-such-run", headers=JSON_HEADERS)
    assert answer.status_code == 404 and set(answer.json()) == {"error", "hint"}


def test_a_url_no_route_serves_is_the_same_404_page_or_json(lead):
    client, _, _ = lead
    page = client.get("/no/such/page")
    assert page.status_code == 404 and 'class="error-page"' in page.text
    assert "there is no page at /no/such/page" in page.text
    answer = client.get("/no/such/page", headers=JSON_HEADERS)
    assert answer.status_code == 404
    assert answer.json() == {
        "error": "there is no page at /no/such/page",
        "hint": "the review queue is at /",
    }


def test_a_database_outage_is_a_503_page_in_the_apps_layout_and_json_when_asked(lead, monkeypatch):
    client, desk, run_id = lead

    def down(_run_id):
        raise DatabaseDown()

    monkeypatch.setattr(desk, "item", down)
    page = client.get(f"/items/{run_id}")
    assert page.status_code == 503 and page.headers["retry-after"] == "5"
    assert 'class="bar"' in page.text and "503 · The database is unavailable" in page.text
    assert "Back to the queue" in page.text and "Try again" in page.text
    answer = client.get(f"/items/{run_id}", headers=JSON_HEADERS)
    assert answer.status_code == 503 and set(answer.json()) == {"error", "hint"}
