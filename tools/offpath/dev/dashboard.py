"""The Grafana dashboard, rendered from a local run (for the README).

    python -m offpath.dev.dashboard --out deploy/grafana/offpath-dashboard.png

Grafana and Prometheus do not run here, so this plays both for one bounded
run: it starts the local stack (:class:`~offpath.dev.stack.DevStack`, free
ports), offers QueryService an open-loop load (the benchmark's
:func:`~offpath.client.load.run_load`) plus a trickle of invalid queries so
the error panels have something to show, scrapes both services' ``/metrics``
every :data:`SCRAPE_INTERVAL_S` seconds, and then evaluates each panel's own
PromQL from ``deploy/grafana/offpath-dashboard.json`` over those scrapes
(:class:`Promql`: the subset the dashboard uses, ``rate``, ``sum by``,
``histogram_quantile``, arithmetic and ``>``), drawing every time-series
panel with its title, legend and unit into one PNG (matplotlib, Agg).

What differs from a Grafana screenshot, and the picture says so: the
series are this process's evaluation, not Prometheus's (``rate`` is the
increase between the first and last scrape of the window, without
Prometheus's extrapolation to the window's edges, which changes no ratio and
no quantile); ``$namespace`` is ``local`` and each service's series carry
``pod`` = ``query`` or ``ingest``, the labels Prometheus would attach.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import math
import re
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
from prometheus_client.parser import text_string_to_metric_families

from offpath.client.load import run_load
from offpath.dev.stack import DevStack
from offpath.ingest import settings as ingest_settings
from offpath.v1 import query_pb2, query_pb2_grpc

if TYPE_CHECKING:
    from matplotlib.axes import Axes

REPO: Final = Path(__file__).resolve().parents[3]
DASHBOARD: Final = REPO / "deploy" / "grafana" / "offpath-dashboard.json"

SCRAPE_INTERVAL_S: Final = 2.0
# Grafana's $__rate_interval: four scrape intervals (its floor).
RATE_WINDOW_S: Final = 4 * SCRAPE_INTERVAL_S
NAMESPACE: Final = "local"
# Scrapes before the load (a baseline) and after it (ingest catching up).
LEAD_S: Final = 6.0
TAIL_S: Final = 20.0
_DEFAULT_RATE: Final = 100.0
_DEFAULT_DURATION_S: Final = 60.0
_DEFAULT_INVALID_RATE: Final = 1.0
# Short long-polls so the stack stops quickly, as the e2e tests run it.
STACK_ENV: Final = {ingest_settings.ENV_WAIT_S: "1"}
# Pixels: 20 x 12.5 inches at 72 dpi.
FIGURE_IN: Final = (20.0, 12.5)
FIGURE_DPI: Final = 72

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]
Value = float | Vector
Evaluate = Callable[[int], Value]


# -- scrapes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrape:
    """Every sample of both services at one moment: name -> labels -> value."""

    at_s: float
    samples: Mapping[str, Mapping[Labels, float]]


def parse_exposition(text: str, extra: Mapping[str, str]) -> dict[str, dict[Labels, float]]:
    """Prometheus text format into name -> labels -> value, each series given
    the ``extra`` labels (what a scrape's target adds: namespace, pod)."""
    out: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset({**sample.labels, **extra}.items())
            out[sample.name][labels] = float(sample.value)
    return dict(out)


def scrape(url: str, extra: Mapping[str, str]) -> dict[str, dict[Labels, float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode("utf-8")
    return parse_exposition(text, extra)


def merge(parts: Sequence[Mapping[str, Mapping[Labels, float]]]) -> dict[str, dict[Labels, float]]:
    merged: dict[str, dict[Labels, float]] = defaultdict(dict)
    for part in parts:
        for name, series in part.items():
            merged[name].update(series)
    return dict(merged)


# -- PromQL, the dashboard's subset -----------------------------------------------------------


class PromqlError(ValueError):
    """An expression outside the subset :class:`Promql` evaluates."""


_TOKEN: Final = re.compile(
    r"\s*(?:(?P<range>\[[^\]]*\])|(?P<number>\d+(?:\.\d+)?)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<string>\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<op>!=|=~|!~|[-+*/^(){},=<>]))"
)
_DURATION: Final = re.compile(r"^\[(\d+)(ms|s|m|h)\]$")
_DURATION_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(le, count)`` buckets, as Prometheus's
    ``histogram_quantile`` computes it: find the bucket the rank falls in and
    interpolate linearly inside it (the first bucket starts at 0; a rank in
    the +Inf bucket answers the highest finite bound). NaN without data."""
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]) or not 0 <= q <= 1:
        return math.nan
    # Counts from rates can dip by rounding; cumulative counts never fall.
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)
    total = counts[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(ordered) - 1:
        return ordered[-2][0]
    upper = ordered[index][0]
    lower = ordered[index - 1][0] if index > 0 else 0.0
    below = counts[index - 1] if index > 0 else 0.0
    inside = counts[index] - below
    if index == 0 and upper <= 0:
        return upper
    return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)


def counter_increase(points: Sequence[tuple[float, float]]) -> float:
    """A counter's increase over ``(time, value)`` points, resets included (a
    value below the previous one started again from 0)."""
    return sum(
        value - before if value >= before else value
        for (_, before), (_, value) in itertools.pairwise(points)
    )


def _apply(op: str, a: float, b: float) -> float | None:
    """``a op b``; None drops the element (a false comparison)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b if b else (math.nan if a == 0 else math.copysign(math.inf, a))
    if op == "^":
        return float(a**b)
    if op == ">":
        return a if a > b else None
    if op == "<":
        return a if a < b else None
    raise PromqlError(f"operator {op!r}")


def _binary(op: str, a: Value, b: Value) -> Value:
    if isinstance(a, float) and isinstance(b, float):
        result = _apply(op, a, b)
        return math.nan if result is None else result
    if isinstance(a, dict) and isinstance(b, float):
        pairs = ((k, _apply(op, v, b)) for k, v in a.items())
    elif isinstance(a, float) and isinstance(b, dict):
        if op in "<>":
            raise PromqlError("a comparison with the vector on the right")
        pairs = ((k, _apply(op, a, v)) for k, v in b.items())
    else:
        assert isinstance(a, dict)
        assert isinstance(b, dict)
        # One-to-one matching on identical label sets (all the dashboard needs).
        pairs = ((k, _apply(op, v, b[k])) for k, v in a.items() if k in b)
    return {k: v for k, v in pairs if v is not None}


class Promql:
    """Evaluates an expression at each scrape of a run.

    The grammar is the dashboard's: numbers; selectors with ``=``, ``!=``,
    ``=~``, ``!~`` matchers; ``rate(selector[window])``;
    ``sum [by (labels)] (expr)``; ``histogram_quantile(q, expr)``; ``+ - * /
    ^`` and the filtering comparisons ``>``/``<``; parentheses. Anything else
    raises :class:`PromqlError` rather than drawing something else. Dashboard
    variables (``$namespace``, ``$__rate_interval``) are replaced first.
    """

    def __init__(self, scrapes: Sequence[Scrape], variables: Mapping[str, str]) -> None:
        self._scrapes = scrapes
        self._variables = dict(variables)

    def evaluate(self, expr: str) -> list[Value]:
        """The expression's value at every scrape, in order."""
        function = self.compile(expr)
        return [function(i) for i in range(len(self._scrapes))]

    def compile(self, expr: str) -> Evaluate:
        # Longest names first, so $__rate_interval is not read as $__rate...
        for name in sorted(self._variables, key=len, reverse=True):
            expr = expr.replace(f"${name}", self._variables[name])
        tokens: list[tuple[str, str]] = []
        position = 0
        text = expr.strip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise PromqlError(f"cannot read {text[position:]!r}")
            kind = match.lastgroup
            assert kind is not None
            tokens.append((kind, match.group(kind)))
            position = match.end()
            while position < len(text) and text[position].isspace():
                position += 1
        return _Parser(tokens, self._scrapes).parse()


class _Parser:
    """Recursive descent over the tokens, building closures of the scrape index."""

    def __init__(self, tokens: list[tuple[str, str]], scrapes: Sequence[Scrape]) -> None:
        self._tokens = tokens
        self._at = 0
        self._scrapes = scrapes

    def parse(self) -> Evaluate:
        function = self._binary(0)
        if self._at != len(self._tokens):
            raise PromqlError(f"unexpected {self._tokens[self._at][1]!r}")
        return function

    # -- tokens

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _take(self, kind: str, value: str | None = None) -> str:
        token = self._peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise PromqlError(f"expected {value or kind}, found {token[1] if token else 'the end'}")
        self._at += 1
        return token[1]

    def _is(self, kind: str, value: str) -> bool:
        return self._peek() == (kind, value)

    # -- grammar

    # Precedence, loosest first; ^ binds tightest.
    _LEVELS: Final = (("<", ">"), ("+", "-"), ("*", "/"), ("^",))

    def _binary(self, level: int) -> Evaluate:
        if level == len(self._LEVELS):
            return self._atom()
        left = self._binary(level + 1)
        while (token := self._peek()) is not None and token[0] == "op":
            if token[1] not in self._LEVELS[level]:
                break
            self._at += 1
            right = self._binary(level + 1)
            left = self._combine(token[1], left, right)
        return left

    @staticmethod
    def _combine(op: str, left: Evaluate, right: Evaluate) -> Evaluate:
        return lambda i: _binary(op, left(i), right(i))

    def _atom(self) -> Evaluate:
        token = self._peek()
        if token is None:
            raise PromqlError("the expression ends early")
        kind, value = token
        if kind == "number":
            self._at += 1
            number = float(value)
            return lambda i: number
        if kind == "op" and value == "(":
            self._at += 1
            inner = self._binary(0)
            self._take("op", ")")
            return inner
        if kind == "name" and value == "sum":
            return self._sum()
        if kind == "name" and value == "rate":
            return self._rate()
        if kind == "name" and value == "histogram_quantile":
            return self._quantile()
        if kind == "name":
            name, matchers = self._selector()
            following = self._peek()
            if following is not None and following[0] == "range":
                raise PromqlError(f"a range selector outside rate(): {name}")
            return lambda i: self._instant(i, name, matchers)
        raise PromqlError(f"unexpected {value!r}")

    def _labels(self) -> list[str]:
        self._take("op", "(")
        names = []
        while not self._is("op", ")"):
            names.append(self._take("name"))
            if not self._is("op", ")"):
                self._take("op", ",")
        self._take("op", ")")
        return names

    def _sum(self) -> Evaluate:
        self._take("name", "sum")
        by: list[str] | None = None
        if self._is("name", "by"):  # sum by (a, b) (expr)
            self._take("name", "by")
            by = self._labels()
        self._take("op", "(")
        inner = self._binary(0)
        self._take("op", ")")
        if by is None and self._is("name", "by"):  # sum (expr) by (a, b)
            self._take("name", "by")
            by = self._labels()
        keep = set(by or ())

        def total(i: int) -> Value:
            value = inner(i)
            if isinstance(value, float):
                raise PromqlError("sum() of a number")
            groups: dict[Labels, float] = defaultdict(float)
            for labels, number in value.items():
                groups[frozenset((k, v) for k, v in labels if k in keep)] += number
            return dict(groups)

        return total

    def _rate(self) -> Evaluate:
        self._take("name", "rate")
        self._take("op", "(")
        name, matchers = self._selector()
        window = _DURATION.match(self._take("range"))
        if window is None:
            raise PromqlError("rate() needs a window like [8s]")
        window_s = int(window.group(1)) * _DURATION_S[window.group(2)]
        self._take("op", ")")
        return lambda i: self._rate_at(i, name, matchers, window_s)

    def _quantile(self) -> Evaluate:
        self._take("name", "histogram_quantile")
        self._take("op", "(")
        q = float(self._take("number"))
        self._take("op", ",")
        inner = self._binary(0)
        self._take("op", ")")

        def quantile(i: int) -> Value:
            value = inner(i)
            if isinstance(value, float):
                raise PromqlError("histogram_quantile() of a number")
            groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
            for labels, count in value.items():
                le = dict(labels).get("le")
                if le is not None:
                    groups[frozenset((k, v) for k, v in labels if k != "le")].append(
                        (float(le), count)
                    )
            return {labels: histogram_quantile(q, b) for labels, b in groups.items()}

        return quantile

    def _selector(self) -> tuple[str, list[tuple[str, str, str]]]:
        name = self._take("name")
        matchers: list[tuple[str, str, str]] = []
        if self._is("op", "{"):
            self._take("op", "{")
            while not self._is("op", "}"):
                label = self._take("name")
                token = self._peek()
                if token is None or token[1] not in ("=", "!=", "=~", "!~"):
                    raise PromqlError(f"a matcher on {label} without =, !=, =~ or !~")
                self._at += 1
                matchers.append((label, token[1], json.loads(self._take("string"))))
                if not self._is("op", "}"):
                    self._take("op", ",")
            self._take("op", "}")
        return name, matchers

    # -- data

    @staticmethod
    def _matches(labels: Labels, matchers: Sequence[tuple[str, str, str]]) -> bool:
        have = dict(labels)
        for label, op, wanted in matchers:
            value = have.get(label, "")
            if op == "=" and value != wanted:
                return False
            if op == "!=" and value == wanted:
                return False
            if op == "=~" and not re.fullmatch(wanted, value):
                return False
            if op == "!~" and re.fullmatch(wanted, value):
                return False
        return True

    def _instant(self, i: int, name: str, matchers: Sequence[tuple[str, str, str]]) -> Vector:
        series = self._scrapes[i].samples.get(name, {})
        return {k: v for k, v in series.items() if self._matches(k, matchers)}

    def _rate_at(
        self, i: int, name: str, matchers: Sequence[tuple[str, str, str]], window_s: float
    ) -> Vector:
        now = self._scrapes[i].at_s
        inside = [s for s in self._scrapes[: i + 1] if s.at_s >= now - window_s - 1e-9]
        points: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        for s in inside:
            for labels, value in s.samples.get(name, {}).items():
                if self._matches(labels, matchers):
                    points[labels].append((s.at_s, value))
        return {
            labels: counter_increase(p) / (p[-1][0] - p[0][0])
            for labels, p in points.items()
            if len(p) >= 2 and p[-1][0] > p[0][0]
        }


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    """What was offered and what came back, and the scrapes meanwhile."""

    rate: float
    duration_s: float
    invalid_rate: float
    scrapes: list[Scrape] = field(default_factory=list)
    load_start_s: float = 0.0
    load_end_s: float = 0.0
    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """The run as JSON (``--save``), to draw again without running (``--load``)."""
        return {
            "rate": self.rate,
            "durationS": self.duration_s,
            "invalidRate": self.invalid_rate,
            "loadStartS": self.load_start_s,
            "loadEndS": self.load_end_s,
            "sent": self.sent,
            "failed": dict(self.failed),
            "invalid": dict(self.invalid),
            "scrapes": [
                {
                    "atS": scrape.at_s,
                    "samples": {
                        name: [[dict(labels), value] for labels, value in series.items()]
                        for name, series in scrape.samples.items()
                    },
                }
                for scrape in self.scrapes
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Run:
        return cls(
            rate=float(data["rate"]),
            duration_s=float(data["durationS"]),
            invalid_rate=float(data["invalidRate"]),
            load_start_s=float(data["loadStartS"]),
            load_end_s=float(data["loadEndS"]),
            sent=int(data["sent"]),
            failed=Counter(data["failed"]),
            invalid=Counter(data["invalid"]),
            scrapes=[
                Scrape(
                    float(scrape["atS"]),
                    {
                        name: {frozenset(labels.items()): float(value) for labels, value in series}
                        for name, series in scrape["samples"].items()
                    },
                )
                for scrape in data["scrapes"]
            ],
        )


async def _invalid_queries(target: str, rate: float, duration_s: float, seen: Counter[str]) -> None:
    """Empty queries (INVALID_ARGUMENT) at ``rate`` a second: the error panels' data."""
    if rate <= 0:
        return
    async with grpc.aio.insecure_channel(target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            try:
                await stub.Query(query_pb2.QueryRequest(query=""), timeout=5)
                seen["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                seen[exc.code().name] += 1
            await asyncio.sleep(1 / rate)


async def drive(stack: DevStack, run: Run) -> None:
    """Scrape from the start; after :data:`LEAD_S`, the load; :data:`TAIL_S` more."""
    targets = {}
    for name in ("query", "ingest"):
        port = stack.children[name].metrics_port
        if port is None:
            raise RuntimeError(f"{name} did not say which port serves /metrics")
        # The labels Prometheus would attach to a pod's series.
        targets[name] = (
            f"http://{stack.host}:{port}/metrics",
            {"namespace": NAMESPACE, "pod": name},
        )
    started = time.monotonic()
    finished = asyncio.Event()

    async def scraper() -> None:
        tick = 0
        while True:
            at = time.monotonic() - started
            parts = await asyncio.gather(
                *(asyncio.to_thread(scrape, url, extra) for url, extra in targets.values())
            )
            run.scrapes.append(Scrape(at, merge(parts)))
            if finished.is_set():
                return
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * SCRAPE_INTERVAL_S - time.monotonic()))

    scraping = asyncio.create_task(scraper())
    await asyncio.sleep(LEAD_S)
    run.load_start_s = time.monotonic() - started
    print(
        f"load: {run.rate:g} queries/s and {run.invalid_rate:g} invalid/s "
        f"for {run.duration_s:g} s on {stack.query_target}",
        file=sys.stderr,
    )
    result, _ = await asyncio.gather(
        run_load(stack.query_target, rate=run.rate, duration_s=run.duration_s, warmup_s=0.0),
        _invalid_queries(stack.query_target, run.invalid_rate, run.duration_s, run.invalid),
    )
    run.sent, run.failed = result.sends, result.errors
    run.load_end_s = time.monotonic() - started
    print(f"load done; scraping {TAIL_S:g} s more while ingest catches up", file=sys.stderr)
    await asyncio.sleep(TAIL_S)
    finished.set()
    await scraping


# -- drawing ---------------------------------------------------------------------------------

# Grafana unit -> (multiplier, axis label).
_UNITS: Final = {
    "reqps": (1.0, "requests / s"),
    "s": (1000.0, "milliseconds"),
    "percentunit": (100.0, "%"),
    "short": (1.0, ""),
}


def legend(template: str, labels: Labels) -> str:
    """Grafana's ``{{label}}`` legend, a missing label as empty."""
    values = dict(labels)
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)
    return " ".join(text.split())


def panels(dashboard: Mapping[str, Any]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """The dashboard's time-series panels under the title of their row, in order."""
    rows: list[tuple[str, list[Mapping[str, Any]]]] = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            rows.append((panel.get("title", ""), list(panel.get("panels", []))))
        elif panel.get("type") == "timeseries":
            if not rows:
                rows.append(("", []))
            rows[-1][1].append(panel)
    return [(title, [p for p in found if p.get("type") == "timeseries"]) for title, found in rows]


def panel_series(
    promql: Promql, panel: Mapping[str, Any], times: Sequence[float]
) -> list[tuple[str, list[float], list[float]]]:
    """``(legend, times, values)`` per series of each of the panel's targets;
    NaN and infinite points left out, as Grafana leaves gaps."""
    out = []
    for target in panel.get("targets", []):
        values = promql.evaluate(target["expr"])
        by_series: dict[Labels, tuple[list[float], list[float]]] = {}
        for at, value in zip(times, values, strict=True):
            vector = {frozenset(): value} if isinstance(value, float) else value
            for labels, number in vector.items():
                if math.isfinite(number):
                    xs, ys = by_series.setdefault(labels, ([], []))
                    xs.append(at)
                    ys.append(number)
        template = target.get("legendFormat") or target["expr"][:40]
        for labels in sorted(by_series, key=lambda k: sorted(k)):
            xs, ys = by_series[labels]
            out.append((legend(template, labels), xs, ys))
    return out


def render(run: Run, dashboard: Mapping[str, Any], out: Path) -> None:
    """Every time-series panel of ``dashboard`` over the run's scrapes, one
    grid row per dashboard row, into a PNG at ``out``."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    promql = Promql(
        run.scrapes,
        {"namespace": NAMESPACE, "__rate_interval": f"{RATE_WINDOW_S:g}s"},
    )
    times = [s.at_s - run.load_start_s for s in run.scrapes]
    rows = panels(dashboard)
    columns = max(len(found) for _, found in rows)
    with rc_context(
        {
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.fontsize": 9,
        }
    ):
        figure = Figure(figsize=FIGURE_IN, dpi=FIGURE_DPI, layout="constrained")
        FigureCanvasAgg(figure)
        figure.suptitle(
            f"{dashboard.get('title', 'offpath')} dashboard "
            f"(deploy/grafana/offpath-dashboard.json), rendered from a local run by "
            f"offpath.dev.dashboard: not a Grafana screenshot\n"
            f"each panel's own PromQL evaluated over /metrics of both services scraped every "
            # "\\$": a bare $ starts matplotlib's mathtext.
            f"{SCRAPE_INTERVAL_S:g} s (\\$__rate_interval = {RATE_WINDOW_S:g} s, "
            f"\\$namespace = {NAMESPACE}); shaded: the load",
            fontsize=14,
            fontweight="bold",
            linespacing=1.5,
        )
        grid = figure.subplots(len(rows), columns, squeeze=False)
        for r, (row_title, found) in enumerate(rows):
            for c in range(columns):
                axes = grid[r][c]
                if c >= len(found):
                    axes.set_axis_off()
                    if r == len(rows) - 1 and c == columns - 1:
                        _describe(axes, run)
                    continue
                _panel(axes, promql, found[c], times, run, row_title if c == 0 else "")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    # Lines on white need few colours: a palette of 64 keeps the picture and
    # makes the file a third of the size (the README carries it).
    from PIL import Image

    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=64).save(out, format="PNG", optimize=True)


def _panel(
    axes: Axes,
    promql: Promql,
    panel: Mapping[str, Any],
    times: Sequence[float],
    run: Run,
    row_title: str,
) -> None:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    scale, label = _UNITS.get(unit, (1.0, unit))
    # Whole titles, as the dashboard has them: a long one takes two lines.
    title = textwrap.fill(panel.get("title", ""), width=46)
    axes.set_title(f"{row_title}\n{title}" if row_title else f"\n{title}", loc="left")
    axes.axvspan(0, run.load_end_s - run.load_start_s, color="0.92", zorder=0)
    series = panel_series(promql, panel, times)
    for name, xs, ys in series:
        axes.plot(xs, [y * scale for y in ys], linewidth=1.8, label=name)
    if series:
        axes.legend(loc="upper right", frameon=False)
    else:
        axes.text(0.5, 0.5, "No data", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlim(times[0], times[-1])
    axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds since the load started")
    if label:
        axes.set_ylabel(label)


def _describe(axes: Axes, run: Run) -> None:
    lines = [
        "The run",
        f"QueryService on 127.0.0.1: {run.rate:g} queries/s for {run.duration_s:g} s",
        "(open loop, offpath.client.load.run_load),",
        f"plus {run.invalid_rate:g} empty query/s (INVALID_ARGUMENT).",
    ]
    if run.sent:
        failed = sum(run.failed.values())
        lines.append(f"Answered {run.sent - failed:,} of {run.sent:,};")
    if run.invalid:
        shown = ", ".join(f"{n:,} {code}" for code, n in sorted(run.invalid.items()))
        lines.append(f"invalid queries: {shown}.")
    lines += [
        f"Scraped {len(run.scrapes)} times, {TAIL_S:g} s on after the load",
        "while AnalyticsIngest caught up.",
        "",
        "python -m offpath.dev.dashboard --out FILE",
    ]
    axes.text(0.02, 0.95, "\n".join(lines), va="top", ha="left", fontsize=11, linespacing=1.5)


# -- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m offpath.dev.dashboard",
        description=(
            "Start the local stack, load QueryService, scrape both services' /metrics and "
            "render the Grafana dashboard's time-series panels into a PNG."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="dashboard JSON")
    parser.add_argument("--rate", type=float, default=_DEFAULT_RATE, help="queries per second")
    parser.add_argument(
        "--duration", type=float, default=_DEFAULT_DURATION_S, help="seconds of load"
    )
    parser.add_argument(
        "--invalid-rate",
        type=float,
        default=_DEFAULT_INVALID_RATE,
        help="empty (INVALID_ARGUMENT) queries per second beside the load",
    )
    parser.add_argument("--save", type=Path, help="also write the run's scrapes to this JSON")
    parser.add_argument(
        "--load", type=Path, help="draw a run saved with --save instead of running one"
    )
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000 or not 0 < args.duration <= 600 or args.invalid_rate < 0:
        parser.error("--rate must be in (0, 1000], --duration in (0, 600], --invalid-rate >= 0")
    dashboard = json.loads(args.dashboard.read_text("utf-8"))
    if args.load is not None:
        run = Run.from_json(json.loads(args.load.read_text("utf-8")))
    else:
        run = Run(args.rate, args.duration, args.invalid_rate)
        with tempfile.TemporaryDirectory(prefix="offpath-dashboard-") as logs:
            print(f"starting the local stack (logs in {logs})", file=sys.stderr)
            with DevStack(
                aws_port=0, query_port=0, ingest_port=0, env=STACK_ENV, log_dir=Path(logs)
            ) as stack:
                asyncio.run(drive(stack, run))
        if args.save is not None:
            args.save.write_text(json.dumps(run.to_json()), encoding="utf-8")
    render(run, dashboard, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
