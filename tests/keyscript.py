"""A `command:` secret store made at test time: a script that counts its runs and does as told.

    script = KeyScript(tmp_path / "store", key)
    ref = script.reference            # command:<python> <script> <folder>
    script.set(mode="fail")           # ok | fail | hang | slow | raw | leak
    script.count                      # how many times it ran

And `provider_accepting(current)`: emulator behaviour for a provider that accepts only the key
`current()` returns, echoing the key it was sent (in a 401's message, and in a success's
output, fingerprint and request id), as some servers do.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulators import Behaviour, ok, status

SCRIPT = """\
import os, sys, time, pathlib
state = pathlib.Path(sys.argv[1])
with open(state / "count", "a") as f:
    f.write("x")
(state / "pid").write_text(str(os.getpid()))
mode = (state / "mode").read_text()
key = (state / "key").read_text()
if mode == "ok":
    sys.stdout.write(key + "\\n")
elif mode == "fail":
    sys.stderr.write("store: connection refused\\n")
    sys.exit(3)
elif mode == "hang":
    time.sleep(60)
elif mode == "slow":
    time.sleep(float((state / "delay").read_text()))
    sys.stdout.write(key + "\\n")
elif mode == "raw":
    sys.stdout.buffer.write((state / "raw").read_bytes())
elif mode == "leak":
    sys.stdout.write(key)
    sys.stderr.write("could not save " + key + "\\n")
    sys.exit(2)
"""


class KeyScript:
    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.script = folder / "get_key.py"
        self.script.write_text(SCRIPT)
        self.set(key=key, mode="ok")

    @property
    def reference(self) -> str:
        words = [sys.executable, str(self.script), str(self.folder)]
        return "command:" + " ".join(shlex.quote(word) for word in words)

    def set(
        self,
        *,
        key: str | None = None,
        mode: str | None = None,
        raw: bytes | None = None,
        delay: float | None = None,
    ) -> None:
        if key is not None:
            (self.folder / "key").write_text(key)
        if raw is not None:
            (self.folder / "raw").write_bytes(raw)
        if delay is not None:
            (self.folder / "delay").write_text(str(delay))
        if mode is not None:
            (self.folder / "mode").write_text(mode)

    @property
    def key(self) -> str:
        return (self.folder / "key").read_text()

    @property
    def count(self) -> int:
        path = self.folder / "count"
        return path.stat().st_size if path.exists() else 0

    @property
    def pid(self) -> int:
        return int((self.folder / "pid").read_text())


def provider_accepting(
    current: Callable[[], str], refused: list[str] | None = None, delay_401: float = 0.0
) -> Any:
    """A `respond` function: success for the key `current()` returns, else a 401 that repeats
    the key it got; `refused` collects the keys refused."""
    from emulators import delay as delayed

    def behaviour(body: dict[str, Any], headers: dict[str, str]) -> Behaviour:
        key = headers.get("authorization", "").removeprefix("Bearer ")
        key = key or headers.get("x-api-key", "")
        if key != current():
            if refused is not None:
                refused.append(key)
            answer = status(401, message=f"Incorrect API key provided: {key}.")
            return delayed(delay_401, answer) if delay_401 else answer
        summary = f"your key is {key}"
        return ok(
            {"category": "billing", "urgency": "normal", "summary": summary},
            fingerprint=key,
            request_id=key,
        )

    return behaviour
