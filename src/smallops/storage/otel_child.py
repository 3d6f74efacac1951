"""The export process (otel_process.py): runs in on stdin, spans out to the collector.

Each message on stdin is ("run", item, folder) or ("flush", token, timeout); a flush is
answered on stdout with (token, spans sent, spans dropped, last error). The process ends when
its input closes, after sending what it holds.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from smallops.errors import ConfigError
from smallops.storage.otel_export import SpanExport
from smallops.storage.otel_process import read_frame, write_frame


def main() -> int:
    logging.basicConfig(format="%(message)s")
    try:
        export = SpanExport()
    except ConfigError as exc:
        print(f"smallops: no OpenTelemetry export: {exc.message} ({exc.hint})", file=sys.stderr)
        return 3
    source, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        message = read_frame(source)
        if message is None:
            break
        if message[0] == "run":
            _, item, folder = message
            export.offer([item], Path(folder) if folder else None)
        elif message[0] == "flush":
            _, token, timeout = message
            export.flush(timeout)
            write_frame(answers, (token, export.sent, export.dropped, export.last_error))
            answers.flush()
    export.flush(10.0)
    export.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
