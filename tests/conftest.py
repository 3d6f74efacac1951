"""Shared fixtures: no internet, the provider emulator, a log database (SQLite and Postgres)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from smallops import Settings, Workflow
from smallops.cli import main
from smallops.config import ProviderConfig
from smallops.storage.db import normalise_url
from smallops.testing import reset

from emulators import ModelServer, ok
from models import GOOD as GOOD  # one definition, in models.py; tests import it from either

# Dummy credentials: they only ever reach the local emulator.
OPENAI_TEST_KEY = "sk-test-openai-0123456789abcdef"
ANTHROPIC_TEST_KEY = "sk-ant-test-0123456789abcdef"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
PG_URL = os.environ.get("SMALLOPS_TEST_DATABASE_URL")


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection beyond this machine fails the test."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and address[0] not in LOCAL_HOSTS:
            raise RuntimeError(f"a test tried to reach {address[0]}: tests stay on this machine")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_TEST_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_TEST_KEY)
    monkeypatch.delenv("SMALLOPS_DATABASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


@pytest.fixture(autouse=True)
def fresh_writers() -> Iterator[None]:
    """Each test starts and ends with no log writers or engines left over."""
    yield
    reset()


@pytest.fixture(scope="session")
def _server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture
def emulator(_server: ModelServer) -> ModelServer:
    """The OpenAI/Anthropic emulator, with an empty script and request log."""
    _server.clear()
    _server.default = ok()
    return _server


def _postgres_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("SMALLOPS_TEST_DATABASE_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(PG_URL, Path.cwd()))
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        reset()
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty log database: SQLite always, Postgres when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
    else:
        yield from _postgres_url()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_url()


@pytest.fixture
def settings(tmp_path: Path, emulator: ModelServer) -> Settings:
    """A project in tmp_path whose openai and anthropic providers are the emulator."""
    return Settings(
        root=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'log.db'}",
        providers={
            "openai": ProviderConfig("openai", "openai", base_url=emulator.openai_base_url),
            "anthropic": ProviderConfig(
                "anthropic", "anthropic", base_url=emulator.anthropic_base_url
            ),
        },
    )


EMAIL = {"sender": "ann@example.com", "subject": "Invoice", "body": "Where is my May invoice?"}


def smallops(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def project(tmp_path, emulator, capsys) -> Path:
    """An email-triage project whose openai provider is the local emulator."""
    folder = tmp_path / "ops"
    assert smallops(capsys, "init", str(folder))[0] == 0
    toml = folder / "smallops.toml"
    toml.write_text(
        toml.read_text() + f'\n[providers.openai]\nbase_url = "{emulator.openai_base_url}"\n'
    )
    return folder


TRIAGE_PROMPT = """\
[system]
Sort the email.
[user]
Subject: {{ subject }}

{{ body }}
"""


@pytest.fixture
def make_workflow(tmp_path: Path, settings: Settings) -> Any:
    """Define a workflow in tmp_path: `make_workflow(model=..., **overrides)`."""
    from models import Triage

    (tmp_path / "triage.prompt").write_text(TRIAGE_PROMPT)

    def make(**overrides: Any) -> Workflow[Any]:
        options: dict[str, Any] = {
            "model": "openai:gpt-4o-mini-2024-07-18",
            "prompt": "triage.prompt",
            "output": Triage,
            "fallback": "review",
            "timeout": 2.0,
            "deadline": 10.0,
            "settings": settings,
            "base_dir": tmp_path,
        }
        options.update(overrides)
        return Workflow(options.pop("name", "triage"), **options)

    return make


@contextlib.contextmanager
def mount_tmpfs(folder: Path, size: str) -> Iterator[None]:
    """A tiny filesystem at `folder` (that really fills up), for tests of a full disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
