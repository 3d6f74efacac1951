"""`smallops demo`: the whole loop with no key and no network."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from smallops.cli import _common
from smallops.cli.doctor import print_compact
from smallops.cli.report import print_report
from smallops.cli.run import Batch, print_table, run_all
from smallops.config import Settings
from smallops.ids import short_id
from smallops.scaffold import create_project


def demo_command(
    folder: Path = typer.Option(Path("smallops-demo"), "--dir", help="The demo project folder."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, max=64),
) -> None:
    """Scaffold a demo project and triage a sample inbox with a fake (rule-based) model."""
    from smallops.demo import DemoModel, demo_inputs, load_inbox, scripted_failures
    from smallops.doctor import examine
    from smallops.project import Project
    from smallops.providers.fake import FakeProvider
    from smallops.storage.queries import report
    from smallops.storage.writer import writer_for

    written, _ = create_project(folder, "email-triage")
    say = _common.out.print
    say(
        f"{'Created' if written else 'Reusing'} the demo project in {folder}/ "
        "(SQLite log at .smallops/smallops.db)\n",
        markup=False,
    )
    env = {k: v for k, v in os.environ.items() if k != "SMALLOPS_DATABASE_URL"}
    project = Project(folder, Settings.load(folder, env=env))  # always the embedded SQLite
    inbox = load_inbox()
    wf = project.workflow("email-triage").replace(
        model="fake:keyword-rules",
        provider=FakeProvider(DemoModel(scripted_failures(inbox))),
        settings=project.settings,
    )
    say(
        f"Triaging {len(inbox)} emails with workflow {wf.name}. The model is a fake: keyword "
        "rules, with a few scripted failures\n(a 429, a non-JSON reply, a schema break, a "
        "refusal, a truncation, an outage).\n",
        markup=False,
    )
    started = time.perf_counter()
    inputs = demo_inputs(inbox)
    lines = list(range(1, len(inputs) + 1))
    outcome = run_all(wf, Batch(inputs, lines), concurrency, show_progress=True)
    writer_for(project.settings.log).flush()
    print_table(wf, outcome.results, lines)
    results = [r for r in outcome.results if r is not None]
    say(
        f"\n{len(results)} calls in {time.perf_counter() - started:.1f} s, every one recorded.\n",
        markup=False,
    )
    print_report(report(project.engine()), "7d")
    handed = next((r for r in results if r.status == "queued_for_human"), None)
    repaired = next((r for r in results if r.attempts > 1 and r.ok), None)
    say("\nTry next:", markup=False)
    steps = [
        (f"cd {folder}", ""),
        ("smallops logs", "every call, newest first"),
        ("smallops logs --status queued_for_human", "the emails handed to a human"),
    ]
    if handed:
        steps.append(
            (f"smallops show {short_id(handed.run_id)}", f"why this one failed ({handed.error})")
        )
    if repaired:
        steps.append(
            (
                f"smallops show {short_id(repaired.run_id)}",
                "a retried or repaired call, attempt by attempt",
            )
        )
    steps += [
        ("smallops review next", "be the human: approve, correct, reject"),
        ("smallops serve", "the same queue in a browser"),
        ("smallops report --json", "the numbers, for scripts"),
        ("export OPENAI_API_KEY=sk-...", "then, with the real model:"),
        ("smallops run email-triage --input evals/email_triage.jsonl", ""),
    ]
    for command, why in steps:
        say(f"  {command:<42} {('# ' + why) if why else ''}".rstrip(), markup=False)
    say("\nThe playbook for this project, by team size (smallops doctor):", markup=False)
    print_compact(examine(project), f"smallops -p {folder} doctor")
