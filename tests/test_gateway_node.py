"""The gateway through the official openai Node SDK (a Node service is what the gateway is
for): the same completion and chunks as calling the emulator directly, and OpenAI's error.

Needs Node and the SDK pinned in tests/node (`npm ci --prefix tests/node`, which .ci/run does);
without them the test is skipped and says how to get them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_gateway import gateway, served  # noqa: F401  (the fixtures)

NODE_DIR = Path(__file__).parent / "node"


def node_chat(base_url: str, key: str, model: str) -> dict:
    done = subprocess.run(
        ["node", str(NODE_DIR / "chat.mjs"), base_url, key, model],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def without_ids(value: dict) -> dict:
    return {k: v for k, v in value.items() if k not in ("id", "created")}


@pytest.fixture
def node() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node is not installed (apt-get install nodejs)")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip("the openai Node SDK is not installed: npm ci --prefix tests/node")


def test_the_node_sdk_gets_what_the_emulator_gives_and_openais_errors(node, gateway, emulator):  # noqa: F811
    direct = node_chat(emulator.openai_base_url, "sk-direct", "model-a")
    key = gateway.key()
    through = node_chat(gateway.base_url, key, "fast")
    assert without_ids(through["whole"]) == without_ids(direct["whole"])
    assert through["whole"]["choices"][0]["message"]["content"] == "Hello from the emulator."
    assert [without_ids(c) for c in through["chunks"]] == [without_ids(c) for c in direct["chunks"]]
    assert all(c.get("usage") is None for c in through["chunks"])  # not asked for: stripped
    assert through["refused"] == {
        "status": 401,
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    runs = gateway.runs(2)
    assert [r["status"] for r in runs] == ["auto", "auto"]
    assert all((r["input_tokens"], r["output_tokens"]) == (25, 15) for r in runs)
