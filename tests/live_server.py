"""A real uvicorn server in a thread, for tests that need a socket (a browser, raw bytes)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def serving_app(app: Any, **options: Any) -> Iterator[int]:
    """Serve `app` on 127.0.0.1; yields the port. The socket is bound here, so no other
    process can take the port between finding a free one and binding it. `options` go to
    uvicorn.Config (log_level "warning" and no lifespan unless given)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, **{"log_level": "warning", "lifespan": "off", **options}
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
