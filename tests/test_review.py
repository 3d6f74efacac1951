"""The review queue: policies, reviewer actions, leases, concurrency, graduation, decisions."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from smallops import FakeProvider, FakeReply, NotFoundError, Settings, Workflow, sample
from smallops import until_graduated as graduated_policy
from smallops.errors import InputError
from smallops.review.desk import ReviewDesk
from smallops.review.evidence import class_stats, earlier_versions, standings, workflow_stats
from smallops.review.queue import DecidedError, HeldError, ReviewQueue
from smallops.stats import clopper_pearson_lower, reviews_needed
from smallops.storage.schema import graduation_events, review_decisions
from smallops.testing import recorded_runs

from models import GOOD, Triage

TESTS = str(Path(__file__).parent)
SPAM = {"category": "spam", "urgency": "low", "summary": "Prize offer."}


def make(tmp_path: Path, database_url: str, answer: Any = None, **options: Any) -> Workflow:
    prompt = tmp_path / "triage.prompt"
    if not prompt.exists():
        prompt.write_text("[user]\n{{ text }}")
    answer = answer if answer is not None else (lambda _: GOOD)
    provider = answer if isinstance(answer, FakeProvider) else FakeProvider(answer)
    options.setdefault("fallback", "review")
    return Workflow(
        options.pop("name", "triage"),
        model="fake:rules",
        prompt="triage.prompt",
        output=options.pop("output", Triage),
        provider=provider,
        base_dir=tmp_path,
        retries=0,
        settings=Settings(root=tmp_path, database_url=database_url),
        **options,
    )


def desk_for(*workflows: Workflow) -> ReviewDesk:
    engine = workflows[0].plan().writer.store.engine
    workflows[0].plan().writer.flush()
    return ReviewDesk(engine, {wf.name: wf for wf in workflows})


def test_review_all_queues_every_output_and_none_queues_nothing(tmp_path, database_url):
    reviewed = make(tmp_path, database_url, review="all")
    unreviewed = make(tmp_path, database_url, name="auto", review="none")
    ids = [reviewed.run(text=f"e{i}").run_id for i in range(3)]
    assert unreviewed.run(text="x").status == "auto"
    desk = desk_for(reviewed, unreviewed)
    items = desk.items()
    assert [i["run_id"] for i in items] == ids
    assert {(i["reason"], i["route"]) for i in items} == {("policy", "required")}
    assert items[0]["output"] == GOOD and items[0]["inputs"] == {"text": "e0"}
    assert {r["review_route"] for r in recorded_runs(unreviewed)} == {"none"}


def test_sample_reviews_about_the_given_fraction_and_records_the_outcome(tmp_path):
    random.seed(7)
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}", review=sample(0.25))
    statuses = Counter(wf.run(text="x").status for _ in range(400))
    assert 70 <= statuses["pending_review"] <= 130
    runs = recorded_runs(wf)
    assert {r["review_policy"] for r in runs} == {"sample(0.25)"}
    assert Counter(r["review_route"] for r in runs) == {
        "sampled": statuses["pending_review"],
        "sampled_out": statuses["auto"],
    }


def test_the_review_fallback_queues_the_work_with_whatever_partial_output_exists(
    tmp_path, database_url
):
    wf = make(
        tmp_path,
        database_url,
        FakeProvider.queue(
            [
                {"category": "billing", "urgency": "someday"},  # schema mismatch, then
                {"category": "billing", "urgency": "someday"},  # the repair fails the same way
            ]
        ),
    )
    result = wf.run(text="x")
    assert result.status == "queued_for_human"
    [item] = desk_for(wf).items()
    assert item["reason"] == "fallback" and item["error_type"] == "schema_mismatch"
    assert item["output"] == {"category": "billing", "urgency": "someday"}


def test_approve_correct_reject_and_skip_are_recorded_with_who_when_and_outputs(
    tmp_path, database_url
):
    wf = make(tmp_path, database_url)
    a, b, c = (wf.run(text=t).run_id for t in "abc")
    desk = desk_for(wf)
    desk.skip(a, "ann")
    assert desk.approve(a, "ann").output == GOOD
    fixed = {**GOOD, "category": "support"}
    decision = desk.correct(b, "bob", fixed)
    assert decision.status == "corrected" and decision.output == fixed
    assert desk.reject(c, "cat", "not an email at all").reason == "not an email at all"
    assert desk.items() == []
    with wf.plan().writer.store.engine.connect() as connection:
        rows = connection.execute(select(review_decisions).order_by(review_decisions.c.id)).all()
    assert [(r.run_id, r.action, r.reviewer) for r in rows] == [
        (a, "skip", "ann"),
        (a, "approve", "ann"),
        (b, "correct", "bob"),
        (c, "reject", "cat"),
    ]
    assert rows[2].output_before == GOOD and rows[2].output_after == fixed
    assert all(r.decided_at is not None for r in rows)
    assert desk.item(c)["state"] == "rejected" and desk.item(c)["reject_reason"]


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda desk, run: desk.correct(run, "ann", {**GOOD, "urgency": "whenever"}), "urgency"),
        (lambda desk, run: desk.correct(run, "ann", "{not json"), "not valid JSON"),
        (lambda desk, run: desk.correct(run, "ann", "[" * 100_000 + "]" * 100_000), "nest more"),
        (lambda desk, run: desk.correct(run, "ann", {**GOOD, "summary": _nested(150)}), "nest"),
        (lambda desk, run: desk.reject(run, "ann", "  "), "needs a reason"),
        (lambda desk, run: desk.approve(run, " "), "reviewer name"),
    ],
)
def test_bad_decisions_are_clear_errors_and_change_nothing(tmp_path, database_url, action, message):
    wf = make(tmp_path, database_url)
    run = wf.run(text="x").run_id
    desk = desk_for(wf)
    with pytest.raises(InputError, match=message):
        action(desk, run)
    item = desk.item(run)
    assert item["state"] == "pending" and item["history"] == []


FAILED_ANSWERS: dict[str, list[Any]] = {  # what one failed call hears (the repair included)
    "truncated": [FakeReply(text='{"category": "billing", "urg', finish="length")],
    "invalid_json": ["It is about billing, I think.", "Billing."],
    "schema_mismatch": [{"category": "billing", "urgency": "someday"}] * 2,
}


@pytest.mark.parametrize("failure", sorted(FAILED_ANSWERS))
def test_the_partial_answer_of_a_failed_call_can_only_be_corrected_or_rejected(
    tmp_path, database_url, failure
):
    """Approving it would hand a partial string or a dict with the wrong fields to the app."""
    wf = make(tmp_path, database_url, FakeProvider.queue(FAILED_ANSWERS[failure] * 2))
    first, second = (wf.run(text=t).run_id for t in "ab")
    desk = desk_for(wf)
    item = desk.item(first)
    assert item["error_type"] == failure and item["output"] is not None
    assert failure in (desk.approvable(item) or "")
    with pytest.raises(InputError, match=r"cannot be approved.*correct it with valid output"):
        desk.approve(first, "ann")
    assert desk.item(first)["state"] == "pending" and desk.item(first)["history"] == []
    assert desk.correct(first, "ann", GOOD).output == GOOD
    assert desk.reject(second, "ann", "garbled").status == "rejected"


def test_a_truncated_free_text_answer_cannot_be_approved(tmp_path, database_url):
    cut = FakeReply(text="Dear Ann, thank you for", finish="length")
    wf = make(tmp_path, database_url, FakeProvider.queue([cut]), output=None)
    run = wf.run(text="x").run_id
    desk = desk_for(wf)
    assert desk.item(run)["output"] == "Dear Ann, thank you for"
    assert "truncated" in (desk.approvable(desk.item(run)) or "")
    with pytest.raises(InputError, match="cannot be approved"):
        desk.approve(run, "ann")
    assert desk.correct(run, "ann", "Dear Ann, thank you for writing.").status == "corrected"


def test_an_output_that_no_longer_fits_the_workflows_schema_cannot_be_approved(
    tmp_path, database_url
):
    """An output made before the schema changed would reach today's application wrong."""
    wf = make(tmp_path, database_url)
    run = wf.run(text="x").run_id
    assert desk_for(wf).approvable(desk_for(wf).item(run)) is None

    class TriageWithTeam(Triage):
        team: str

    desk = desk_for(make(tmp_path, database_url, output=TriageWithTeam))
    assert "team" in (desk.approvable(desk.item(run)) or "")
    with pytest.raises(InputError, match="does not fit TriageWithTeam"):
        desk.approve(run, "ann")
    assert desk.item(run)["state"] == "pending"


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_unknown_run_ids_and_double_decisions_are_refused(tmp_path, database_url):
    wf = make(tmp_path, database_url)
    run = wf.run(text="x").run_id
    desk = desk_for(wf)
    with pytest.raises(NotFoundError):
        desk.approve("01234567-0000-7000-8000-000000000000", "ann")
    desk.approve(run, "ann")
    with pytest.raises(DecidedError, match="already approved by ann"):
        desk.reject(run, "bob", "too late")
    assert len(desk.item(run)["history"]) == 1


