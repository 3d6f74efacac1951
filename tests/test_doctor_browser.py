"""The scorecard page in a real headless Chromium, on a 390 px phone and a desktop: nothing
scrolls sideways and every practice shows its mark, evidence and fix; screenshots into the test
artifacts, for a person to look at."""

from __future__ import annotations

import pytest

from test_doctor_web import app_for, demo, with_reviewer
from test_web_browser import ARTIFACTS, PASSWORD, logged_in

from live_server import serving_app

uvicorn = pytest.importorskip("uvicorn", reason="the web extra is not installed")


def test_the_scorecard_fits_a_phone_and_a_desktop(tmp_path, capsys):
    folder = demo(tmp_path, capsys)
    with_reviewer(folder, "dana", PASSWORD)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serving_app(app_for(folder, require_login=True)) as port:
        base = f"http://127.0.0.1:{port}"
        with logged_in(base) as page:
            page.click("nav.sections a:has-text('Doctor')")
            page.wait_for_url(f"{base}/doctor")
            assert page.locator(".practice").count() == 12
            assert page.locator(".practice.status-fail .fix").count() == 3
            assert "Tier 3 not met." in page.inner_text(".doctor-verdict")
            for width in (390, 1280):
                page.set_viewport_size({"width": width, "height": 844})
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"the scorecard scrolls sideways at {width} px"
                page.screenshot(path=str(ARTIFACTS / f"doctor-{width}.png"), full_page=True)
            page.click(".tier-pick a:has-text('under 10 people')")
            page.wait_for_url(f"{base}/doctor?tier=1")
            assert "Tier 1 met." in page.inner_text(".doctor-verdict")
