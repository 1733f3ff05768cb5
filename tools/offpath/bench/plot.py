"""A dependency-free SVG chart of a benchmark run.

Top: every cell as a bar of "share of its goal used" (the value over the
goal for a ceiling, the goal over the value for a floor), so 1 is the line
to stay under, whatever the unit; green met, red missed, grey no verdict.
Below: the latency phase's p50, p99 and p99.9 per variant and CPU mode, on a
log scale (a stalled variant's seconds and a healthy one's milliseconds must
both stay readable).
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

_W, _BAR, _GAP, _LEFT, _TOP = 860, 12, 8, 360, 40
_FLOOR_MS = 0.5
_COLOURS = {"met": "#2e7d32", "missed": "#c62828"}
_OTHER = "#9e9e9e"
_PERCENTILES = (("p50", "#1f4e79"), ("p99", "#5b9bd5"), ("p99.9", "#bdd7ee"))
_USE_MAX = 3.0  # goal-use bars are cut here (and labelled with their value)


def _use(cell: dict[str, Any]) -> float | None:
    value, goal = cell["value"], cell["threshold"]
    if not isinstance(value, int | float) or not goal:
        return None
    if cell["op"] == ">=":
        return float(goal) / value if value > 0 else None
    return value / float(goal)


def write_svg(report: dict[str, Any], path: Path) -> None:
    parts: list[str] = []
    y = _TOP
    parts.append(
        f'<text x="10" y="{y - 14}" font-size="14">Goals: share of each goal used '
        "(1 = the goal; green met, red missed, grey no verdict)</text>"
    )
    scale = (_W - _LEFT - 90) / _USE_MAX
    goal_x = _LEFT + scale
    top = y
    for cell in report["cells"]:
        label = f"{cell['mode']} / {cell['variant']}: {cell['title']}"
        parts.append(f'<text x="10" y="{y + _BAR - 2}">{escape(label)}</text>')
        use = _use(cell)
        colour = _COLOURS.get(cell["verdict"], _OTHER)
        if use is not None:
            width = max(1.0, min(use, _USE_MAX) * scale)
            parts.append(
                f'<rect x="{_LEFT}" y="{y}" width="{width:.1f}" height="{_BAR - 2}" '
                f'fill="{colour}"/>'
                f'<text x="{_LEFT + width + 4:.1f}" y="{y + _BAR - 2}">'
                f"{cell['value']:g}{escape(cell['unit'] and ' ' + cell['unit'])}</text>"
            )
        else:
            parts.append(
                f'<text x="{_LEFT + 4}" y="{y + _BAR - 2}" fill="{_OTHER}">'
                f"{escape(cell['verdict'])}</text>"
            )
        y += _BAR + 4
    parts.append(
        f'<line x1="{goal_x:.1f}" y1="{top - 4}" x2="{goal_x:.1f}" y2="{y}" '
        'stroke="#000" stroke-dasharray="4 3"/>'
    )

    rows: list[tuple[str, dict[str, float]]] = []
    for mode, result in report["modes"].items():
        latency = result["summary"].get("latency")
        if latency is None:
            continue
        for variant, row in latency["rows"].items():
            values = {q: row.get(f"{q}_ms") for q, _ in _PERCENTILES}
            numbers = {q: float(v) for q, v in values.items() if isinstance(v, int | float)}
            if len(numbers) == len(_PERCENTILES):
                rows.append((f"{mode} / {variant}", numbers))
    y += 40
    parts.append(
        f'<text x="10" y="{y - 14}" font-size="14">Query latency at the latency phase\'s '
        f"rate, ms from the scheduled start (medians; log scale from {_FLOOR_MS:g} ms): "
        "p50, p99, p99.9</text>"
    )
    if rows:
        peak = max([max(v.values()) for _, v in rows] + [_FLOOR_MS * 10])
        span = math.log10(peak / _FLOOR_MS)

        def width_of(value: float) -> float:
            return max(
                1.0, (_W - _LEFT - 80) * math.log10(max(value, _FLOOR_MS) / _FLOOR_MS) / span
            )

        for label, values in rows:
            parts.append(f'<text x="10" y="{y + _BAR + 6}">{escape(label)}</text>')
            for n, (q, colour) in enumerate(_PERCENTILES):
                width = width_of(values[q])
                dy = n * _BAR
                parts.append(
                    f'<rect x="{_LEFT}" y="{y + dy}" width="{width:.1f}" height="{_BAR - 2}" '
                    f'fill="{colour}"/>'
                    f'<text x="{_LEFT + width + 4:.1f}" y="{y + dy + _BAR - 2}">'
                    f"{values[q]:g}</text>"
                )
            y += 3 * _BAR + _GAP
    height = y + 20
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="#fff"/>',
        *parts,
        "</svg>",
    ]
    path.write_text("\n".join(svg), encoding="utf-8")
