"""The runs browser and the run page in a real headless Chromium: filter, search, open a run and
its review item; at desktop and phone width the page never scrolls sideways (wide tables scroll
in their own box); screenshots into the test artifacts."""

from __future__ import annotations

from typing import Any

import pytest

from models import GOOD

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
from test_web_browser import ARTIFACTS, logged_in, serving

WIDTHS = {"desktop": 1280, "phone": 390}


def _fits(page: Any, what: str, width: int) -> None:
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{what} scrolls sideways at {width} px"


def test_browse_filter_search_and_open_a_run_at_desktop_and_phone_width(tmp_path):
    answers = [GOOD, {**GOOD, "urgency": "high"}, "this is not JSON at all", GOOD]
    with serving(tmp_path, answers) as details:
        base, ids = details["base"], details["ids"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with logged_in(base) as page:
            page.goto(f"{base}/runs")
            assert page.locator(".runs-table tbody tr").count() == 4
            assert page.locator(".sections a.current").inner_text() == "Runs"
            for name, width in WIDTHS.items():
                page.set_viewport_size({"width": width, "height": 900})
                _fits(page, "the runs browser", width)
                page.screenshot(path=str(ARTIFACTS / f"runs-{name}.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})

            page.select_option("select[name=error_type]", "invalid_json")
            page.click("button:has-text('Show runs')")
            page.wait_for_url(lambda url: "error_type=invalid_json" in url)
            assert page.locator(".runs-table tbody tr").count() == 1

            page.goto(f"{base}/runs")
            page.fill("input[name=q]", "EMAIL NUMBER 1")
            page.press("input[name=q]", "Enter")
            page.wait_for_url(lambda url: "q=EMAIL" in url)
            assert page.locator(".runs-table tbody tr").count() == 1
            page.click(f"a[href='/runs/{ids[1]}']")
            page.wait_for_url(f"{base}/runs/{ids[1]}")
            assert "email number 1" in page.inner_text(".run-content")
            assert page.locator(".attempts tbody tr").count() >= 1
            for name, width in WIDTHS.items():
                page.set_viewport_size({"width": width, "height": 900})
                _fits(page, "the run page", width)
                page.screenshot(path=str(ARTIFACTS / f"run-{name}.png"), full_page=True)
            page.click("#review-link a")
            page.wait_for_url(f"{base}/items/{ids[1]}")
            page.click(".run-link")
            page.wait_for_url(f"{base}/runs/{ids[1]}")
