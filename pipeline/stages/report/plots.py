"""Small inline SVG charts for the report: bars, histograms and line curves.

Each function returns one ``<svg>`` element as text with a ``viewBox`` and
``width=100%`` (capped by ``max-width``), so a chart scales with the page and
never makes it wider than the window. No script, no external resource.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 44
COLOURS = ("#3b6ea8", "#d0703c", "#4a9a5b", "#a8457f", "#7a6a3b", "#3ba8a4")


def _frame(title: str, body: str, height: int = HEIGHT) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" style="max-width:{WIDTH}px" '
            f'role="img" xmlns="http://www.w3.org/2000/svg"><title>{html.escape(title)}</title>'
            f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">'
            f'{html.escape(title)}</text>{body}</svg>')


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.4g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]``."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(factor for factor in (1, 2, 2.5, 5, 10) if factor * step >= raw)
    start = math.floor(low / step) * step
    return [start + index * step for index in range(count + 2) if start + index * step <= high + step * 1e-9]


def _axes(y_low: float, y_high: float, x_label: str, y_label: str) -> tuple[str, callable]:
    plot_h = HEIGHT - TOP - BOTTOM
    ticks = _ticks(y_low, y_high)
    low, high = min(ticks[0], y_low), max(ticks[-1], y_high)
    span = (high - low) or 1.0

    def y_of(value: float) -> float:
        return TOP + plot_h * (1 - (value - low) / span)

    parts = [f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
             f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>']
    for tick in ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{LEFT - 4}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_number(tick)}</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11">'
                 f'{html.escape(x_label)}</text>'
                 f'<text x="12" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" font-size="11" '
                 f'transform="rotate(-90 12 {(TOP + HEIGHT - BOTTOM) / 2})">{html.escape(y_label)}</text>')
    return "".join(parts), y_of


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], *, x_label: str = "",
              y_label: str = "") -> str:
    """Vertical bars, one per label (labels shown when they fit, every bar has a tooltip)."""
    if not values:
        return _frame(title, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
    axes, y_of = _axes(0.0, max(max(values), 1), x_label, y_label)
    plot_w = WIDTH - LEFT - RIGHT
    slot = plot_w / len(values)
    show_labels = slot >= 14
    bars = []
    for index, (label, value) in enumerate(zip(labels, values)):
        x = LEFT + index * slot + slot * 0.1
        y = y_of(value)
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{y_of(0) - y:.1f}" '
                    f'fill="{COLOURS[0]}"><title>{html.escape(str(label))}: {_number(value)}</title></rect>')
        if show_labels:
            text = html.escape(str(label))[: max(2, int(slot / 6))]
            bars.append(f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - BOTTOM + 12}" text-anchor="middle" '
                        f'font-size="9">{text}</text>')
    return _frame(title, axes + "".join(bars))


def histogram(title: str, values: Sequence[float], *, bins: int = 20, x_label: str = "",
              y_label: str = "count") -> str:
    """A histogram of ``values`` in at most ``bins`` equal bins, the bin edges as labels.

    Values that are all equal make one bar.
    """
    if not values:
        return bar_chart(title, [], [])
    low, high = min(values), max(values)
    if high == low:
        return bar_chart(title, [_number(low)], [len(values)], x_label=x_label, y_label=y_label)
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / width), bins - 1)] += 1
    labels = [_number(low + index * width) for index in range(bins)]
    return bar_chart(title, labels, counts, x_label=x_label, y_label=y_label)


def line_chart(title: str, series: dict[str, Sequence[tuple[float, float]]], *, x_label: str = "",
               y_label: str = "") -> str:
    """One polyline per named series of ``(x, y)`` points, with a legend; non-finite points dropped."""
    clean = {name: [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
             for name, points in series.items()}
    clean = {name: points for name, points in clean.items() if points}
    if not clean:
        return bar_chart(title, [], [])
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    axes, y_of = _axes(min(ys), max(ys), x_label, y_label)
    x_low, x_high = min(xs), max(xs)
    span = (x_high - x_low) or 1.0
    plot_w = WIDTH - LEFT - RIGHT

    def x_of(value: float) -> float:
        return LEFT + plot_w * (value - x_low) / span

    parts = [axes,
             f'<text x="{LEFT}" y="{HEIGHT - BOTTOM + 14}" font-size="10">{_number(x_low)}</text>'
             f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - BOTTOM + 14}" text-anchor="end" font-size="10">'
             f'{_number(x_high)}</text>']
    for index, (name, points) in enumerate(clean.items()):
        colour = COLOURS[index % len(COLOURS)]
        coordinates = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coordinates}">'
                     f'<title>{html.escape(name)}</title></polyline>')
        if len(points) == 1:
            x, y = points[0]
            parts.append(f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<rect x="{WIDTH - RIGHT - 150}" y="{TOP + 4 + 14 * index}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{WIDTH - RIGHT - 136}" y="{TOP + 13 + 14 * index}" '
                     f'font-size="10">{html.escape(name)}</text>')
    return _frame(title, "".join(parts))
