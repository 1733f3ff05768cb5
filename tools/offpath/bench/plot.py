"""A dependency-free SVG chart of the benchmark: p50 and p99 per variant, on
a log scale (a saturated variant's seconds and a healthy one's milliseconds
must both stay readable)."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

_W, _BAR, _GAP, _LEFT, _TOP = 760, 14, 10, 230, 40
_FLOOR_MS = 0.5


def write_svg(report: dict[str, Any], path: Path) -> None:
    rows: list[tuple[str, float, float]] = []
    for mode, variants in report["modes"].items():
        for name, entry in variants.items():
            lat = entry["latency_ms"]
            if lat["p50"] == lat["p50"] and lat["p99"] == lat["p99"]:  # not NaN
                rows.append((f"{mode} / {name}", lat["p50"], lat["p99"]))
    top = max([p99 for _, _, p99 in rows] + [_FLOOR_MS * 10])
    span = math.log10(top / _FLOOR_MS)

    def width_of(value: float) -> float:
        return max(1.0, (_W - _LEFT - 80) * math.log10(max(value, _FLOOR_MS) / _FLOOR_MS) / span)

    height = _TOP + len(rows) * (2 * _BAR + _GAP) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<text x="10" y="20" font-size="14">Query latency, ms from the scheduled start '
        f"(open loop; log scale from {_FLOOR_MS:g} ms): p50 dark, p99 light</text>",
    ]
    y = _TOP
    for label, p50, p99 in rows:
        parts.append(f'<text x="10" y="{y + _BAR + 4}">{escape(label)}</text>')
        for value, colour, dy in ((p50, "#1f4e79", 0), (p99, "#9dc3e6", _BAR)):
            width = width_of(value)
            parts.append(
                f'<rect x="{_LEFT}" y="{y + dy}" width="{width:.1f}" height="{_BAR - 2}" '
                f'fill="{colour}"/>'
                f'<text x="{_LEFT + width + 4:.1f}" y="{y + dy + _BAR - 4}">{value:g}</text>'
            )
        y += 2 * _BAR + _GAP
    parts.append("</svg>")
    path.write_text("\n".join(parts), encoding="utf-8")
