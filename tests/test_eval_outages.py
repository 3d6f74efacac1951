"""The eval gate and `smallops drift` under outages: a case the model never answered is never
judged, so an outage, a breaker, a rate limit or a budget cap is exit 2, never "regression".

The project's workflow calls the OpenAI emulator through the real SDK, with its default breaker
(in this process's memory, or shared through Redis) and its default retries.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import smallops
from emulators import Behaviour, delay, disconnect, malformed, ok, respond, status

CASES = 40
CATEGORIES = ["billing", "support", "sales", "spam", "other"]
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of this module's own, flushed per test
MODEL = "gpt-4o-mini-2024-07-18"
CANDIDATE = "gpt-4.1-mini-2025-04-14"

WORKFLOW = """
from typing import Literal

from pydantic import BaseModel

from smallops import BreakerConfig, Budget, Workflow


class Triage(BaseModel):
    category: Literal["billing", "support", "sales", "spam", "other"]
    urgency: Literal["low", "normal", "high"]
    summary: str


triage = Workflow(
    "triage", model="openai:{model}", prompt="triage.prompt", output=Triage,
    fallback="review", timeout=1.0, deadline=6.0, {options}
)
"""


def answer(body: dict[str, Any], _headers: dict[str, str]) -> Behaviour:
    """The right category for a case (its message ends with it)."""
    category = body["messages"][-1]["content"].split()[-1]
    return ok({"category": category, "urgency": "normal", "summary": f"about {category}"})


@pytest.fixture
def gate_project(tmp_path: Path, emulator: Any, capsys: Any, request: Any) -> Path:
    """A 40-case project on the emulator, case e01 critical, its baseline written while the
    provider answered every case; its log on `database_url` when the test asks for one."""
    root = tmp_path / "ops"
    (root / "workflows").mkdir(parents=True)
    (root / "evals").mkdir()
    database = ""
    if "database_url" in request.fixturenames:
        database = f'database_url = "{request.getfixturevalue("database_url")}"\n'
    (root / "smallops.toml").write_text(
        f'[smallops]\n{database}\n[providers.openai]\nbase_url = "{emulator.openai_base_url}"\n'
    )
    workflow(root)
    (root / "workflows" / "triage.prompt").write_text("[user]\n{{ text }}")
    lines = [
        json.dumps(
            {
                "id": f"e{i:02d}",
                "input": {"text": f"case e{i:02d} about {CATEGORIES[i % 5]}"},
                "expected": {"category": CATEGORIES[i % 5]},
                "tags": ["critical"] if i == 1 else [],
            }
        )
        for i in range(1, CASES + 1)
    ]
    (root / "evals" / "triage.jsonl").write_text("\n".join(lines) + "\n")
    emulator.default = respond(answer)
    code, _, err = gate(capsys, root, "--update-baseline")
    assert code == 0, err
    return root


def workflow(root: Path, options: str = "", model: str = MODEL) -> None:
    text = WORKFLOW.replace("{options}", options).replace("{model}", model)
    (root / "workflows" / "triage.py").write_text(text)


def gate(capsys: Any, root: Path, *args: str) -> tuple[int, str, str]:
    return smallops(capsys, "-p", str(root), "eval", "triage", *args)


@pytest.fixture
def shared_breaker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Breakers and rate limits shared through a Redis database of this module's own."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.flushdb()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    monkeypatch.setenv("SMALLOPS_REDIS_URL", REDIS_URL)
    yield client
    client.flushdb()
    client.close()


def no_answer(err: str) -> dict[str, int]:
    """The error types the gate named, with their counts: `... (breaker_open 30, timeout 8)`."""
    found = re.search(r"cases got no answer from the model \(([^)]*)\)", err)
    assert found, err
    return {kind: int(n) for kind, n in (part.split() for part in found.group(1).split(", "))}


def assert_unjudged(code: int, out: str, err: str, cases: int = CASES) -> dict[str, int]:
    """Exit 2, the cause named, and neither verdict printed."""
    assert code == 2, out + err
    assert f"{cases} of {CASES} cases got no answer from the model" in err, err
    assert "the gate cannot judge the prompt" in err
    assert "regression" not in out + err and "pass\n" not in out
    kinds = no_answer(err)
    assert sum(kinds.values()) == cases
    return kinds


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_an_unreachable_provider_is_exit_2_at_any_concurrency_with_or_without_cache(
    gate_project, emulator, capsys, concurrency, cache
):
    """The breaker opens during the retries: breaker_open cases are no answer, not failures."""
    if cache:  # a pull request that edits the prompt: the cache has nothing for it
        prompt = gate_project / "workflows" / "triage.prompt"
        prompt.write_text("[user]\nTriage: {{ text }}")
    emulator.default = status(503, retry_after=0)  # down, and saying so at once: quick retries
    args = ["--ci", "-c", str(concurrency)] + ([] if cache else ["--no-cache"])
    kinds = assert_unjudged(*gate(capsys, gate_project, *args))
    assert set(kinds) <= {"server_error", "breaker_open"} and "breaker_open" in kinds


def test_a_provider_nobody_listens_for_is_exit_2_at_the_default_concurrency(gate_project, capsys):
    """Connection refused on every attempt, default retries and breaker: no verdict."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the socket is closed
    toml = gate_project / "smallops.toml"
    toml.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{closed}", toml.read_text()))
    kinds = assert_unjudged(*gate(capsys, gate_project, "--ci", "--no-cache"))
    assert set(kinds) <= {"connection_error", "breaker_open"}


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("concurrency", [1, 4, 16])
def test_a_breaker_shared_through_redis_is_no_answer_on_the_rerun_after_an_outage(
    shared_breaker, gate_project, emulator, capsys, concurrency, cache
):
    """The outage opens the breaker in Redis; the rerun, a new process, is refused on every
    case before any request is made: exit 2 both times."""
    # Open for 5 minutes: on a slow machine the first run can outlast the default 30 s, and
    # the rerun would rightly send probes instead of refusing every case.
    workflow(gate_project, "breaker=BreakerConfig(open_for=300),")
    if cache:
        prompt = gate_project / "workflows" / "triage.prompt"
        prompt.write_text("[user]\nTriage: {{ text }}")
    emulator.default = status(503, retry_after=0)
    args = ["--ci", "-c", str(concurrency)] + ([] if cache else ["--no-cache"])
    kinds = assert_unjudged(*gate(capsys, gate_project, *args))
    assert set(kinds) <= {"server_error", "breaker_open"}
    assert shared_breaker.keys("*")  # the breaker's state is in Redis, not in this process
    emulator.clear()
    cli = [sys.executable, "-c", "from smallops.cli import main; main()"]
    rerun = subprocess.run(
        [*cli, "-p", str(gate_project), "eval", "triage", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert assert_unjudged(rerun.returncode, rerun.stdout, rerun.stderr) == {"breaker_open": 40}
    assert not emulator.requests


def test_an_eval_throttled_by_the_workflows_rate_limit_is_exit_2(gate_project, emulator, capsys):
    workflow(gate_project, 'rate_limit="3/minute", rate_wait=0.2')
    kinds = assert_unjudged(*gate(capsys, gate_project, "--ci", "--no-cache"), cases=CASES - 3)
    assert kinds == {"throttled": CASES - 3}


def test_an_eval_throttled_by_a_rate_limit_shared_through_redis_is_exit_2(
    shared_breaker, gate_project, emulator, capsys
):
    workflow(gate_project, 'rate_limit="5/minute", rate_wait=0.2')
    kinds = assert_unjudged(
        *gate(capsys, gate_project, "--ci", "--no-cache", "-c", "16"), CASES - 5
    )
    assert kinds == {"throttled": CASES - 5}


def test_an_eval_stopped_by_the_budget_cap_is_exit_2(gate_project, emulator, capsys):
    workflow(gate_project, "budget=Budget(daily=0.000001)")
    assert assert_unjudged(*gate(capsys, gate_project, "--ci", "--no-cache")) == {
        "budget_exhausted": 40
    }


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (status(500), "server_error"),
        (status(429), "rate_limited"),
        (status(401), "auth_error"),
        (status(404), "bad_request"),
        (disconnect(), "connection_error"),
        (malformed(), "bad_response"),
        (delay(3), "timeout"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_every_kind_of_provider_failure_is_no_answer(gate_project, emulator, capsys, failure, kind):
    """Each kind on its own: no breaker to turn it into breaker_open, no retries to wait out."""
    workflow(gate_project, "breaker=None, retries=0")
    emulator.default = failure
    kinds = assert_unjudged(*gate(capsys, gate_project, "--ci", "--no-cache", "-c", "16"))
    assert kinds == {kind: CASES}


def test_a_partial_outage_is_exit_2_and_the_rerun_asks_only_the_unanswered_cases(
    database_url, gate_project, emulator, capsys
):
    """The answers that came are cached: completing the run costs only the missing ones."""
    (gate_project / "workflows" / "triage.prompt").write_text("[user]\nTriage: {{ text }}")

    def flaky(body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        number = int(body["messages"][-1]["content"].split()[2][1:])
        return status(401) if number > 36 else answer(body, headers)

    emulator.default = respond(flaky)
    markdown = gate_project / "summary.md"
    code, out, err = gate(capsys, gate_project, "--ci", "--markdown", str(markdown))
    assert assert_unjudged(code, out, err, cases=4) == {"auth_error": 4}
    assert "no verdict" in markdown.read_text() and "regression" not in markdown.read_text()
    emulator.clear()
    emulator.default = respond(answer)
    code, out, err = gate(capsys, gate_project, "--ci", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["verdict"] == "pass" and summary["cached"] == CASES - 4
    assert len(emulator.requests) == 4


def drift(capsys: Any, root: Path, *args: str) -> tuple[int, str, str]:
    return smallops(
        capsys, "-p", str(root), "drift", "triage", "--candidate", f"openai:{CANDIDATE}", *args
    )


@pytest.mark.parametrize("side", ["pinned", "candidate"])
def test_drift_with_a_model_that_does_not_answer_is_exit_2(
    database_url, gate_project, emulator, capsys, side
):
    down = MODEL if side == "pinned" else CANDIDATE

    def by_model(body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        return status(503, retry_after=0) if body["model"] == down else answer(body, headers)

    emulator.default = respond(by_model)
    code, out, err = drift(capsys, gate_project, "--no-cache")
    assert code == 2, out + err
    assert f"{side} model openai:{down}: 40 of 40 cases got no answer from the model (" in err
    assert "drift cannot compare the models" in err and "regression" not in out + err


def test_a_case_that_hits_a_bug_is_no_verdict_never_a_regression(
    gate_project, emulator, capsys, monkeypatch
):
    """A call that never finished (a bug in smallops or an SDK) says nothing about the prompt:
    exit 2 naming internal_error, never "regression", and the other cases still run."""
    from smallops import _lifecycle as calls

    interpret = calls._interpret

    def buggy(output: Any, reply: Any) -> Any:
        if reply.text and "billing" in reply.text:
            raise RuntimeError("a bug while reading the answer")
        return interpret(output, reply)

    monkeypatch.setattr(calls, "_interpret", buggy)
    code, out, err = gate(capsys, gate_project, "--ci", "--no-cache")
    assert code == 2, out + err
    assert "internal_error 8" in out + err and "regression" not in out + err
