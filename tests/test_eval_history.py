"""Eval history in `smallops serve`: the list of eval runs, one eval run's accuracy per field and
confusion matrices, and the cases that changed between two eval runs, over eval runs made
through the real gate (prepare_eval, run_gate, the fake provider) on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from smallops import FakeProvider, Settings, Workflow
from smallops.config import Price
from smallops.evals.gate import GateOutcome, prepare_eval, run_gate
from smallops.storage.schema import eval_results

from models import Triage

pytest.importorskip("starlette", reason="the web extra is not installed")

from test_web import JSON_HEADERS, serve

HOSTILE = '<script>alert("x")</script>\x07 ‮evil'


def output(category: str, urgency: str = "normal", summary: str = "a note") -> dict[str, str]:
    return {"category": category, "urgency": urgency, "summary": summary}


# Case -> (expected, answer in the first eval run, answer in the second). c7 is only in the
# first run, c6 only in the second. The numbers the tests check are worked out by hand below.
CASES: dict[str, tuple[dict[str, Any], dict[str, str] | None, dict[str, str] | None]] = {
    "c1": (
        {"category": "billing", "urgency": "high"},
        output("billing", "high"),
        output("spam", "high"),
    ),
    "c2": ({"category": "spam"}, output("spam"), output("spam", summary="another note")),
    "c3": (
        {"category": "support", "urgency": "low"},
        output("billing", "low"),
        output("support", "low"),
    ),
    "c4": (
        {"category": "billing", "summary": {"contains": "invoice"}},
        output("billing", summary="about the invoice"),
        output("billing", summary="about nothing"),
    ),
    "c5": ({"category": "other"}, output("other"), output("other")),
    "c6": ({"category": "sales"}, None, output("sales")),
    "c7": ({"urgency": "normal"}, output("billing"), None),
}


class Model:
    """Answers each case (its input text is the case id) as the current phase says."""

    def __init__(self) -> None:
        self.phase = 1

    def __call__(self, request: Any) -> dict[str, str]:
        text = request.messages[-1]["content"]
        case = text.split()[0]
        answer = CASES[case][self.phase] if case in CASES else output("other")
        assert answer is not None
        if "hostile" in text:
            return {**answer, "summary": HOSTILE}
        return answer


def workflow(
    tmp_path: Path, database_url: str, answers: Model, prompt: str, **options: Any
) -> Workflow[Any]:
    (tmp_path / "triage.prompt").write_text(prompt)
    prices = options.pop("prices", {})
    return Workflow(
        options.pop("name", "triage"),
        model=options.pop("model", "fake:rules"),
        prompt="triage.prompt",
        output=Triage,
        provider=FakeProvider(answers),
        base_dir=tmp_path,
        retries=0,
        fallback=options.pop("fallback", "review"),
        settings=Settings(root=tmp_path, database_url=database_url, prices=prices),
        **options,
    )


def evaluate(
    wf: Workflow[Any],
    cases: dict[str, dict[str, Any]],
    *,
    ci: bool = False,
    baseline: bool = False,
    repeat: int = 1,
    cache: bool = False,
) -> GateOutcome:
    """The cases written as the workflow's eval set and run through the gate, as `smallops
    eval` does."""
    wf.evals_path.parent.mkdir(parents=True, exist_ok=True)
    wf.evals_path.write_text(
        "".join(
            json.dumps({"id": case, "input": {"text": text}, "expected": CASES.get(case, ({},))[0]})
            + "\n"
            for case, text in ((c, spec.get("text", c)) for c, spec in cases.items())
        )
    )
    prepared = prepare_eval(wf, ci=ci, repeat=repeat)
    return asyncio.run(run_gate(prepared, use_cache=cache, update_baseline=baseline))


def two_eval_runs(tmp_path: Path, database_url: str) -> tuple[Any, str, str]:
    """The first eval run (c1-c5, c7) on prompt v1 written as the baseline; the second (c1-c6)
    on an edited prompt, gated against it. Returns (client, first id, second id)."""
    model = Model()
    first = evaluate(
        workflow(tmp_path, database_url, model, "[user]\n{{ text }}"),
        {c: {} for c in ("c1", "c2", "c3", "c4", "c5", "c7")},
        baseline=True,
    )
    model.phase = 2
    second_wf = workflow(tmp_path, database_url, model, "[user]\n{{ text }}\nBe careful.")
    second = evaluate(second_wf, {c: {} for c in ("c1", "c2", "c3", "c4", "c5", "c6")}, ci=True)
    client, _ = serve([second_wf])
    return client, first.run.id, second.run.id


def test_the_list_shows_each_eval_run_with_pass_rate_cost_verdict_and_version(
    tmp_path, database_url
):
    client, first, second = two_eval_runs(tmp_path, database_url)
    data = client.get("/evals", headers=JSON_HEADERS).json()
    assert [r["id"] for r in data["eval_runs"]] == [second, first]  # newest first
    new, old = data["eval_runs"]
    assert (old["passed"], old["cases"], old["pass_rate"]) == (5, 6, round(5 / 6, 4))
    assert (new["passed"], new["cases"], new["pass_rate"]) == (4, 6, round(4 / 6, 4))
    assert old["verdict"] is None and old["verdict_text"] == "not gated"
    assert new["verdict"] in ("pass", "inconclusive", "regression")
    assert new["cost_usd"] is None and new["cost"] == "unpriced"  # fake:rules has no price
    assert new["new_version"] and not old["new_version"]
    assert new["prompt_version"] != old["prompt_version"]
    assert new["delta"] == round(4 / 6 - 5 / 6, 4)
    assert data["workflows"] == {"triage": 2} and data["older"] is None
    assert [len(v) for v in ([p["pass_rate"] for p in data["charts"][0]["points"]],)] == [2]
    assert [p["eval_run_id"] for p in data["charts"][0]["points"]] == [first, second]
    assert {v["prompt_version"] for v in data["versions"]} == {
        new["prompt_version"],
        old["prompt_version"],
    }
    html = client.get("/evals").text
    assert "unpriced" in html and "$0" not in html and "new prompt" in html
    assert "83.3%" in html and "66.7%" in html and "<svg" in html and "pass rate (%)" in html
    assert f'href="/evals/{second}"' in html
    other = client.get("/evals?workflow=nothing", headers=JSON_HEADERS).json()
    assert other["eval_runs"] == [] and other["charts"] == []
    assert "No eval runs of nothing" in client.get("/evals?workflow=nothing").text


def test_per_field_accuracy_and_confusion_matrices_match_the_hand_counts(tmp_path, database_url):
    client, first, second = two_eval_runs(tmp_path, database_url)
    data = client.get(f"/evals/{first}", headers=JSON_HEADERS).json()
    fields = {f["field"]: f for f in data["fields"]}
    # category is expected in c1-c5: right in c1, c2, c4, c5; c3 said billing for support.
    assert (fields["category"]["matched"], fields["category"]["answers"]) == (4, 5)
    assert fields["category"]["accuracy"] == 0.8 and fields["category"]["enum"]
    assert (fields["urgency"]["matched"], fields["urgency"]["answers"]) == (3, 3)
    assert (fields["summary"]["matched"], fields["summary"]["by"]) == (1, "contains")
    assert [f["field"] for f in data["fields"]] == ["category", "urgency", "summary"]
    matrices = {m["field"]: m for m in data["confusion"]}
    category = matrices["category"]
    assert category["got"] == ["billing", "support", "sales", "spam", "other"]
    assert {r["expected"]: r["counts"] for r in category["rows"]} == {
        "billing": [2, 0, 0, 0, 0],
        "support": [1, 0, 0, 0, 0],
        "spam": [0, 0, 0, 1, 0],
        "other": [0, 0, 0, 0, 1],
    }
    assert [r["expected"] for r in category["rows"]] == ["billing", "support", "spam", "other"]
    assert (category["correct"], category["total"]) == (4, 5)
    urgency = matrices["urgency"]
    assert [r["expected"] for r in urgency["rows"]] == ["low", "normal", "high"]
    assert {r["expected"]: r["correct"] for r in urgency["rows"]} == {
        "low": 1,
        "normal": 1,
        "high": 1,
    }
    assert "summary" not in matrices and data["notes"] == []
    assert data["previous"] is None and data["compare_url"] is None

    later = client.get(f"/evals/{second}", headers=JSON_HEADERS).json()
    fields = {f["field"]: f for f in later["fields"]}
    assert (fields["category"]["matched"], fields["category"]["answers"]) == (5, 6)
    assert (fields["summary"]["matched"], fields["summary"]["answers"]) == (0, 1)
    assert later["previous"] == first
    assert later["compare_url"] == f"/evals/compare?a={first}&b={second}"
    rows = {r["expected"]: r["counts"] for r in later["confusion"][0]["rows"]}
    assert rows["billing"] == [1, 0, 0, 1, 0]  # c4 right, c1 said spam
    html = client.get(f"/evals/{second}").text
    assert "Compare with the previous run" in html and "Confusion matrices" in html
    assert "83.3%" in html  # category, 5 of 6


def test_an_eval_run_recorded_before_expected_values_were_kept_shows_its_checks_with_a_note(
    tmp_path, database_url
):
    client, first, _ = two_eval_runs(tmp_path, database_url)
    engine = client.app.state.web.desk.engine
    with engine.connect() as connection:
        rows = connection.execute(
            eval_results.select().where(eval_results.c.eval_run_id == first)
        ).all()
    with engine.begin() as connection:
        for row in rows:
            old = [{k: v for k, v in c.items() if k != "expected"} for c in row.checks]
            connection.execute(
                update(eval_results)
                .where(
                    eval_results.c.eval_run_id == first,
                    eval_results.c.case_id == row.case_id,
                    eval_results.c.repeat == row.repeat,
                )
                .values(checks=old)
            )
    data = client.get(f"/evals/{first}", headers=JSON_HEADERS).json()
    assert data["confusion"] == [] and "before expected values were kept" in data["notes"][0]
    fields = {f["field"]: f for f in data["fields"]}
    assert (fields["category"]["matched"], fields["category"]["by"]) == (4, "check")
    assert "before expected values were kept" in client.get(f"/evals/{first}").text


def test_compare_shows_exactly_the_cases_that_changed_and_the_ones_in_one_run(
    tmp_path, database_url
):
    client, first, second = two_eval_runs(tmp_path, database_url)
    data = client.get(f"/evals/compare?a={first}&b={second}", headers=JSON_HEADERS).json()
    assert [(c["case_id"], c["change"]) for c in data["changed"]] == [
        ("c1", "passed → failed"),
        ("c4", "passed → failed"),
        ("c3", "failed → passed"),
        ("c2", "output changed"),
    ]
    assert data["counts"] == {
        "passed → failed": 2,
        "failed → passed": 1,
        "output changed": 1,
        "unchanged": 1,
    }
    assert [r["case_id"] for r in data["only_a"]] == ["c7"]
    assert [r["case_id"] for r in data["only_b"]] == ["c6"]
    c1 = data["changed"][0]
    assert c1["input_preview"] == "c1"
    assert {e["field"]: e["value"] for e in c1["expected"]} == {
        "category": "billing",
        "urgency": "high",
    }
    assert {o["field"]: o["value"] for o in c1["a"]["output"]}["category"] == "billing"
    assert {o["field"]: o["value"] for o in c1["b"]["output"]}["category"] == "spam"
    assert [f["field"] for f in c1["b"]["failed"]] == ["category"]
    assert data["a"]["id"] == first and data["b"]["id"] == second
    html = client.get(f"/evals/compare?a={first}&b={second}").text
    assert "passed → failed" in html and "Only in A" in html and "Only in B" in html


def test_unknown_eval_runs_are_404s_and_bad_parameters_400s_never_500s(tmp_path, database_url):
    client, first, _ = two_eval_runs(tmp_path, database_url)
    for path in (
        "/evals/no-such-run",
        "/evals/00000000-0000-7000-8000-000000000000",
        f"/evals/compare?a={first}&b=nope",
        "/evals/%00",  # no eval run has that id, as on /runs/ and /workflows/
    ):
        page = client.get(path)
        assert page.status_code == 404 and "error-page" in page.text, path
        assert client.get(path, headers=JSON_HEADERS).json()["error"].startswith("there is no")
    for path in (
        "/evals/compare",
        f"/evals/compare?a={first}",
        "/evals/compare?a=&b=",
        f"/evals/compare?a={first}&b=%00",
        "/evals?workflow=%00",
        "/evals?workflow=" + "w" * 300,
        "/evals?before=nope",
        f"/evals?workflow=other&before={first}",
    ):
        page = client.get(path)
        assert page.status_code == 400 and "error-page" in page.text, path
        answer = client.get(path, headers=JSON_HEADERS)
        assert answer.status_code == 400 and answer.json()["error"], path


def test_pages_escape_inputs_outputs_and_ids(tmp_path, database_url):
    model = Model()
    wf = workflow(tmp_path, database_url, model, "[user]\n{{ text }}")
    run = evaluate(wf, {"c1": {"text": f"c1 hostile {HOSTILE}"}, "c5": {}}).run
    model.phase = 2
    again = evaluate(wf, {"c1": {"text": f"c1 hostile {HOSTILE}"}, "c5": {}}).run
    client, _ = serve([wf])
    for path in (f"/evals/{run.id}", f"/evals/compare?a={run.id}&b={again.id}", "/evals"):
        html = client.get(path).text
        assert "<script>alert" not in html, path
    html = client.get(f"/evals/{run.id}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    page = client.get("/evals/<script>x</script>")
    assert page.status_code == 404 and "<script>x" not in page.text


def test_a_metadata_workflow_shows_only_the_labels_of_its_outputs(tmp_path, database_url):
    model = Model()
    wf = workflow(
        tmp_path,
        database_url,
        model,
        "[user]\n{{ text }}",
        content="metadata",
        review="none",
        fallback="raise",
    )
    run = evaluate(wf, {"c1": {}, "c3": {}}).run
    client, _ = serve([wf])
    data = client.get(f"/evals/{run.id}", headers=JSON_HEADERS).json()
    for result in data["results"]:
        assert result["labels_only"] and result["input_preview"] == ""
        assert [o["field"] for o in result["output"]] == ["category", "urgency"]
    assert {f["field"]: f["matched"] for f in data["fields"]} == {"category": 1, "urgency": 2}
    html = client.get(f"/evals/{run.id}").text
    assert "a note" not in html and "labels only" in html


def test_the_list_pages_through_older_eval_runs_without_offset(tmp_path, database_url, monkeypatch):
    from smallops.dashboards import eval_history

    monkeypatch.setattr(eval_history, "PAGE", 2)
    model = Model()
    wf = workflow(tmp_path, database_url, model, "[user]\n{{ text }}")
    ids = [evaluate(wf, {"c5": {}}).run.id for _ in range(5)]
    client, _ = serve([wf])
    seen, url = [], "/evals?workflow=triage"
    while url:
        data = client.get(url, headers=JSON_HEADERS).json()
        seen += [r["id"] for r in data["eval_runs"]]
        url = data["older"]
    assert seen == ids[::-1]
    assert "Older →" in client.get("/evals").text


def test_a_priced_run_shows_its_cost_and_a_cached_rerun_costs_nothing_never_unpriced(
    tmp_path, database_url
):
    wf = workflow(
        tmp_path,
        database_url,
        Model(),
        "[user]\n{{ text }}",
        model="fake:priced",
        prices={"fake:priced": Price(input=1.0, output=10.0)},
    )
    paid = evaluate(wf, {"c1": {}, "c2": {}}, cache=True).run
    cached = evaluate(wf, {"c1": {}, "c2": {}}, cache=True).run
    client, _ = serve([wf])
    runs = {r["id"]: r for r in client.get("/evals", headers=JSON_HEADERS).json()["eval_runs"]}
    assert paid.cost_usd and runs[paid.id]["cost"] == f"${paid.cost_usd:.4f}"
    assert runs[cached.id]["cost"] == "$0 (every answer cached)"
    assert runs[paid.id]["unpriced"] == 0


def test_repeats_count_every_answer_and_compare_matches_them_by_repeat(tmp_path, database_url):
    model = Model()
    wf = workflow(tmp_path, database_url, model, "[user]\n{{ text }}")
    first = evaluate(wf, {"c1": {}, "c3": {}}, repeat=2).run
    model.phase = 2
    second = evaluate(wf, {"c1": {}, "c3": {}}, repeat=2).run
    client, _ = serve([wf])
    data = client.get(f"/evals/{first.id}", headers=JSON_HEADERS).json()
    assert data["answers"] == 4 and data["eval_run"]["repeat"] == 2
    fields = {f["field"]: f for f in data["fields"]}
    assert (fields["category"]["matched"], fields["category"]["answers"]) == (2, 4)
    compared = client.get(f"/evals/compare?a={first.id}&b={second.id}", headers=JSON_HEADERS)
    assert [(c["case_id"], c["repeat"], c["change"]) for c in compared.json()["changed"]] == [
        ("c1", 0, "passed → failed"),
        ("c1", 1, "passed → failed"),
        ("c3", 0, "failed → passed"),
        ("c3", 1, "failed → passed"),
    ]
    assert "#2" in client.get(f"/evals/compare?a={first.id}&b={second.id}").text
