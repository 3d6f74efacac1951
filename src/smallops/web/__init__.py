"""The review queue in a browser: a Starlette skin over `smallops.review.desk.ReviewDesk`.

Every page is also a JSON document (`Accept: application/json` or `?format=json`), so the UI is
tested without a browser and scripts need no scraping. `smallops.web.auth` (password hashes,
signed sessions, CSRF tokens) needs only the standard library; `create_app` needs the `web` extra
(starlette, uvicorn, python-multipart), so it is imported only when asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from smallops.web.app import create_app

        return create_app
    raise AttributeError(f"module 'smallops.web' has no attribute {name!r}")
