"""A small preview of a Slack Block Kit message as HTML, to look at in a browser: header,
section (mrkdwn text and fields), context and divider blocks, as Slack lays them out. It is not
Slack's renderer; it shows what the message's JSON says, in Slack's arrangement."""

from __future__ import annotations

import html
import re
from typing import Any

EMOJI = {
    "rotating_light": "\U0001f6a8",
    "white_check_mark": "\u2705",
    "eyes": "\U0001f440",
    "bell": "\U0001f514",
    "test_tube": "\U0001f9ea",
    "warning": "\u26a0\ufe0f",
}
STYLE = """
body { font: 15px/1.46 -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; margin: 0;
       background: #fff; color: #1d1c1d; }
.msg { display: grid; grid-template-columns: 36px 1fr; gap: 0 8px; padding: 12px 20px; }
.avatar { width: 36px; height: 36px; border-radius: 6px; background: #2e6b4f; color: #fff;
          font-weight: 700; display: grid; place-items: center; }
.who { font-weight: 900; } .who .app { font-size: 10px; background: #ddd; border-radius: 3px;
       padding: 0 3px; margin-left: 4px; color: #555; font-weight: 700; }
.header { font-size: 18px; font-weight: 900; margin: 6px 0 4px; }
.section { margin: 4px 0; white-space: pre-wrap; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 16px; margin: 8px 0; }
.context { color: #616061; font-size: 12px; margin-top: 6px; }
code { font: 12px Menlo, monospace; color: #e01e5a; background: #f8f8f8; border: 1px solid
       #e8e8e8; border-radius: 3px; padding: 0 3px; }
a { color: #1264a3; text-decoration: none; }
.thread { color: #616061; font-size: 12px; margin: 0 20px 8px 64px; }
"""


def mrkdwn(text: str) -> str:
    """Slack mrkdwn as HTML: links, dates (their fallback text), *bold*, `code`, emoji."""
    out = html.escape(text, quote=False)
    out = re.sub(r"&lt;!date\^\d+\^[^|]*\|([^&]*)&gt;", r"\1", out)
    out = re.sub(r"&lt;(https?://[^|&]+)\|([^&]+)&gt;", r'<a href="\1">\2</a>', out)
    out = re.sub(r"&lt;(https?://[^&]+)&gt;", r'<a href="\1">\1</a>', out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*([^*\n]+)\*", r"<b>\1</b>", out)
    out = out.replace("&amp;lt;", "&lt;").replace("&amp;gt;", "&gt;").replace("&amp;amp;", "&amp;")
    return re.sub(r":([a-z_]+):", lambda m: EMOJI.get(m.group(1), m.group(0)), out)


def text_of(obj: dict[str, Any]) -> str:
    if obj.get("type") == "plain_text":
        escaped = html.escape(obj["text"], quote=False)
        return re.sub(r":([a-z_]+):", lambda m: EMOJI.get(m.group(1), m.group(0)), escaped)
    return mrkdwn(obj["text"])


def block_html(block: dict[str, Any]) -> str:
    kind = block["type"]
    if kind == "header":
        return f'<div class="header">{text_of(block["text"])}</div>'
    if kind == "section":
        parts = []
        if "text" in block:
            parts.append(f'<div class="section">{text_of(block["text"])}</div>')
        if block.get("fields"):
            cells = "".join(f'<div class="section">{text_of(f)}</div>' for f in block["fields"])
            parts.append(f'<div class="fields">{cells}</div>')
        return "".join(parts)
    if kind == "context":
        return '<div class="context">' + " ".join(text_of(e) for e in block["elements"]) + "</div>"
    if kind == "divider":
        return "<hr>"
    raise ValueError(f"no preview for a {kind!r} block")


def page(messages: list[tuple[dict[str, Any], str | None]]) -> str:
    """A channel with these messages; each with an optional note under it (e.g. "in thread")."""
    body = []
    for message, note in messages:
        blocks = "".join(block_html(b) for b in message["blocks"])
        body.append(
            '<div class="msg"><div class="avatar">so</div><div>'
            '<div class="who">smallops<span class="app">APP</span></div>'
            f"{blocks}</div></div>" + (f'<div class="thread">{note}</div>' if note else "")
        )
    return f"<!doctype html><meta charset=utf-8><style>{STYLE}</style>{''.join(body)}"
