"""Logging in to the review UI: failed tries are throttled per name and per address before any
password is checked, and a session ends when the credential it was made with changes."""

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


def test_a_changed_password_a_removed_reviewer_or_a_new_token_ends_their_sessions(tmp_path):
    import dataclasses

    wf = make(tmp_path, f"sqlite:///{tmp_path / 'log.db'}")
    reviewers = {"dana": auth.hash_password(PASSWORD), "eli": auth.hash_password(PASSWORD)}
    client, _ = serve([wf], require_login=True, reviewers=reviewers, token=TOKEN)
    cookies = {}
    for name, password in (("dana", PASSWORD), ("eli", PASSWORD), ("bot", TOKEN)):
        client.cookies.clear()
        form = {"csrf": csrf(client, "/login"), "name": name, "password": password}
        assert client.post("/login", data=form, follow_redirects=False).status_code == 303
        cookies[name] = client.cookies[auth.SESSION_COOKIE]

    def who(name: str) -> int:
        client.cookies.clear()
        client.cookies[auth.SESSION_COOKIE] = cookies[name]
        return client.get("/", headers=JSON_HEADERS).status_code

    assert [who(n) for n in cookies] == [200, 200, 200]
    state = client.app.state.web
    # smallops.toml edited and the server restarted: dana has a new password, eli is gone,
    # and the review token was rotated.
    restarted = auth.Auth(
        True, reviewers={"dana": auth.hash_password("a new password")}, token="rotated-token-42"
    )
    client.app.state.web = dataclasses.replace(state, auth=restarted)
    assert [who(n) for n in cookies] == [401, 401, 401]
    client.app.state.web = state  # nothing changed: the same cookies work again
    assert [who(n) for n in cookies] == [200, 200, 200]
