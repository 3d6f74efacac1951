"""The review UI in a real headless Chromium: log in, approve, correct, reject by keyboard; Approve
is off on an output that failed the schema; a link opens an item without claiming it; the list
editor and the null box; the item page on a 390 px phone; screenshots into tests/artifacts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from smallops import FakeProvider, Settings, Workflow
from smallops.review.desk import ReviewDesk
from smallops.review.queue import ReviewQueue
from smallops.storage.schema import review_decisions

from live_server import serving_app
from models import GOOD, Lead, Triage

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the web extra is not installed")

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from smallops.web.app import create_app  # noqa: E402
from smallops.web.auth import hash_password  # noqa: E402

ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a long browser password"
# Screenshots land here for a person to look at (tests/artifacts is kept out of git).
ARTIFACTS = Path(os.environ.get("SMALLOPS_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


@contextlib.contextmanager
def serving(
    tmp_path: Path, answers: list[Any], output: type[BaseModel] = Triage
) -> Iterator[dict[str, Any]]:
    """One queued item per answer, and the app under uvicorn on 127.0.0.1 with login required."""
    (tmp_path / "triage.prompt").write_text("[user]\n{{ text }}")
    settings = Settings(
        root=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'log.db'}",
        reviewers={"dana": hash_password(PASSWORD)},
    )
    wf = Workflow(
        "triage",
        model="fake:rules",
        prompt="triage.prompt",
        output=output,
        provider=FakeProvider(_answering(answers)),
        base_dir=tmp_path,
        retries=0,
        fallback="review",
        settings=settings,
    )
    ids = [wf.run(text=f"email number {i}").run_id for i in range(len(answers))]
    wf.plan().writer.flush()
    engine = wf.plan().writer.store.engine
    app = create_app(ReviewDesk(engine, {wf.name: wf}), settings, require_login=True, env={})
    with serving_app(app) as port:
        yield {"base": f"http://127.0.0.1:{port}", "ids": ids, "engine": engine}


def _answering(answers: list[Any]) -> Any:
    """Email number i gets answers[i], every time it is asked (a repair gets the same)."""
    return lambda request: answers[int(request.messages[0]["content"].rsplit(" ", 1)[1])]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three queued items with good outputs."""
    with serving(tmp_path, [GOOD] * 3) as details:
        yield details


