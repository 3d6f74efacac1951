"""`command:PROGRAM ARGS...`: a command whose standard output is the key.

Like AWS `credential_process` or git's credential helpers, this reaches any store with a CLI
(`pass show openai`, `op read op://...`, `vault kv get -field=key secret/openai`). The text is
split as a shell would split it (shlex), but no shell runs it: no pipes, no variables. Its
output, less a trailing newline, is the key. It gets the [secrets] fetch_timeout, after which
it and whatever it started are killed; output past MAX_OUTPUT is refused as it arrives. It
runs in the project folder, so `command:./bin/get-key openai` is a script of the project.

An error names the program and how it ended, never what it printed on standard output; the
first line of its standard error is shown, short and redacted (it is there to say why), except
when it succeeded with nothing on standard output: a script that printed the key to the
wrong stream. A command that fails or times out may only have found its store down, so a
cached key keeps serving (up to max_stale); one that cannot be run, or prints nothing usable,
is a plain no.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
import time
from pathlib import Path

from smallops.redact import Redactor, register
from smallops.secret_refs import SecretRef
from smallops.secrets.base import FETCH_TIMEOUT, PROJECT_ROOT, Fetched, SecretStoreError

MAX_OUTPUT = 64 * 1024  # bytes of standard output: far more than any key
MAX_ERROR = 4 * 1024  # bytes of standard error kept, of which one short line is shown
SHOWN_ERROR = 160  # characters of that line


class CommandStore:
    def fetch(self, ref: SecretRef) -> Fetched:
        try:
            argv = shlex.split(ref.path)
        except ValueError as exc:
            raise SecretStoreError(
                f"cannot be split into words ({exc})", hint="check its quotes"
            ) from None
        if not argv:
            raise SecretStoreError("names no program", hint="e.g. command:pass show x")
        program = argv[0]
        output, error, status = _run(argv, program, FETCH_TIMEOUT.get())
        if status != 0:  # what it printed may be the key: stderr, if it repeats it, is masked
            for line in output[:MAX_OUTPUT].decode("utf-8", "replace").splitlines():
                register(line.strip())
        said = _first_line(error)
        because = f": {said}" if said else ""
        if status != 0:
            how = (
                f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
            )
            raise SecretStoreError(  # its store may be down: the cached key keeps serving
                f"`{program}` {how}{because}",
                unreachable=True,
                hint="run the command yourself to see why",
            )
        try:
            text = output.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretStoreError(f"`{program}` printed bytes that are not UTF-8") from None
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:  # what it wrote to stderr instead is most likely the key itself
            wrote = " (it wrote to standard error, not shown)" if said else ""
            raise SecretStoreError(
                f"`{program}` printed nothing on its standard output{wrote}",
                hint="it must print the key on its standard output",
            )
        return Fetched(text)


def _run(argv: list[str], program: str, timeout: float) -> tuple[bytes, bytes, int]:
    """Run the command with no stdin, its own process group (so that everything it starts can
    be killed), reading both outputs until it ends, the timeout, or too much output."""
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=_folder(),
        )
    except FileNotFoundError:
        raise SecretStoreError(
            f"program `{program}` not found",
            hint="install it, or give its path (a relative one starts from the project folder)",
        ) from None
    except PermissionError:
        raise SecretStoreError(
            f"`{program}` cannot be run (permission denied)",
            hint=f"chmod +x {Path(program).name}, or check its path",
        ) from None
    except OSError as exc:
        raise SecretStoreError(f"`{program}` cannot be run ({exc.strerror})") from None
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}
    sizes = {"out": 0, "err": 0}
    deadline = time.monotonic() + timeout
    problem = None
    with selectors.DefaultSelector() as selector:
        assert process.stdout is not None and process.stderr is not None
        selector.register(process.stdout, selectors.EVENT_READ, "out")
        selector.register(process.stderr, selectors.EVENT_READ, "err")
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"did not finish within {timeout:g} s"
                break
            for key, _ in selector.select(left):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                which = str(key.data)
                sizes[which] += len(data)
                if which == "err" and sizes["err"] > MAX_ERROR:
                    continue
                chunks[which].append(data)
            if sizes["out"] > MAX_OUTPUT:
                problem = f"printed more than {MAX_OUTPUT // 1024} KiB"
                break
    if problem is not None:
        _kill(process)
        raise SecretStoreError(
            f"`{program}` {problem}",
            unreachable=problem.startswith("did not finish"),
            hint="run the command yourself to see why",
        )
    try:
        status = process.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # it closed its outputs but lives on
        _kill(process)
        raise SecretStoreError(
            f"`{program}` did not finish within {timeout:g} s", unreachable=True
        ) from None
    finally:
        process.stdout.close()
        process.stderr.close()
    return b"".join(chunks["out"]), b"".join(chunks["err"]), status


def _folder() -> Path | None:
    """The project folder to run in (the current one when there is none on disk)."""
    root = PROJECT_ROOT.get()
    return root if root is not None and root.is_dir() else None


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the command's whole process group, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(1)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _first_line(error: bytes) -> str:
    """The first non-empty line of standard error, printable, short and redacted."""
    text = error.decode("utf-8", "replace")
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = "".join(c if c.isprintable() else "?" for c in line)[:SHOWN_ERROR]
    return Redactor()(line) or ""
