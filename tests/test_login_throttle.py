"""Failed logins are throttled per name and per address, before any password is checked."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the web extra is not installed")

from smallops.web import auth
from smallops.web.auth import LoginThrottle, TooManyFailures
from test_web import JSON_HEADERS, PASSWORD, TOKEN, csrf, make, serve


def test_the_throttle_counts_failures_over_a_sliding_window():
    throttle = LoginThrottle(per_name=3, per_address=5, window=60)
    for second in range(3):
        throttle.check("dana", "10.0.0.1", now=second)
        throttle.failed("dana", "10.0.0.1", now=second)
    with pytest.raises(TooManyFailures) as refused:
        throttle.check("Dana ", "10.0.0.2", now=10)  # the name, however it is typed
    assert refused.value.retry_after == pytest.approx(50)  # the first failure ages out at 60
    throttle.check("dana", None, now=60.5)  # the window moved on
    throttle.check("ed", "10.0.0.1", now=10)  # another name from the same address: 3 of 5
    throttle.failed("ed", "10.0.0.1", now=11)
    throttle.failed("fay", "10.0.0.1", now=12)
    with pytest.raises(TooManyFailures):
        throttle.check("gus", "10.0.0.1", now=13)  # the address has had 5
    throttle.succeeded("dana")
    throttle.check("dana", None, now=14)


def test_a_guessed_password_is_refused_after_five_failures_even_when_right(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    reviewers = {"dana": auth.hash_password(PASSWORD), "eli": auth.hash_password(PASSWORD)}
    client, _ = serve([wf], require_login=True, reviewers=reviewers)

    def log_in(name: str, password: str):
        form = {"csrf": csrf(client, "/login"), "name": name, "password": password, "next": "/"}
        return client.post("/login", data=form, follow_redirects=False)

    assert [log_in("dana", f"guess {i}").status_code for i in range(5)] == [401] * 5
    refused = log_in("dana", PASSWORD)
    assert refused.status_code == 429 and "too many failed logins" in refused.text
    assert 800 < int(refused.headers["retry-after"]) <= 901
    assert "try again in 15 minutes" in refused.text
    as_json = client.post("/login", json={"name": "dana", "password": PASSWORD})
    assert as_json.status_code == 429 and as_json.json()["hint"] == "try again in 15 minutes"
    assert log_in("eli", PASSWORD).status_code == 303  # other reviewers are not locked out
    assert client.get("/", headers=JSON_HEADERS).json()["reviewer"] == "eli"


def test_wrong_bearer_tokens_are_throttled_per_address(tmp_path):
    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    client, _ = serve([wf], require_login=True, token=TOKEN)

    def ask(token: str):
        headers = {"Authorization": f"Bearer {token}", "X-Reviewer": "bot"}
        return client.get("/", headers=headers)

    assert ask(TOKEN).status_code == 200
    assert {ask(f"guess-{i}").status_code for i in range(20)} == {401}
    refused = ask(TOKEN)
    assert refused.status_code == 429 and "retry-after" in refused.headers
