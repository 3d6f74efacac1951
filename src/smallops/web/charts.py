"""Charts as server-rendered SVG: no script, no CDN, readable from a 390 px phone up.

A chart is drawn in a fixed viewBox and scales to its box's width (CSS keeps it from growing
past a readable size). Colours come from app.css through class names (the page's
Content-Security-Policy allows no inline styles). Every label is escaped: workflow names are
user text. Each chart's numbers are also in the page as a table, and in its JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 400, 210
LEFT, RIGHT, TOP, BOTTOM = 46, 10, 26, 40  # the plot's margins, in viewBox units
MAX_TICKS = 5  # date labels along the x axis

#: How a chart writes a value: (value, the axis step, 0 for an exact value such as a tooltip).
Format = Callable[[float, float], str]


def count(value: float, step: float = 0.0) -> str:
    """1234 -> "1.2k": short enough for an axis."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def dollars(value: float, step: float = 0.0) -> str:
    if value == 0:
        return "$0"
    if step:
        decimals = max(2, -math.floor(math.log10(step))) if step < 1 else 0
        return f"${value:,.{decimals}f}"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.3g}"


def millis(value: float, step: float = 0.0) -> str:
    return f"{value:,.0f}"


def axis(largest: float, whole: bool = False) -> tuple[float, float]:
    """The axis top and its step: the step is 1, 2 or 5 times a power of ten (a whole number
    for counts), so that at most four steps reach `largest`."""
    if largest <= 0:
        return 1.0, 1.0 if whole else 0.25
    rough = largest / 4
    power = 10.0 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= rough)
    if whole:
        step = max(step, 1.0)
    return step * max(1, math.ceil(largest / step - 1e-9)), step


def _day_label(day: str) -> str:
    moment = date.fromisoformat(day)
    return f"{moment:%b} {moment.day}"


def _frame(
    title: str, unit: str, scale: tuple[float, float], fmt: Format, days: Sequence[str]
) -> list[str]:
    """The chart's box: title, y axis with gridlines and labels, x axis with date ticks."""
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'preserveAspectRatio="xMinYMin meet"><title>{escape(title)}</title>',
        f'<text class="chart-unit" x="{x0 - 40}" y="14">{escape(unit)}</text>',
    ]
    top, step = scale
    steps = round(top / step)
    for i in range(steps + 1):
        value = step * i
        y = y1 - (y1 - y0) * i / steps
        parts.append(f'<line class="chart-grid" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="chart-tick" x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(value, step))}</text>"
        )
    parts.append(f'<line class="chart-axis" x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}"/>')
    n = len(days)
    step = max(1, math.ceil(n / MAX_TICKS))
    slot = (x1 - x0) / max(n, 1)
    for i in range(n - 1, -1, -step):  # the last day is always labelled
        x = x0 + slot * (i + 0.5)
        parts.append(
            f'<line class="chart-axis" x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y1 + 4}"/>'
        )
        at = min(x, WIDTH - 20)  # the last label stays inside the box
        parts.append(
            f'<text class="chart-tick" x="{at:.1f}" y="{y1 + 16}" text-anchor="middle">'
            f"{escape(_day_label(days[i]))}</text>"
        )
    parts.append(
        f'<text class="chart-unit" x="{x1}" y="{HEIGHT - 4}" text-anchor="end">day (UTC)</text>'
    )
    return parts


def bar_chart(
    title: str,
    unit: str,
    days: Sequence[str],
    values: Sequence[float | None],
    fmt: Format,
    partial: str | None = None,
) -> Markup:
    """One bar per day. A day whose value is unknown (calls made, none priced) gets a hollow
    marker on the axis, never a bar of 0; the `partial` day (today, so far) a lighter bar."""
    known = [v for v in values if v is not None]
    scale = axis(max(known, default=0), whole=fmt is count)
    top = scale[0]
    parts = _frame(title, unit, scale, fmt, days)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    slot = (x1 - x0) / max(len(days), 1)
    width = min(max(slot * 0.72, 0.6), 28.0)
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        x = x0 + slot * i + (slot - width) / 2
        label = escape(f"{_day_label(day)}: {'unknown' if value is None else fmt(value, 0)} {unit}")
        if value is None:
            parts.append(
                f'<rect class="chart-unknown" x="{x:.1f}" y="{y1 - 3}" width="{width:.1f}" '
                f'height="3"><title>{label}</title></rect>'
            )
            continue
        height = (y1 - y0) * value / top
        kind = "chart-bar partial" if day == partial else "chart-bar"
        if day == partial:
            label = escape(f"{_day_label(day)} so far: {fmt(value, 0)} {unit}")
        parts.append(
            f'<rect class="{kind}" x="{x:.1f}" y="{y1 - height:.1f}" width="{width:.1f}" '
            f'height="{height:.1f}"><title>{label}</title></rect>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(
    title: str,
    unit: str,
    days: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    fmt: Format,
) -> Markup:
    """One line per series (at most three: their colours are chart-line-0..2), broken where a
    day has no value, with a legend."""
    known = [v for _, values in series for v in values if v is not None]
    scale = axis(max(known, default=0))
    top = scale[0]
    parts = _frame(title, unit, scale, fmt, days)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    slot = (x1 - x0) / max(len(days), 1)
    for index, (name, values) in enumerate(series):
        segment: list[str] = []
        segments = [segment]
        for i, value in enumerate(values):
            if value is None:
                segment = []
                segments.append(segment)
                continue
            x, y = x0 + slot * (i + 0.5), y1 - (y1 - y0) * value / top
            segment.append(f"{x:.1f},{y:.1f}")
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle class="chart-line-{index}" cx="{cx}" cy="{cy}" r="2"/>')
            elif points:
                parts.append(f'<polyline class="chart-line-{index}" points="{" ".join(points)}"/>')
        legend_x = x1 - 70 * (len(series) - index)
        parts.append(
            f'<line class="chart-line-{index}" x1="{legend_x}" x2="{legend_x + 14}" y1="10" '
            f'y2="10"/><text class="chart-tick" x="{legend_x + 18}" y="14">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
