"""The review UI in a real headless Chromium: log in, approve, correct, reject by keyboard."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smallops import FakeProvider, Settings, Workflow
from smallops.review.desk import ReviewDesk
from smallops.review.queue import ReviewQueue
from smallops.storage.schema import review_decisions

from models import GOOD, Triage

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


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three queued items, and the app under uvicorn on 127.0.0.1 with login required."""
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
        output=Triage,
        provider=FakeProvider(lambda _: GOOD),
        base_dir=tmp_path,
        retries=0,
        fallback="review",
        settings=settings,
    )
    ids = [wf.run(text=f"email number {i}").run_id for i in range(3)]
    wf.plan().writer.flush()
    engine = wf.plan().writer.store.engine
    app = create_app(ReviewDesk(engine, {wf.name: wf}), settings, require_login=True, env={})
    # uvicorn serves on a socket bound here, so no other process can take its port between
    # finding a free one and binding it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield {"base": f"http://127.0.0.1:{port}", "ids": ids, "engine": engine}
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def _on_item(page: Page, base: str, run_id: str, text: str) -> None:
    page.wait_for_url(lambda url: url.split("?")[0] == f"{base}/items/{run_id}")
    assert page.locator(".inputs").inner_text().find(text) >= 0


def test_a_reviewer_logs_in_and_approves_corrects_and_rejects_in_a_real_browser(served):
    base, (a, b, c) = served["base"], served["ids"]
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
        finally:
            browser.close()

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
