"""An end to one attempt at a channel's service, however slowly the service answers.

A socket timeout bounds each read, not the attempt: a service (or a tarpit, or a proxy) that
trickles its answer a byte every few seconds could hold a send for minutes, past the outbox's
lease (alerts/outbox.py), and another sender would then send the same message again. At the
deadline the attempt's connection is shut down: the read waiting on it ends at once, and the
attempt is a Retry like any other lost connection.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

DEADLINE = 40.0  # seconds one attempt may take in all; well under the outbox's 60 s lease


class Deadline:
    """`with Deadline() as deadline:` around one attempt; `watch` each socket it opens."""

    def __init__(self) -> None:
        self.seconds = DEADLINE
        self.over = False
        self._lock = threading.Lock()
        self._copies: list[socket.socket] = []
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            copies, self._copies = self._copies, []
        for copy in copies:
            copy.close()

    def watch(self, sock: socket.socket) -> socket.socket:
        """`sock`, to be shut down at the deadline. A copy of its descriptor is kept, so a TLS
        wrapping that takes the socket over (STARTTLS) is shut down too."""
        copy = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        with self._lock:
            self._copies.append(copy)
            over = self.over
        if over:
            _shut(copy)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.over = True
            copies = list(self._copies)
        for copy in copies:
            _shut(copy)

    def detail(self) -> str:
        return f"no complete answer within {self.seconds:g} s (the attempt's deadline)"


def _shut(copy: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile: the attempt is over anyway
        copy.shutdown(socket.SHUT_RDWR)
