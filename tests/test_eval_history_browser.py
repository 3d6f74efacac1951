"""Eval history in a real headless Chromium, at desktop and phone width: the list with its chart,
an eval run and a comparison; the page never scrolls sideways (wide tables scroll in their own
box); screenshots into the test artifacts, for a person to look at."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smallops import Settings
from smallops.review.desk import ReviewDesk
from test_eval_history import Model, evaluate, workflow
from test_web_browser import ARTIFACTS, PASSWORD, logged_in

from live_server import serving_app

uvicorn = pytest.importorskip("uvicorn", reason="the web extra is not installed")

from smallops.web.app import create_app  # noqa: E402
from smallops.web.auth import hash_password  # noqa: E402

SETS = [
    ("c1", "c2", "c3", "c4", "c5", "c7"),
    ("c1", "c2", "c3", "c4", "c5", "c6"),
]


@contextlib.contextmanager
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Seven eval runs over three prompt versions, and the app under uvicorn with login."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    model = Model()
    ids = []
    for version, (phase, cases) in enumerate([(1, 0), (1, 0), (2, 1), (2, 1), (1, 0), (2, 1)]):
        model.phase = phase
        prompt = "[user]\n{{ text }}" + "\nBe careful." * (version // 2)
        wf = workflow(tmp_path, url, model, prompt)
        ids.append(evaluate(wf, {c: {} for c in SETS[cases]}, baseline=True).run.id)
    model.phase = 1  # the last run on the first answers again: its comparison has changes
    long_case = {"c2": {"text": "c2 " + "a very long subject line that goes on " * 6}}
    ids.append(evaluate(wf, {**{c: {} for c in SETS[0]}, **long_case}, ci=True).run.id)
    settings = Settings(
        root=tmp_path, database_url=url, reviewers={"dana": hash_password(PASSWORD)}
    )
    engine = wf.plan().writer.store.engine
    app = create_app(ReviewDesk(engine, {wf.name: wf}), settings, require_login=True, env={})
    with serving_app(app) as port:
        yield {"base": f"http://127.0.0.1:{port}", "ids": ids}


def _overflow(page: Any) -> int:
    return int(
        page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    )


def test_eval_history_an_eval_run_and_a_comparison_fit_desktop_and_phone(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with served(tmp_path) as details:
        base, ids = details["base"], details["ids"]
        with logged_in(base) as page:
            shots = [
                ("/evals", "evals", (1280, 390)),
                (f"/evals/{ids[-1]}", "eval-run", (1280, 390)),
                (f"/evals/compare?a={ids[-2]}&b={ids[-1]}", "eval-compare", (1280, 390)),
            ]
            for path, name, widths in shots:
                for width in widths:
                    page.set_viewport_size({"width": width, "height": 900})
                    page.goto(base + path)
                    assert page.locator(".sections a.current").inner_text() == "Evals"
                    assert _overflow(page) <= 0, f"{path} scrolls sideways at {width} px"
                    label = "desktop" if width == 1280 else "phone"
                    page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto(f"{base}/evals")
            assert page.locator("svg.ev-wide circle.dot").count() == len(ids)
            assert page.locator("svg.ev-wide line.change").count() >= 2  # prompt versions changed
            page.locator("table.ev-runs a").first.click()
            page.wait_for_url(f"{base}/evals/{ids[-1]}")
            page.click("text=Compare with the previous run")
            page.wait_for_url(lambda url: "/evals/compare?" in url)
            assert page.locator("table.ev-compare tbody tr").count() == 4