def test_an_item_held_by_another_reviewer_cannot_be_decided_until_its_lease_expires(
    tmp_path, database_url
):
    wf = make(tmp_path, database_url)
    run = wf.run(text="x").run_id
    desk = desk_for(wf)
    assert desk.claim_next("ann")["run_id"] == run
    assert desk.claim_next("bob") is None
    with pytest.raises(HeldError, match="held by ann"):
        desk.approve(run, "bob")
    assert desk.item(run)["state"] == "pending" and desk.item(run)["history"] == []
    later = ReviewQueue(desk.engine, now=lambda: datetime.now(timezone.utc) + timedelta(minutes=11))
    assert later.claim_next("bob")["run_id"] == run  # the lease expired: back in the queue
    assert later.decide(run, "bob", "approve").reviewer == "bob"


def test_eight_reviewers_decide_each_item_exactly_once(tmp_path, database_url):
    """1,000 items on Postgres (row locks), 150 on SQLite (the write lock)."""
    items = 1000 if database_url.startswith("postgresql") else 150
    wf = make(tmp_path, database_url)
    ids = {wf.run(text=f"e{i}").run_id for i in range(items)}
    desk = desk_for(wf)
    decided: list[str] = []
    lock = threading.Lock()

    def reviewer(name: str) -> None:
        queue = ReviewQueue(desk.engine)
        while (item := queue.claim_next(name)) is not None:
            queue.decide(item["run_id"], name, "approve")
            with lock:
                decided.append(item["run_id"])

    threads = [threading.Thread(target=reviewer, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(decided) == sorted(ids)
    with desk.engine.connect() as connection:
        per_item = Counter(r.run_id for r in connection.execute(select(review_decisions.c.run_id)))
    assert set(per_item) == ids and set(per_item.values()) == {1}
    assert desk.items() == []


def test_the_graduation_bound_matches_known_values():
    assert clopper_pearson_lower(59, 59) >= 0.95
    assert clopper_pearson_lower(58, 59) < 0.95
    assert clopper_pearson_lower(0, 10) == 0.0


def _evidence(wf: Workflow, approvals: int, rejections: int, days_ago: float) -> None:
    """Review `approvals + rejections` new outputs, decided `days_ago` days ago."""
    for i in range(approvals + rejections):
        wf.run(text=f"e{i}")
    desk = desk_for(wf)
    then = datetime.now(timezone.utc) - timedelta(days=days_ago)
    queue = ReviewQueue(desk.engine, now=lambda: then)
    for n, item in enumerate(desk.items(limit=10_000)):
        if n < approvals:
            queue.decide(item["run_id"], "ann", "approve")
        else:
            queue.decide(item["run_id"], "ann", "reject", reason="wrong")


def _events(wf: Workflow) -> list[Any]:
    with wf.plan().writer.store.engine.connect() as connection:
        query = select(graduation_events).order_by(graduation_events.c.at, graduation_events.c.id)
        return list(connection.execute(query))


def _promoted(wf: Workflow, model: str = "rules") -> set[str]:
    """The classes promoted for the workflow's prompt version and the served `model`."""
    with wf.plan().writer.store.engine.connect() as connection:
        found = standings(connection, wf.name, wf.model.model, wf.version.id)
    return {key.class_key for key, now in found.items() if now.promoted and key.model == model}


def _answering_as(served: dict[str, str]) -> Any:
    """A responder that answers SPAM as the model named in `served["model"]` at the time."""
    return lambda _: FakeReply(text=Triage(**SPAM).model_dump_json(), model=served["model"])


@pytest.mark.parametrize(
    ("approvals", "rejections", "days", "promoted"),
    [
        (59, 0, 31, True),  # bound 0.9505 and 31 days
        (58, 1, 31, False),  # bound 0.922: not enough
        (59, 0, 5, False),  # bound reached, but only 5 days of reviews
    ],
)
def test_promotion_needs_both_the_days_and_the_bound(
    tmp_path, database_url, approvals, rejections, days, promoted
):
    wf = make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
    _evidence(wf, approvals, rejections, days)
    wf.plan().graduation.refresh()
    assert ("category=spam" in _promoted(wf)) is promoted
    result = wf.run(text="new")
    assert result.status == ("auto" if promoted else "pending_review")
    assert recorded_runs(wf)[-1]["review_route"] == ("graduated" if promoted else "not_graduated")


def test_regular_reviews_demote_a_promoted_class_whose_bound_falls_below_target(
    tmp_path, database_url
):
    """Promoted at 59 of 59; reviews of outputs queued earlier bring it to 271 of 313 (lower
    bound 0.83 < 0.95): it is demoted, and its outputs go back to review."""
    wf = make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
    for i in range(313):
        wf.run(text=f"e{i}")
    desk = desk_for(wf)
    items = desk.items(limit=10_000)
    then = datetime.now(timezone.utc) - timedelta(days=31)
    for item in items[:59]:
        ReviewQueue(desk.engine, now=lambda: then).decide(item["run_id"], "ann", "approve")
    graduation = wf.plan().graduation
    graduation.refresh()
    assert _promoted(wf) == {"category=spam", "urgency=low"}
    assert wf.run(text="while promoted").status == "auto"
    for n, item in enumerate(items[59:]):
        if n < 212:
            desk.queue.decide(item["run_id"], "bob", "approve")
        else:
            desk.queue.decide(item["run_id"], "bob", "reject", reason="not spam")
    graduation.refresh()
    assert _promoted(wf) == set()
    demotions = [event for event in _events(wf) if event.action == "demote"]
    assert {event.class_key for event in demotions} == {"category=spam", "urgency=low"}
    assert all("271/313" in e.reason and "0.8299 < target 0.95" in e.reason for e in demotions)
    assert wf.run(text="after").status == "pending_review"
    graduation.refresh()
    assert len(_events(wf)) == 4  # two promotions, two demotions, and nothing since


def test_a_failed_audit_keeps_the_class_demoted_until_new_reviews_clear_the_target(
    tmp_path, database_url
):
    """The 59 approvals that promoted a class do not undo its failed audit at the next refresh:
    only reviews decided after the failure count, toward the bound and the days alike."""
    wf = make(
        tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, min_days=0, audit=1)
    )
    _evidence(wf, 59, 0, 31)
    graduation = wf.plan().graduation
    graduation.refresh()
    audited = wf.run(text="x")
    desk = desk_for(wf)
    assert desk.item(audited.run_id)["route"] == "audit"
    desk.correct(audited.run_id, "ann", {**SPAM, "category": "sales"})
    assert _promoted(wf) == set()
    events = len(_events(wf))
    graduation.refresh()  # the old evidence alone still clears the target
    assert _promoted(wf) == set() and len(_events(wf)) == events
    again = wf.run(text="y")
    assert again.status == "pending_review"
    desk_for(wf).approve(again.run_id, "ann")
    _evidence(wf, 57, 0, 0)  # 58 approvals since the failure: 0.9496 < 0.95
    graduation.refresh()
    assert _promoted(wf) == set() and len(_events(wf)) == events
    _evidence(wf, 1, 0, 0)  # 59 since the failure
    graduation.refresh()
    assert _promoted(wf) == {"category=spam", "urgency=low"}
    assert wf.run(text="z").status == "pending_review"  # graduated again: audited (audit=1)
    assert recorded_runs(wf)[-1]["review_route"] == "audit"
    monthly = graduated_policy(0.95, min_days=30)
    stats = class_stats(
        desk.engine, wf.name, monthly, prompt_version=wf.version.id, pinned=wf.model.model
    )
    spam = next(row for row in stats if row.class_key == "category=spam")
    assert spam.reviews == 59 and spam.since is not None
    assert spam.recommendation == "needs about 30 more days of reviews"


def test_stats_and_routing_read_the_same_evidence_when_the_provider_names_another_model(
    tmp_path, database_url
):
    """The pin is fake:rules, the provider answers as rules-2024-07-18: `review stats` counts
    the reviews routing counts and shows the class automated, not "0 reviews"."""
    wf = make(
        tmp_path,
        database_url,
        _answering_as({"model": "rules-2024-07-18"}),
        review=graduated_policy(0.95, audit=0),
    )
    _evidence(wf, 59, 0, 31)
    wf.plan().graduation.refresh()
    assert wf.run(text="x").status == "auto"
    stats = workflow_stats(desk_for(wf).engine, wf)
    assert {row.model for row in stats} == {"rules-2024-07-18"}
    spam = next(row for row in stats if row.class_key == "category=spam")
    assert (spam.reviews, spam.graduated, spam.recommendation) == (59, True, "automate")


def test_a_new_prompt_version_starts_graduation_afresh_and_stats_show_the_earlier_reviews(
    tmp_path, database_url
):
    wf = make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
    _evidence(wf, 59, 0, 31)
    wf.plan().graduation.refresh()
    (tmp_path / "triage.prompt").write_text("[user]\nClassify: {{ text }}")
    edited = make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
    edited.plan().graduation.refresh()
    assert _promoted(edited) == set()
    assert edited.run(text="x").status == "pending_review"
    engine = desk_for(edited).engine
    spam = next(row for row in workflow_stats(engine, edited) if row.class_key == "category=spam")
    assert (spam.reviews, spam.graduated) == (0, False)
    assert earlier_versions(engine, edited.name, edited.version.id) == {wf.version.id: 59}


def test_two_processes_on_different_prompt_versions_write_no_event_ping_pong(
    tmp_path, database_url
):
    """Each refreshes by its own prompt version's evidence: one promotion per class, not a
    promote/demote pair every round."""
    old = make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
    _evidence(old, 59, 0, 31)
    (tmp_path / "triage.prompt").write_text("[user]\nClassify: {{ text }}")
    new = make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
    assert new.version.id != old.version.id
    for _ in range(5):
        old.plan().graduation.refresh()
        new.plan().graduation.refresh()
        assert old.run(text="o").status == "auto"
        assert new.run(text="n").status == "pending_review"
    assert [(event.action, event.prompt_version) for event in _events(old)] == [
        ("promote", old.version.id)
    ] * 2


def test_an_endpoint_alternating_served_models_writes_no_event_ping_pong(tmp_path, database_url):
    """Outputs are judged by the evidence of the model that served them, and neither model's
    standing changes when the other one answers."""
    served = {"model": "rules-a"}
    wf = make(tmp_path, database_url, _answering_as(served), review=graduated_policy(0.95, audit=0))
    _evidence(wf, 59, 0, 31)
    graduation = wf.plan().graduation
    for _ in range(5):
        graduation.refresh()
        served["model"] = "rules-a"
        assert wf.run(text="a").status == "auto"
        served["model"] = "rules-b"
        assert wf.run(text="b").status == "pending_review"
    assert [(event.action, event.model) for event in _events(wf)] == [("promote", "rules-a")] * 2


def test_processes_refreshing_at_once_write_each_promotion_once(tmp_path, database_url):
    workflows = [
        make(tmp_path, database_url, lambda _: SPAM, review=graduated_policy(0.95, audit=0))
        for _ in range(6)
    ]
    _evidence(workflows[0], 59, 0, 31)
    start = threading.Barrier(len(workflows))

    def refresh(wf: Workflow) -> None:
        start.wait()
        wf.plan().graduation.refresh()

    threads = [threading.Thread(target=refresh, args=(wf,)) for wf in workflows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(event.class_key for event in _events(workflows[0])) == [
        "category=spam",
        "urgency=low",
    ]
    assert all(wf.run(text="x").status == "auto" for wf in workflows)


def test_the_application_gets_the_human_decision_by_wait_hook_and_webhook(
    tmp_path, database_url, monkeypatch
):
    from smallops.review import webhooks

    from webhook_receiver import Receiver

    monkeypatch.setenv(
        "SMALLOPS_WEBHOOK_SECRET", "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg="
    )
    seen: list[Any] = []
    with Receiver(failures=2) as receiver:
        wf = make(
            tmp_path,
            database_url,
            FakeProvider.queue([FakeReply(refusal="no")]),
            on_decision=seen.append,
            webhook=receiver.url,
        )
        result = wf.run(text="x")
        assert result.status == "queued_for_human"
        waiter: list[Any] = []
        thread = threading.Thread(target=lambda: waiter.append(wf.wait(result.run_id, 20, 0.05)))
        thread.start()
        human = {"category": "billing", "urgency": "high", "summary": "Done by hand."}
        desk_for(wf).correct(result.run_id, "ann", human)
        thread.join()
        assert waiter[0].output == human and waiter[0].reviewer == "ann"  # 1. wait
        assert [d.output for d in seen] == [human]  # 2. the hook
        engine = wf.plan().writer.store.engine
        secrets, _ = webhooks.signing_secrets([wf])
        deadline = time.monotonic() + 20
        while not receiver.accepted and time.monotonic() < deadline:
            # the first attempts fail (HTTP 500): retried, here without the backoff wait
            with engine.begin() as connection:
                connection.exec_driver_sql(
                    "UPDATE webhook_deliveries SET next_attempt_at = created_at"
                )
            webhooks.deliver_due(engine, secrets)
            time.sleep(0.05)
        webhooks.deliver_due(engine, secrets)  # delivered: never sent again
        assert len(receiver.accepted) == 1  # 3. the webhook
        body, headers = receiver.accepted[0]
        assert webhooks.verify(secrets["triage"], headers, body)
        assert receiver.ids == [headers["webhook-id"]] * 3  # one id across every attempt
        import json

        payload = json.loads(body)
        assert payload["data"]["output"] == human and payload["data"]["decision"] == "corrected"
    assert wf.decision(result.run_id).status == "corrected"


def test_a_receiver_that_does_not_speak_http_is_a_failed_attempt_and_blocks_no_other(
    tmp_path, database_url, monkeypatch
):
    """An answer that is not HTTP at all is one failed attempt, retried with backoff; the
    deliveries of other workflows still go out in the same round."""
    import socket
    import threading

    from smallops.review import webhooks
    from smallops.storage.schema import webhook_deliveries

    from webhook_receiver import Receiver

    monkeypatch.setenv(
        "SMALLOPS_WEBHOOK_SECRET", "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg="
    )
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    threading.Thread(target=answer_garbage, daemon=True).start()
    garbage_url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    with Receiver() as healthy:
        broken = make(tmp_path, database_url, name="broken", webhook=garbage_url)
        fine = make(tmp_path, database_url, name="fine", webhook=healthy.url)
        runs = [broken.run(text="x").run_id, fine.run(text="y").run_id]
        engine = broken.plan().writer.store.engine
        secrets, _ = webhooks.signing_secrets([broken, fine])
        desk = desk_for(broken, fine)
        for run_id in runs:
            desk.queue.decide(run_id, "ann", "approve", extra=desk._with_decision)
        assert webhooks.deliver_due(engine, secrets) == (1, 1)
        with engine.connect() as connection:
            rows = {
                row.url: row
                for row in connection.execute(select(webhook_deliveries)).mappings().all()
            }
    listener.close()
    assert rows[healthy.url]["state"] == "delivered" and len(healthy.accepted) == 1
    failed = rows[garbage_url]
    assert failed["state"] == "pending" and failed["attempts"] == 1
    assert (
        "BadStatusLine" in failed["last_error"] and failed["next_attempt_at"] > failed["created_at"]
    )


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_webhook_receiver_that_redirects_has_not_received_it_and_is_retried(
    tmp_path, database_url, monkeypatch, code
):
    """A 3xx is never followed (no body-less GET elsewhere counts as delivered): it is retried."""
    from smallops.review import webhooks
    from smallops.storage.schema import webhook_deliveries

    from webhook_receiver import Receiver

    monkeypatch.setenv(
        "SMALLOPS_WEBHOOK_SECRET", "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg="
    )
    with Receiver() as target, Receiver(redirect=(code, target.url)) as redirecting:
        wf = make(tmp_path, database_url, webhook=redirecting.url)
        run_id = wf.run(text="x").run_id
        desk_for(wf).approve(run_id, "ann")
        engine = wf.plan().writer.store.engine
        secrets, _ = webhooks.signing_secrets([wf])

        def delivery() -> dict[str, Any]:
            with engine.connect() as connection:
                [row] = connection.execute(select(webhook_deliveries)).mappings().all()
            return dict(row)

        deadline = time.monotonic() + 20  # the decision's own attempt, sent in the background
        while delivery()["attempts"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        for attempt in (1, 2, 3):
            row = delivery()
            assert row["state"] == "pending" and row["attempts"] == attempt
            assert row["last_error"] == f"HTTP {code} (redirects are not followed)"
            assert row["next_attempt_at"] > row["created_at"]  # retried later, with backoff
            with engine.begin() as connection:  # due now: retried without the backoff wait
                connection.exec_driver_sql(
                    "UPDATE webhook_deliveries SET next_attempt_at = created_at"
                )
            assert webhooks.deliver_due(engine, secrets) == (0, 1)
        assert [method for method, _ in redirecting.requests] == ["POST"] * 4
        assert target.requests == [] and target.accepted == []


def test_reviewed_items_become_eval_cases_once(tmp_path):
    import json

    from smallops.review.export import Exported, export_reviewed

    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    a, b, c = (wf.run(text=t).run_id for t in "abc")
    desk = desk_for(wf)
    desk.approve(a, "ann")
    desk.correct(b, "ann", {**GOOD, "urgency": "high"})
    desk.reject(c, "ann", "spam")
    target = tmp_path / "evals" / "triage.jsonl"
    target.parent.mkdir()
    target.write_text('{"id": "triage-001", "input": {"text": "x"}, "expected": {}}\n')
    assert export_reviewed(desk.queue, wf, target) == Exported(2, 0)
    assert export_reviewed(desk.queue, wf, target) == Exported(0, 2)
    cases = [json.loads(line) for line in target.read_text().splitlines()]
    assert [case["id"] for case in cases] == ["triage-001", *sorted(f"review-{r}" for r in (a, b))]
    by_id = {case["id"]: case for case in cases}
    assert by_id[f"review-{a}"]["expected"] == GOOD
    assert by_id[f"review-{b}"]["expected"]["urgency"] == "high"
    assert by_id[f"review-{b}"]["input"] == {"text": "b"}


def test_exported_cases_keep_line_separators_and_read_back(tmp_path):
    """U+2028/U+2029 in a reviewed input survive the export and every later read of the file."""
    from smallops.evals.dataset import load_cases
    from smallops.review.export import Exported, export_reviewed

    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    texts = ["first\u2028second", "third\u2029fourth"]
    runs = [wf.run(text=text).run_id for text in texts]
    desk = desk_for(wf)
    for run in runs:
        desk.approve(run, "ann")
    target = tmp_path / "evals" / "triage.jsonl"
    assert export_reviewed(desk.queue, wf, target) == Exported(2, 0)
    assert "\u2028" in target.read_text(encoding="utf-8")  # written raw, as JSON allows
    assert export_reviewed(desk.queue, wf, target) == Exported(0, 2)  # reads the file back
    cases = load_cases(target, variables=frozenset({"text"}))
    assert sorted(case.input["text"] for case in cases) == sorted(texts)


def test_export_skips_items_whose_output_would_not_be_a_valid_expected_value(
    tmp_path, database_url
):
    """Items approved before approving checked the output are skipped with a reason, and the
    file stays one that `smallops eval` reads."""
    from smallops.evals.dataset import load_cases
    from smallops.review.export import export_reviewed

    answers = [{"category": "billing", "urgency": "someday"}] * 2 + [GOOD, GOOD]
    wf = make(tmp_path, database_url, FakeProvider.queue(answers))
    broken, good, old = (wf.run(text=t).run_id for t in "abc")
    desk = desk_for(wf)
    desk.queue.decide(broken, "ann", "approve")  # as the desk let it through before
    desk.approve(good, "ann")
    target = tmp_path / "evals" / "triage.jsonl"
    done = export_reviewed(desk.queue, wf, target)
    assert done.added == 1 and [run for run, _ in done.skipped] == [broken]
    assert "schema_mismatch" in done.skipped[0][1]
    fields = set(Triage.model_fields)
    assert [c.id for c in load_cases(target, fields=fields)] == [f"review-{good}"]

    class TriageWithTeam(Triage):
        team: str

    desk.approve(old, "ann")
    newer = make(tmp_path, database_url, output=TriageWithTeam)
    done = export_reviewed(desk.queue, newer, target)
    assert done.added == 0 and {run for run, _ in done.skipped} == {broken, old}
    assert any("does not fit TriageWithTeam" in why for _, why in done.skipped)


def test_free_text_outputs_are_exported_as_the_text_field_that_eval_reads(tmp_path):
    from smallops.evals.dataset import load_cases
    from smallops.review.export import export_reviewed

    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}", lambda _: "On it.", output=None)
    run = wf.run(text="x").run_id
    desk = desk_for(wf)
    desk.approve(run, "ann")
    target = tmp_path / "evals" / "triage.jsonl"
    assert export_reviewed(desk.queue, wf, target).added == 1
    [case] = load_cases(target, variables=wf.prompt.variables, fields={"text"})
    assert case.expected == {"text": "On it."}


WHSEC_A = "whsec_" + "YS1zZWNyZXQtb2Ytd29ya2Zsb3ctYS0xMjM0NTY="
WHSEC_B = "whsec_" + "Yi1zZWNyZXQtb2Ytd29ya2Zsb3ctYi02NTQzMjE="


def test_each_delivery_is_signed_with_its_own_workflows_secret_by_every_sender(
    tmp_path, database_url, monkeypatch
):
    """Two workflows, two secrets, one receiver URL: A's decision sends only A's webhook, signed
    with A's secret; B's waiting webhook is signed with B's, whoever sends it."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from smallops.review import webhooks
    from smallops.web.app import webhook_sender

    from webhook_receiver import Receiver

    monkeypatch.setenv("A_SECRET", WHSEC_A)
    monkeypatch.delenv("B_SECRET", raising=False)
    secret_of = {"a": WHSEC_A, "b": WHSEC_B}
    with Receiver() as receiver:
        a, b = (
            make(tmp_path, database_url, name=n, webhook=receiver.url, webhook_secret_env=env)
            for n, env in (("a", "A_SECRET"), ("b", "B_SECRET"))
        )
        run_a, run_b, later_b = a.run(text="x").run_id, b.run(text="y").run_id, b.run(text="z")
        desk = desk_for(a, b)
        desk.approve(run_b, "ann")
        assert desk.finish_sending(10) == [
            f"the webhook of run {run_b} was not sent: B_SECRET is not set"
        ]
        monkeypatch.setenv("B_SECRET", WHSEC_B)
        desk.approve(run_a, "ann")
        assert desk.finish_sending(10) == []
        assert len(receiver.accepted) == 1  # A's own; B's still waits
        assert webhook_sender(desk)() == 1  # `smallops serve`
        desk._send_soon = lambda _decision: None  # type: ignore[method-assign]
        desk.reject(later_b.run_id, "ann", "not ours")
        secrets, problems = webhooks.signing_secrets([a, b])
        assert problems == {} and webhooks.deliver_due(desk.engine, secrets) == (1, 0)
    sent = [(json.loads(body)["data"], body, headers) for body, headers in receiver.accepted]
    assert [data["run_id"] for data, _, _ in sent] == [run_a, run_b, later_b.run_id]
    for data, body, headers in sent:
        assert Webhook(secret_of[data["workflow"]]).verify(body, headers)["data"] == data
        other = WHSEC_B if data["workflow"] == "a" else WHSEC_A
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body, headers)


def test_a_webhook_the_process_could_not_finish_is_given_back_not_held(
    tmp_path, database_url, monkeypatch
):
    """finish_sending waits a bounded time; a send still stuck then gives back its lease, so
    another sender delivers it at once rather than after the lease."""
    from smallops.review import webhooks

    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_WEBHOOK_SECRET", WHSEC_A)
    with Receiver(stalls=1) as receiver:
        wf = make(tmp_path, database_url, webhook=receiver.url)
        run = wf.run(text="x").run_id
        desk = desk_for(wf)
        desk.approve(run, "ann")
        _wait_for(lambda: receiver.ids)  # the send is under way, and stuck
        started = time.monotonic()
        [note] = desk.finish_sending(0.3)
        assert time.monotonic() - started < 2
        assert note == (
            f"the webhook of run {run} was not sent within 0.3 s; "
            "`smallops serve` or `smallops review deliver` sends it"
        )
        [row] = _deliveries(desk.engine)
        assert row.state == "pending" and row.claimed_until is None and row.attempts == 0
        assert webhooks.deliver_due(desk.engine, webhooks.signing_secrets([wf])[0]) == (1, 0)
    assert [json.loads(body)["data"]["run_id"] for body, _ in receiver.accepted] == [run]


def test_a_process_that_exits_mid_send_leaves_no_lease_behind(tmp_path, database_url, monkeypatch):
    """Its sending thread dies with it; the lease is given back on the way out."""
    from smallops.review import webhooks

    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_WEBHOOK_SECRET", WHSEC_A)
    with Receiver(stalls=1) as receiver:
        wf = make(tmp_path, database_url, webhook=receiver.url)
        run = wf.run(text="x").run_id
        wf.plan().writer.flush()
        script = tmp_path / "decide.py"
        script.write_text(EXITS_MID_SEND)
        process = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), database_url, receiver.url, run],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
            },
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: receiver.ids or process.poll() is not None)  # stuck at the receiver
        _, stderr = process.communicate("exit now\n", timeout=60)  # and it exits, mid-send
        assert process.returncode == 0, stderr
        engine = desk_for(wf).engine
        [row] = _deliveries(engine)
        assert row.state == "pending" and row.claimed_until is None
        assert webhooks.deliver_due(engine, webhooks.signing_secrets([wf])[0]) == (1, 0)


def test_concurrent_senders_send_each_delivery_once(tmp_path, database_url, monkeypatch):
    """Claims are one delivery at a time, under a lease: four senders, thirty webhooks, no
    webhook-id twice."""
    from smallops.review import webhooks

    from webhook_receiver import Receiver

    monkeypatch.setenv("SMALLOPS_WEBHOOK_SECRET", WHSEC_A)
    with Receiver() as receiver:
        wf = make(tmp_path, database_url, webhook=receiver.url)
        ids = [wf.run(text=f"e{i}").run_id for i in range(30)]
        desk = desk_for(wf)
        desk._send_soon = lambda _decision: None  # type: ignore[method-assign]
        for run in ids:
            desk.approve(run, "ann")
        secrets, _ = webhooks.signing_secrets([wf])
        sent: list[int] = []

        def sender() -> None:
            while (delivered := webhooks.deliver_due(desk.engine, secrets, limit=5)[0]) > 0:
                sent.append(delivered)

        threads = [threading.Thread(target=sender) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(sent) == 30 and len(receiver.ids) == 30 == len(set(receiver.ids))
    assert sorted(json.loads(body)["data"]["run_id"] for body, _ in receiver.accepted) == ids


EXITS_MID_SEND = """
import sys
from pathlib import Path
from sqlalchemy import select
from models import Triage
from smallops import FakeProvider, Settings, Workflow
from smallops.review.desk import ReviewDesk
from smallops.storage.schema import webhook_deliveries

folder, url, hook, run = sys.argv[1:]
root = Path(folder)
wf = Workflow("triage", model="fake:rules", prompt="triage.prompt", output=Triage,
              provider=FakeProvider(), base_dir=root, retries=0, fallback="review",
              settings=Settings(root=root, database_url=url), webhook=hook)
engine = wf.plan().writer.store.engine
ReviewDesk(engine, {"triage": wf}).approve(run, "ann")
sys.stdin.readline()  # the test says when: once the send is stuck at the receiver
with engine.connect() as connection:
    if not connection.execute(select(webhook_deliveries.c.claimed_until)).scalar():
        sys.exit("the webhook is not being sent")
"""


def _wait_for(condition: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


def _deliveries(engine: Any) -> list[Any]:
    from smallops.storage.schema import webhook_deliveries

    with engine.connect() as connection:
        return list(connection.execute(select(webhook_deliveries)).all())


def test_webhook_signatures_verify_with_the_reference_standard_webhooks_library():
    import time

    from standardwebhooks.webhooks import Webhook

    from smallops.review import webhooks

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"type": "review.decided", "data": {"run_id": "x"}}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": webhooks.sign(secret, "msg_1", now, body),
    }
    assert Webhook(secret).verify(body, headers)["data"]["run_id"] == "x"
    assert webhooks.verify(secret, headers, body)
    assert not webhooks.verify(secret, {**headers, "webhook-id": "msg_2"}, body)
    assert not webhooks.verify(secret, headers, body.replace("x", "y"))
    stale = {**headers, "webhook-timestamp": str(now - 3600)}
    assert not webhooks.verify(secret, stale, body)


def test_the_bound_agrees_with_scipy_beta_quantiles():
    from scipy.stats import beta

    rng = random.Random(3)
    for _ in range(300):
        trials = rng.randint(1, 2000)
        successes = rng.randint(1, trials)
        expected = beta.ppf(0.05, successes, trials - successes + 1)
        assert clopper_pearson_lower(successes, trials) == pytest.approx(expected, abs=1e-9)


def test_reviews_needed_is_the_least_number_though_the_bound_is_saw_toothed():
    """187 of 200 at target 0.9: 15 more suffice (a bisection over the bound said 51)."""
    assert reviews_needed(187, 200, 0.9) == 15
    assert reviews_needed(0, 0, 0.95) == 59
    assert reviews_needed(59, 59, 0.95) == 0
    assert reviews_needed(271, 313, 0.95) is None  # the rate so far is below the target


def _least_by_brute_force(successes: int, trials: int, target: float, limit: int) -> int | None:
    """The least k (up to limit) whose bound, by scipy, reaches target with floor(k * rate) of
    k more reviews approved."""
    import numpy as np
    from scipy.stats import beta

    for start in range(0, limit, 500):
        extra = np.arange(start, start + 500)
        approved = successes + (successes * extra // trials if trials else extra)
        bound = beta.ppf(0.05, np.maximum(approved, 1), trials + extra - approved + 1)
        bound[approved == 0] = 0.0
        hits = np.nonzero(bound >= target)[0]
        if hits.size:
            return start + int(hits[0])
    return None


def test_reviews_needed_equals_a_brute_force_minimum_over_a_grid():
    limit = 40_000
    checked = 0
    for trials in (0, 1, 2, 3, 5, 8, 13, 20, 30, 45, 59, 80, 100, 150, 200, 313):
        for successes in range(trials + 1):
            for target in (0.5, 0.8, 0.9, 0.95, 0.99):
                if trials and successes <= target * trials:
                    assert reviews_needed(successes, trials, target) is None
                    continue
                expected = _least_by_brute_force(successes, trials, target, limit)
                found = reviews_needed(successes, trials, target)
                if expected is None:
                    assert found is None or found >= limit, (successes, trials, target)
                else:
                    assert found == expected, (successes, trials, target)
                    checked += 1
    assert checked > 800
