"""Redaction: secrets from the environment and key-shaped strings never reach a record."""

from __future__ import annotations

from smallops.redact import REDACTED, Redactor


def test_redactor_removes_env_secrets_and_key_shaped_strings():
    redact = Redactor.from_environment({"MY_SERVICE_TOKEN": "tok-12345678-abcd", "HOME": "/root"})
    text = (
        "token tok-12345678-abcd, key sk-proj-abcdefghijklmnop, "
        "masked sk-abc*****************wxyz, Authorization: Bearer eyJhbGciOiJIUzI1NiJ9"
    )
    cleaned = redact(text)
    assert "tok-12345678" not in cleaned and "sk-proj" not in cleaned
    assert "sk-abc" not in cleaned and "eyJhbG" not in cleaned
    assert cleaned.count(REDACTED) == 4
    assert redact("the desk-top and risk-free plans") == "the desk-top and risk-free plans"