@contextlib.contextmanager
def logged_in(base: str) -> Iterator[Page]:
    """A Chromium page logged in as dana, on the queue."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(10_000)
            page.goto(f"{base}/")
            page.wait_for_url(lambda url: url.startswith(f"{base}/login?"))
            page.fill("#name", "dana")
            page.fill("#password", PASSWORD)
            page.click("button:has-text('Log in')")
            page.wait_for_url(f"{base}/")
            yield page
        finally:
            browser.close()


def _on_item(page: Page, base: str, run_id: str, text: str) -> None:
    page.wait_for_url(lambda url: url.split("?")[0] == f"{base}/items/{run_id}")
    assert page.locator(".inputs").inner_text().find(text) >= 0


def test_a_reviewer_logs_in_and_approves_corrects_and_rejects_in_a_real_browser(served):
    base, (a, b, c) = served["base"], served["ids"]
    with logged_in(base) as page:
        page.click("button:has-text('Start reviewing')")
        _on_item(page, base, a, "email number 0")

        page.click("#approve")
        _on_item(page, base, b, "email number 1")

        category = page.locator("fieldset[data-keys]")
        category.locator("label.choice", has_text="support").click()
        assert category.locator("input[value=support]").is_checked()
        page.fill("#f-summary", "Asks where the billing page went.")
        page.click("#correct")
        _on_item(page, base, c, "email number 2")

        page.keyboard.press("r")  # focus the reason; the r itself is not typed
        page.keyboard.type("Not a customer email")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: url.startswith(f"{base}/?"))
        assert "The queue is empty" in page.inner_text("main")

    queue = ReviewQueue(served["engine"])
    assert [queue.item(run)["state"] for run in (a, b, c)] == ["approved", "corrected", "rejected"]
    assert queue.item(b)["final_output"] == {
        **GOOD,
        "category": "support",
        "summary": "Asks where the billing page went.",
    }
    assert queue.item(c)["reject_reason"] == "Not a customer email"
    with served["engine"].connect() as connection:
        rows = connection.execute(select(review_decisions).order_by(review_decisions.c.id)).all()
    assert [(r.run_id, r.action, r.reviewer) for r in rows] == [
        (a, "approve", "dana"),
        (b, "correct", "dana"),
        (c, "reject", "dana"),
    ]


def test_approve_is_disabled_on_an_output_that_failed_the_schema_and_says_why(tmp_path):
    """The key does nothing either; the reviewer corrects it instead."""
    mismatch = {"category": "billing", "urgency": "whenever", "summary": "Asks for an invoice."}
    with serving(tmp_path, [mismatch, GOOD]) as details:
        base, (bad, good) = details["base"], details["ids"]
        with logged_in(base) as page:
            page.click("button:has-text('Start reviewing')")
            _on_item(page, base, bad, "email number 0")
            assert page.locator("#approve").is_disabled()
            why = page.locator("#approve-why")
            assert why.is_visible() and "Approve is off" in why.inner_text()
            assert "schema_mismatch" in why.inner_text() and "urgency" in why.inner_text()
            page.keyboard.press("a")
            page.wait_for_timeout(500)  # a submitted form would have left the page by now
            assert page.url.split("?")[0] == f"{base}/items/{bad}"
            page.locator("fieldset", has_text="Urgency").locator(
                "label.choice", has_text="high"
            ).click()
            page.click("#correct")
            _on_item(page, base, good, "email number 1")
            assert page.locator("#approve").is_enabled()
    queue = ReviewQueue(details["engine"])
    assert queue.item(bad)["state"] == "corrected"
    assert queue.item(bad)["final_output"] == {**mismatch, "urgency": "high"}
    with details["engine"].connect() as connection:
        rows = connection.execute(select(review_decisions)).all()
    assert [(r.run_id, r.action) for r in rows] == [(bad, "correct")]


def test_a_link_from_another_site_opens_an_item_without_claiming_it(served):
    """A cross-site GET only reads; "Review this item" (a POST with the CSRF token) claims it,
    and claiming another gives the first one back."""
    base, (a, b, _c) = served["base"], served["ids"]
    queue = ReviewQueue(served["engine"])
    with logged_in(base) as page:
        lure = f'<a id="lure" href="{base}/items/{a}">a prize</a>'
        page.goto(f"data:text/html,{quote(lure)}")  # a page of another origin
        assert page.evaluate("window.origin") == "null"
        page.click("#lure")
        _on_item(page, base, a, "email number 0")
        assert "Nobody holds this item" in page.inner_text("main")
        assert queue.item(a)["claimed_by"] is None
        page.click("#claim")
        _on_item(page, base, a, "email number 0")
        assert page.locator("#claim").count() == 0
        assert queue.item(a)["claimed_by"] == "dana"
        page.goto(f"{base}/items/{b}")
        assert queue.item(a)["claimed_by"] == "dana" and queue.item(b)["claimed_by"] is None
        page.click("#claim")
        _on_item(page, base, b, "email number 1")
        assert queue.item(b)["claimed_by"] == "dana" and queue.item(a)["claimed_by"] is None


def test_the_queue_shows_previews_and_ages_and_fits_a_phone(tmp_path):
    """The queue's rows at desktop and phone width: previews truncate, the page never scrolls
    sideways, each row links to its item; screenshots go to the test artifacts."""
    long = {**GOOD, "summary": "Asks for the May invoice and a copy of April's, " + "again " * 5}
    answers = [GOOD, {**GOOD, "urgency": "high"}, long, {**GOOD, "category": "support"}]
    with serving(tmp_path, answers) as details:
        base, ids = details["base"], details["ids"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with logged_in(base) as page:
            page.goto(f"{base}/?sort=-urgency")
            assert "category: billing" in page.inner_text(".queue")
            assert page.locator(".queue-items tbody tr").count() == 4
            for width in (1280, 390):
                page.set_viewport_size({"width": width, "height": 800})
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"the queue scrolls sideways at {width} px"
                page.screenshot(path=str(ARTIFACTS / f"queue-{width}.png"), full_page=True)
            page.click(f"a[href='/items/{ids[1]}']")
            _on_item(page, base, ids[1], "email number 1")


LEAD = {
    "company": "Acme Industrial Supplies and Logistics",
    "stage": "warm",
    "tags": ["pricing", "renewal-2027-enterprise-plan-with-a-very-long-tag-that-must-wrap"],
    "owner": "ann",
    "summary": "Wants a quote for forty seats before the end of the quarter, and asks about SSO.",
}


def _fits(page: Page) -> bool:
    """No horizontal scroll: nothing on the page is wider than the window."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_the_list_editor_and_the_null_box_correct_an_item_and_it_fits_a_phone(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with serving(tmp_path, [LEAD, LEAD], output=Lead) as details:
        base, (first, second) = details["base"], details["ids"]
        with logged_in(base) as page:
            page.click("button:has-text('Start reviewing')")
            _on_item(page, base, first, "email number 0")
            grid = page.locator(".item-grid > *")
            assert grid.nth(0).locator("h2", has_text="Inputs").count() == 1  # input first
            assert page.locator("#f-company").get_attribute("type") == "text"
            assert page.locator("#f-tags").is_hidden()  # the editor stands in for it
            rows = page.locator(".list-rows input")
            assert rows.count() == 2
            page.screenshot(path=str(ARTIFACTS / "item-1280.png"), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})
            assert _fits(page)
            assert page.locator("#approve").is_visible() and page.locator("#reject").is_visible()
            page.screenshot(path=str(ARTIFACTS / "item-390.png"), full_page=True)

            page.locator(".list-rows li").nth(1).locator("button", has_text="Remove").click()
            page.click("button:has-text('+ Add entry')")
            page.keyboard.type("q4")
            page.keyboard.press("Enter")  # a new entry, not a submit
            page.keyboard.type("sso")
            page.check("input[name='null.owner']")
            page.click("#correct")
            _on_item(page, base, second, "email number 1")

            page.goto(f"{base}/items/no-such-run")
            assert "404" in page.inner_text(".error-page") and _fits(page)
            page.screenshot(path=str(ARTIFACTS / "404-390.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})
            page.screenshot(path=str(ARTIFACTS / "404-1280.png"), full_page=True)
    saved = ReviewQueue(details["engine"]).item(first)["final_output"]
    assert saved["tags"] == ["pricing", "q4", "sso"] and saved["owner"] is None
