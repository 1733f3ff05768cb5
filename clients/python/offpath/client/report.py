"""A GetSummary reply as something a person reads at a glance.

:func:`text_report` is lines for an 80-column terminal: totals, then one
horizontal bar chart per question (volume over time, processing time, top
skills, top queries, errors by code, tokens by model). :func:`write_png` is
the same summary as one PNG of charts (volume and latency percentiles over
time, top skills, top queries), drawn by matplotlib, which only the
``report`` extra installs (``pip install "offpath[report]"``): it is imported
when a PNG is asked for, never by the plain client.

Both read only the reply, so they render a fixture as well as a server's
answer. Times are UTC; processing times are milliseconds, each percentile
within the reply's ``processing_ms_relative_error``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from offpath.client.messages import status_name
from offpath.v1 import ingest_pb2

if TYPE_CHECKING:
    from matplotlib.axes import Axes

WIDTH: Final = 80
# A chart over time has at most this many rows: the default day of hourly
# buckets, rounded out to whole buckets at both ends, is 25. More buckets are
# merged (events and errors add up; percentiles do not, so the latency chart
# shows the last 25 buckets with events instead).
MAX_TIME_ROWS: Final = 25
# Labels (skills, query texts) are cut to this many characters in the terminal.
LABEL_MAX: Final = 30
# The PNG: 12 x 8 inches at 100 dpi is 1200 x 800 pixels.
PNG_SIZE_IN: Final = (12.0, 8.0)
PNG_DPI: Final = 100
INSTALL_HINT: Final = 'pip install "offpath[report]"'

_EIGHTHS: Final = " ▏▎▍▌▋▊▉"
_FULL: Final = "█"


class MissingExtra(RuntimeError):
    """matplotlib is not installed (the ``report`` extra)."""


# -- the reply, in plain values ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rollup bucket of the covered range (empty ones included)."""

    start: datetime
    events: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def bucket_width(summary: ingest_pb2.GetSummaryResponse) -> timedelta:
    seconds = summary.bucket_width.seconds or 3600
    return timedelta(seconds=seconds)


def covered(summary: ingest_pb2.GetSummaryResponse) -> tuple[datetime, datetime]:
    """[start, end) of the covered range, UTC."""
    return (
        summary.covered_start_time.ToDatetime(UTC),
        summary.covered_end_time.ToDatetime(UTC),
    )


def buckets(summary: ingest_pb2.GetSummaryResponse) -> list[Bucket]:
    """Every bucket of the covered range, oldest first; the reply leaves empty
    buckets out, a chart over time shows them as zero."""
    width = bucket_width(summary)
    start, end = covered(summary)
    by_start = {b.start_time.ToDatetime(UTC): b for b in summary.volume}
    if start >= end and by_start:  # a reply without the covered range
        start, end = min(by_start), max(by_start) + width
    out = []
    moment = start
    while moment < end:
        b = by_start.get(moment)
        out.append(
            Bucket(moment, 0, 0, 0.0, 0.0, 0.0)
            if b is None
            else Bucket(
                moment,
                b.event_count,
                b.error_count,
                b.p50_processing_ms,
                b.p95_processing_ms,
                b.p99_processing_ms,
            )
        )
        moment += width
    return out


def has_bucket_percentiles(summary: ingest_pb2.GetSummaryResponse) -> bool:
    """Whether the reply carries percentiles per bucket (servers before the
    field was added leave them 0)."""
    return any(b.p50_processing_ms > 0 for b in summary.volume)


def duration_text(width: timedelta) -> str:
    """``15m``, ``1h``, ``24h``, ``7d``: the largest unit that divides it (days
    from two on, so a day reads ``24h`` as ``--since`` defaults to)."""
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "d" else 1) and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def range_text(summary: ingest_pb2.GetSummaryResponse) -> str:
    """``2026-11-27 19:00 to 2026-11-28 20:00 UTC``."""
    start, end = covered(summary)
    if end <= start:
        return "the range asked for (the reply does not say which buckets)"
    end_format = "%H:%M" if start.date() == end.date() else "%Y-%m-%d %H:%M"
    return f"{start:%Y-%m-%d %H:%M} to {end:{end_format}} UTC"


