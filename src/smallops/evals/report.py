"""Eval results for people and for CI: a Markdown summary and JUnit XML."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from smallops.evals.runner import EvalRun
from smallops.evals.verdict import GateResult
from smallops.kinds import UNJUDGED

ICONS = {"pass": "✅", "inconclusive": "⚠️", "regression": "❌"}


def markdown(run: EvalRun, gate: GateResult | None = None, title: str | None = None) -> str:
    """A summary fit for a pull-request comment or $GITHUB_STEP_SUMMARY."""
    wf = run.workflow
    scores = run.scores()
    lines = [f"### {title or 'smallops eval'}: `{wf.name}`", ""]
    unanswered = run.unanswered()
    if unanswered is not None:
        lines += [f"**{ICONS['inconclusive']} no verdict**", ""]
        lines += [f"- {unanswered}: the prompt cannot be judged; run again", ""]
    if gate is not None:
        lines += [f"**{ICONS[gate.verdict]} {gate.verdict}**", ""]
        lines += [f"- {reason}" for reason in gate.reasons] + [""]
    cost = "unpriced" if run.cost_usd is None else f"${run.cost_usd:.4f}"
    lines += [
        f"prompt `{wf.version.id}` · model `{wf.model}` · {len(scores)} cases, {run.repeat} each · "
        f"cost {cost} ({sum(r.cached for r in run.results)} answers from the cache)",
        "",
    ]
    if gate is not None:
        low, high = gate.diff_ci
        lines += [
            "| | baseline | now |",
            "| --- | --- | --- |",
            f"| pass rate (95% Wilson) | {_rate(gate.rate_baseline)} "
            f"| {_rate(gate.rate_current)} |",
            f"| mean score | {gate.mean_baseline:.3f} | {gate.mean_current:.3f} |",
            "",
            f"Paired: {gate.worse} cases got worse, {gate.better} better "
            f"(exact sign test p = {gate.sign_test_p:.3g}); mean difference 95% CI "
            f"[{low:+.3f}, {high:+.3f}]. This set can detect a drop of {gate.min_detectable} "
            f"cases ({gate.min_detectable_rate:.0%}) or more.",
            "",
        ]
    failures = [r for r in run.results if not r.passed]
    if failures:
        lines += ["| case | repeat | failed checks |", "| --- | --- | --- |"]
        for result in failures[:50]:
            detail = "; ".join(f"{f.field}: {f.detail}" for f in result.fields if not f.passed)
            detail = detail or (result.error or "no valid output")
            lines.append(f"| `{result.case.id}` | {result.repeat} | {_cell(detail)} |")
        if len(failures) > 50:
            lines.append(f"| … | | {len(failures) - 50} more |")
    return "\n".join(lines) + "\n"


def junit(run: EvalRun, gate: GateResult | None = None) -> str:
    """One testsuite per eval; one testcase per case and repeat; a failure per failed check,
    an error per case that got no answer or whose scorer broke."""
    errors = sum(bool(r.no_answer) or any(f.error for f in r.fields) for r in run.results)
    failures = sum(not r.passed for r in run.results) - errors
    suite = ET.Element(
        "testsuite",
        {
            "name": f"smallops.eval.{run.workflow.name}",
            "tests": str(len(run.results)),
            "failures": str(failures),
            "errors": str(errors),
            "timestamp": run.started_at.isoformat(),
        },
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("prompt_version", run.workflow.version.id),
        ("model", str(run.workflow.model)),
        ("verdict", gate.verdict if gate else (UNJUDGED if run.unanswered() else "none")),
    ):
        ET.SubElement(properties, "property", {"name": name, "value": value})
    for result in run.results:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": run.workflow.name,
                "name": result.case.id + (f"[{result.repeat}]" if run.repeat > 1 else ""),
            },
        )
        broken = [f for f in result.fields if f.error]
        if result.no_answer:
            why = result.error or "; ".join(f.detail for f in result.fields if f.no_answer)
            ET.SubElement(case, "error", {"message": f"no answer from the model: {why}"})
        elif broken:
            ET.SubElement(case, "error", {"message": broken[0].detail})
        elif not result.passed:
            detail = "; ".join(f"{f.field}: {f.detail}" for f in result.fields if not f.passed)
            ET.SubElement(case, "failure", {"message": detail or (result.error or "failed")})
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _rate(rate: tuple[float, float, float]) -> str:
    value, low, high = rate
    return f"{value:.1%} [{low:.1%}, {high:.1%}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]
