"""The pass-rate chart of eval history: where to draw each point, axis and label.

Only geometry is computed here; the template draws the SVG, so every label it prints (a prompt
version, a date) is escaped like any other text. No script, no CDN: it renders offline, and the
page prints the same numbers in a table beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

WIDTH, HEIGHT = 600, 230  # the desktop chart; a phone gets one NARROW wide, its text as large
NARROW = 340
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 26, 50
TICKS = (0, 25, 50, 75, 100)  # pass rate, %
LABEL_CHARS, CHAR_WIDTH = 8, 7.4  # a prompt version's label: its first characters, 12px mono
VERDICT_CLASSES = {"pass": "pass", "regression": "regression", "inconclusive": "inconclusive"}


def geometry(series: Mapping[str, Any], width: int = WIDTH) -> dict[str, Any]:
    """Points, lines and labels of one workflow's pass rates (oldest first) in a `width` x
    HEIGHT box: y is the pass rate in % (0 at the bottom), x the eval runs in order; a dashed
    line marks each change of prompt version, labelled with the new version."""
    points: Sequence[Mapping[str, Any]] = series["points"]
    plot_w, plot_h = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(points) - 1, 1)

    def x_at(i: int) -> float:
        return round(LEFT + (plot_w / 2 if len(points) == 1 else i * step), 1)

    def y_at(rate: float) -> float:
        return round(TOP + plot_h * (1 - rate), 1)

    drawn = []
    for i, point in enumerate(points):
        rate = point["pass_rate"]
        if rate is None:
            continue
        started = point["started_at"]
        drawn.append(
            {
                "x": x_at(i),
                "y": y_at(rate),
                "href": f"/evals/{point['eval_run_id']}",
                "kind": VERDICT_CLASSES.get(point["verdict"] or "", "none"),
                "title": f"{started:%Y-%m-%d %H:%M} UTC · prompt {point['prompt_version']} · "
                f"{rate:.0%} pass · {point['verdict'] or 'not gated'}",
            }
        )
    versions = []
    label_end = LEFT + 4 + LABEL_CHARS * CHAR_WIDTH  # the first version's label, at the left
    for i, point in enumerate(points):
        if i == 0 or point["prompt_version"] == points[i - 1]["prompt_version"]:
            continue
        x = round((x_at(i - 1) + x_at(i)) / 2, 1)
        room = x + 3 >= label_end + 6 and x + 3 + LABEL_CHARS * CHAR_WIDTH <= width
        versions.append(
            {"x": x, "label": str(point["prompt_version"])[:LABEL_CHARS] if room else ""}
        )
        if room:  # a label too close to the one before is left out; its line stays
            label_end = x + 3 + LABEL_CHARS * CHAR_WIDTH
    dates = []
    if points:
        ends = sorted({0, len(points) - 1})
        dates = [
            {
                "x": x_at(i),
                "label": f"{points[i]['started_at']:%b %d %H:%M}",
                "anchor": "start" if i == 0 and len(points) > 1 else "end" if i else "middle",
            }
            for i in ends
        ]
    return {
        "width": width,
        "height": HEIGHT,
        "left": LEFT,
        "right": width - RIGHT,
        "top": TOP,
        "bottom": HEIGHT - BOTTOM,
        "ticks": [{"y": y_at(t / 100), "label": f"{t}"} for t in TICKS],
        "line": " ".join(f"{p['x']},{p['y']}" for p in drawn),
        "points": drawn,
        "versions": versions,
        "dates": dates,
        "x_title_y": HEIGHT - 10,
        "y_title_x": 14,
        "y_title_y": TOP + plot_h / 2,
        "first_version": str(points[0]["prompt_version"])[:LABEL_CHARS] if points else "",
    }