def ms_text(ms: float) -> str:
    """Three significant figures or so: 0.412, 4.12, 41.2, 412, 4,120."""
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def percent_text(share: float) -> str:
    """``1.2 %`` (a space before the sign, as the README writes it)."""
    return f"{share * 100:.1f} %"


def bound_text(summary: ingest_pb2.GetSummaryResponse) -> str:
    """The percentiles' stated error: ``±4.4 %``."""
    return f"±{percent_text(summary.processing_ms_relative_error)}"


def headline(summary: ingest_pb2.GetSummaryResponse) -> list[str]:
    """Totals and percentiles in two lines (shared with ``offpath summary``)."""
    share = summary.error_count / summary.event_count if summary.event_count else 0.0
    return [
        f"{summary.event_count:,} events   {summary.error_count:,} errors "
        f"({percent_text(share)})   mean {ms_text(summary.mean_processing_ms)} ms",
        f"processing time  p50 {ms_text(summary.p50_processing_ms)} ms   "
        f"p95 {ms_text(summary.p95_processing_ms)} ms   "
        f"p99 {ms_text(summary.p99_processing_ms)} ms   (each within {bound_text(summary)})",
    ]


# -- text ------------------------------------------------------------------------------------


def clip(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, an ellipsis where it was cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def bar(value: float, maximum: float, width: int) -> str:
    """A horizontal bar in eighths of a character; any value above 0 shows."""
    if value <= 0 or maximum <= 0 or width <= 0:
        return ""
    eighths = min(round(value / maximum * width * 8), width * 8)
    full, part = divmod(eighths, 8)
    return (_FULL * full + (_EIGHTHS[part] if part else "")) or _EIGHTHS[1]


def bar_chart(rows: Sequence[tuple[str, float, str]], width: int = WIDTH) -> list[str]:
    """One line per ``(label, value, shown)``: the label, a bar scaled so the
    largest value fills the room left, and ``shown`` right-aligned; every line
    at most ``width`` characters."""
    if not rows:
        return ["  (none)"]
    label_w = min(max(len(label) for label, _, _ in rows), LABEL_MAX)
    shown_w = max(len(shown) for _, _, shown in rows)
    bar_w = max(width - 2 - label_w - 1 - 1 - shown_w, 1)
    top = max(value for _, value, _ in rows)
    return [
        f"  {clip(label, label_w).ljust(label_w)} {bar(value, top, bar_w).ljust(bar_w)} "
        f"{shown.rjust(shown_w)}"
        for label, value, shown in rows
    ]


def _time_label(moment: datetime, multi_day: bool) -> str:
    return f"{moment:%m-%d %H:%M}" if multi_day else f"{moment:%H:%M}"


def _merge(rows: list[Bucket], every: int) -> list[Bucket]:
    """Groups of ``every`` consecutive buckets, events and errors added up."""
    return [
        Bucket(
            group[0].start,
            sum(b.events for b in group),
            sum(b.errors for b in group),
            0.0,
            0.0,
            0.0,
        )
        for group in (rows[i : i + every] for i in range(0, len(rows), every))
    ]


def text_report(
    summary: ingest_pb2.GetSummaryResponse, *, asked: str = "", width: int = WIDTH
) -> list[str]:
    """The summary as lines of at most ``width`` characters; ``asked`` names the
    range as requested (``last 24h``), for the title."""
    start, end = covered(summary)
    step = bucket_width(summary)
    multi_day = end - start > timedelta(days=1)
    title = f"offpath report: {range_text(summary)}"
    if asked:
        title += f" ({asked})"
    lines = [clip(title, width), *headline(summary)]
    if not summary.event_count:
        return [*lines, "", "no events in this range"]

    every = buckets(summary)
    merge = max(1, math.ceil(len(every) / MAX_TIME_ROWS))
    rows = _merge(every, merge) if merge > 1 else every
    lines += ["", f"Events per {duration_text(step * merge)} (errors in brackets)"]
    lines += bar_chart(
        [
            (
                _time_label(b.start, multi_day),
                b.events,
                f"{b.events:,}" + (f" ({b.errors:,})" if b.errors else ""),
            )
            for b in rows
        ],
        width,
    )

    lines += ["", f"Processing time, ms (each within {bound_text(summary)})"]
    lines += bar_chart(
        [
            (name, value, ms_text(value))
            for name, value in (
                ("p50", summary.p50_processing_ms),
                ("p95", summary.p95_processing_ms),
                ("p99", summary.p99_processing_ms),
            )
        ],
        width,
    )
    if has_bucket_percentiles(summary):
        busy = [b for b in every if b.events]
        shown = busy[-MAX_TIME_ROWS:]
        cut = f", the last {len(shown)}" if len(shown) < len(busy) else ""
        lines += [
            "",
            f"Processing time per {duration_text(step)}, ms: p50 / p95 / p99, bar p99{cut}",
        ]
        lines += bar_chart(
            [
                (
                    _time_label(b.start, multi_day),
                    b.p99_ms,
                    f"{ms_text(b.p50_ms)} / {ms_text(b.p95_ms)} / {ms_text(b.p99_ms)}",
                )
                for b in shown
            ],
            width,
        )

    lines += ["", "Top skills (events that matched each)"]
    lines += bar_chart([(s.name, s.count, f"{s.count:,}") for s in summary.top_skills], width)

    lines += ["", "Top queries (normalised text)"]
    queries = [(q.text, float(q.count), f"{q.count:,}") for q in summary.top_queries]
    if summary.other_query_count:
        other = summary.other_query_count
        queries.append(("(not counted by text)", other, f"{other:,}"))
    lines += bar_chart(queries, width)

    lines += ["", "Errors by status code"]
    lines += bar_chart(
        [(status_name(e.code), e.count, f"{e.count:,}") for e in summary.errors_by_code], width
    )

    lines += ["", "Tokens by model (events in brackets)"]
    lines += bar_chart(
        [
            (m.model or "(none)", m.token_count, f"{m.token_count:,} ({m.event_count:,})")
            for m in summary.models
        ],
        width,
    )
    return lines


# -- PNG -------------------------------------------------------------------------------------


def write_png(summary: ingest_pb2.GetSummaryResponse, path: Path, *, asked: str = "") -> None:
    """Draw the summary into a PNG at ``path``: volume per bucket, latency
    percentiles per bucket, top skills and top queries, titled with the
    range. Raises :class:`MissingExtra` without matplotlib."""
    try:
        from matplotlib import rc_context
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtra(
            f"offpath report --png needs matplotlib: {INSTALL_HINT} ({exc})"
        ) from None

    with rc_context(
        {
            "font.size": 11,
            "axes.titlesize": 13,
            "axes.titleweight": "bold",
            "axes.labelsize": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    ):
        # The Agg canvas, named: no display, and no pyplot global state.
        figure = Figure(figsize=PNG_SIZE_IN, dpi=PNG_DPI, layout="constrained")
        FigureCanvasAgg(figure)
        title = f"offpath report: {range_text(summary)}"
        if asked:
            title += f" ({asked})"
        figure.suptitle(
            f"{title}\n{headline(summary)[0]}", fontsize=14, fontweight="bold", linespacing=1.5
        )
        grid = figure.subplots(2, 2)
        every = buckets(summary)
        step = bucket_width(summary)
        _volume(grid[0][0], every, step)
        _latency(grid[0][1], summary, every, step)
        _ranked(
            grid[1][0],
            "Top skills",
            "events that matched the skill",
            [(s.name, s.count) for s in summary.top_skills],
            "tab:green",
        )
        _ranked(
            grid[1][1],
            "Top queries",
            "events with this query (normalised text)",
            [(q.text, q.count) for q in summary.top_queries],
            "tab:purple",
        )
        figure.savefig(path, format="png")


def _day_number(moment: datetime) -> float:
    """matplotlib's number for a time (days since its epoch)."""
    from matplotlib import dates

    return float(dates.date2num(moment))  # type: ignore[no-untyped-call]  # not annotated


def _time_axis(axes: Axes, every: Sequence[Bucket], step: timedelta) -> None:
    from matplotlib import dates

    # matplotlib.dates is not annotated: its calls are untyped (hence the ignores).
    locator = dates.AutoDateLocator(minticks=3, maxticks=8, tz=UTC)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    formatter = dates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(formatter)
    if every:
        axes.set_xlim(_day_number(every[0].start), _day_number(every[-1].start + step))
    axes.set_xlabel("time (UTC)")


def _volume(axes: Axes, every: Sequence[Bucket], step: timedelta) -> None:
    # Bars 90 % of a bucket wide (matplotlib's date unit is the day), centred in it.
    width_days = step.total_seconds() / 86400 * 0.9
    starts = [_day_number(b.start + step * 0.05) for b in every]
    ok = [b.events - b.errors for b in every]
    errors = [b.errors for b in every]
    axes.bar(starts, ok, width=width_days, align="edge", color="tab:blue", label="OK")
    axes.bar(
        starts,
        errors,
        width=width_days,
        bottom=ok,
        align="edge",
        color="tab:red",
        label="errors",
    )
    axes.set_title(f"Events per {duration_text(step)}")
    axes.set_ylabel("events")
    axes.legend(loc="upper left", frameon=False)
    _time_axis(axes, every, step)


def _latency(
    axes: Axes,
    summary: ingest_pb2.GetSummaryResponse,
    every: Sequence[Bucket],
    step: timedelta,
) -> None:
    axes.set_title(f"Processing time per {duration_text(step)} ({bound_text(summary)})")
    axes.set_ylabel("milliseconds")
    lines = (
        ("p99", "p99_ms", summary.p99_processing_ms, "tab:red"),
        ("p95", "p95_ms", summary.p95_processing_ms, "tab:orange"),
        ("p50", "p50_ms", summary.p50_processing_ms, "tab:blue"),
    )
    busy = [b for b in every if b.events]
    if has_bucket_percentiles(summary):
        middles = [_day_number(b.start + step / 2) for b in busy]
        for name, field, _, color in lines:
            axes.plot(
                middles,
                [getattr(b, field) for b in busy],
                marker="o",
                markersize=4,
                linewidth=2,
                color=color,
                label=name,
            )
    else:
        # A server without per-bucket percentiles: the range's, as levels.
        for name, _, value, color in lines:
            axes.axhline(value, color=color, linewidth=2, label=f"{name} (whole range)")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", frameon=False)
    _time_axis(axes, every, step)


def _ranked(
    axes: Axes, title: str, xlabel: str, rows: Sequence[tuple[str, int]], color: str
) -> None:
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    if not rows:
        axes.text(
            0.5, 0.5, "none in this range", ha="center", va="center", transform=axes.transAxes
        )
        axes.set_yticks([])
        return
    labels = [clip(name, 34) for name, _ in rows]
    counts = [count for _, count in rows]
    positions = list(range(len(rows)))
    axes.barh(positions, counts, color=color)
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()  # most frequent on top
    axes.grid(axis="y", visible=False)
    for y, count in zip(positions, counts, strict=True):
        axes.annotate(
            f" {count:,}", (count, y), va="center", ha="left", fontsize=10, annotation_clip=False
        )
    axes.set_xlim(right=max(counts) * 1.15)


__all__ = [
    "INSTALL_HINT",
    "MissingExtra",
    "bar_chart",
    "buckets",
    "headline",
    "text_report",
    "write_png",
]
