"""A real HTTP server on 127.0.0.1 that receives webhooks, failing or stalling the first ones."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Collects POSTed bodies and headers; answers 500 to the first `failures` requests.

    The first `stalls` POSTs get no answer until the receiver stops (then a 503): a sender
    stuck mid-send. With `redirect=(status, location)` it answers every request with that
    redirect instead. `requests` records every request that reaches it, whatever its method,
    as (method, headers).
    """

    def __init__(
        self, failures: int = 0, redirect: tuple[int, str] | None = None, stalls: int = 0
    ) -> None:
        self.failures = failures
        self.stalls = stalls
        self.stopping = threading.Event()
        lock = threading.Lock()
        self.accepted: list[tuple[str, dict[str, str]]] = []
        self.ids: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                headers = self._seen()
                if redirect is not None:
                    self._redirect()
                    return
                receiver.ids.append(headers.get("webhook-id", ""))
                with lock:
                    stall = receiver.stalls > 0
                    receiver.stalls -= stall
                if stall:
                    receiver.stopping.wait(60)
                    self.send_response(503)
                elif receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(500)
                else:
                    receiver.accepted.append((body, headers))
                    self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                self._seen()
                if redirect is not None:
                    self._redirect()
                    return
                self.send_response(200)
                self.end_headers()

            do_HEAD = do_PUT = do_DELETE = do_GET

            def _seen(self) -> dict[str, str]:
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append((self.command, headers))
                return headers

            def _redirect(self) -> None:
                assert redirect is not None
                self.send_response(redirect[0])
                self.send_header("location", redirect[1])
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/smallops"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
