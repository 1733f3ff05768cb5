"""From a benchmark's runs to its figures: per-variant medians, the cells
of the contract, the figures without a goal, the printed table and the
README's table.

Everything here reads the JSON the benchmark writes (plain dicts), so the
README can be regenerated from any bench.json without running anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from offpath.bench.goals import GOALS, Cell, Figure, RoundValue, evaluate, measure
from offpath.bench.plan import BASELINE, ECHO, VARIANTS
from offpath.bench.stats import difference_per, median, ratio

Run = dict[str, Any]
Getter = Callable[[Run | None], float | None]

# Variants of the product whose cells are all reported (the default sender
# first), and the fault variants with the one cell each of them tests.
_PRODUCT = (
    "background",
    "background-thread",
    "background-process",
    "background-one-core",
    "background-trailer-errors",
)
_FAULTS = {"background-sqs-slow": "p99_sqs_slow", "background-sqs-down": "p99_sqs_down"}


def _get(run: Run | None, *path: str) -> float | None:
    value: Any = run
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _pairs(
    phase: dict[str, Any], variant: str, baseline: str = BASELINE
) -> Iterator[tuple[Run | None, Run | None]]:
    """(variant's run, baseline's run) in each round."""
    for rnd in phase["rounds"]:
        runs = rnd["runs"]
        yield runs.get(variant), runs.get(baseline)


def _one_worker(variant: str) -> str | None:
    """The same server with one worker, for a variant with several."""
    known = VARIANTS.get(variant)
    return known.one_worker if known is not None else None


def _ratio_rounds(
    phase: dict[str, Any], variant: str, get: Getter, baseline: str = BASELINE
) -> list[RoundValue]:
    """``variant`` over ``baseline`` (off unless named) within each round."""
    values = []
    for run, base in _pairs(phase, variant, baseline):
        if run is None:
            continue
        disturbed = run.get("disturbed") or (base or {}).get("disturbed")
        values.append(RoundValue(ratio(get(run), get(base)), disturbed))
    return values


def _own_rounds(phase: dict[str, Any], variant: str, get: Getter) -> list[RoundValue]:
    return [
        RoundValue(get(run), run.get("disturbed"))
        for run, _ in _pairs(phase, variant)
        if run is not None
    ]


def _cpu_rounds(
    phase: dict[str, Any], variant: str, which: str = "serving_ns", baseline: str = BASELINE
) -> list[RoundValue]:
    """CPU per event over ``baseline``'s (off unless named), within each
    round, in µs: of the processes that may run on the serving core
    (``serving_ns``), or of the server's whole tree wherever it ran
    (``total_ns``)."""
    values = []
    for run, base in _pairs(phase, variant, baseline):
        if run is None:
            continue
        per = difference_per(
            _get(run, "cpu", which),
            int(_get(run, "cpu", "events") or 0),
            _get(base, "cpu", which),
            int(_get(base, "cpu", "events") or 0),
        )
        disturbed = run.get("disturbed") or (base or {}).get("disturbed")
        values.append(RoundValue(None if per is None else per / 1000, disturbed))
    return values


def _p99(run: Run | None) -> float | None:
    return _get(run, "latency_ms", "p99")


def _p999(run: Run | None) -> float | None:
    return _get(run, "latency_ms", "p99.9")


def _loop_lag(run: Run | None) -> float | None:
    return _get(run, "server", "loop_lag", "p99_ms")


def _burst(run: Run | None) -> float | None:
    """The longest analytics burst on the serving core, when known; when a
    part was not logged, only if the known parts already miss the goal."""
    burst = (run or {}).get("server", {}).get("burst", {})
    worst = _get(run, "server", "burst", "max_ms")
    if worst is None:
        return None
    return worst if burst.get("complete") or worst > GOALS["burst"].threshold else None


def _present(phase: dict[str, Any], variant: str) -> bool:
    return any(variant in rnd["runs"] for rnd in phase["rounds"])


def _burst_note(phase: dict[str, Any], variant: str) -> str:
    for rnd in phase["rounds"]:
        missing = rnd["runs"].get(variant, {}).get("server", {}).get("burst", {}).get("missing")
        if missing:
            return f"{missing}: a lower bound"
    return ""


def cells_for_mode(mode: str, result: dict[str, Any]) -> list[Cell]:
    """Every goal the mode's phases measured, for every variant they ran."""
    phases = result["phases"]
    unavailable: dict[str, str] = result.get("unavailable", {})
    cells: list[Cell] = []
    latency = phases.get("latency")
    if latency is not None:
        for variant in _PRODUCT:
            if variant in unavailable:
                cells.append(
                    evaluate("p99", variant, mode, [], f"not available: {unavailable[variant]}")
                )
                continue
            if not _present(latency, variant):
                continue
            cells += [
                evaluate("p99", variant, mode, _ratio_rounds(latency, variant, _p99)),
                evaluate("p999", variant, mode, _ratio_rounds(latency, variant, _p999)),
                evaluate("loop_lag", variant, mode, _ratio_rounds(latency, variant, _loop_lag)),
                evaluate("cpu_per_event", variant, mode, _cpu_rounds(latency, variant)),
                evaluate(
                    "burst",
                    variant,
                    mode,
                    _own_rounds(latency, variant, _burst),
                    _burst_note(latency, variant),
                ),
                evaluate(
                    "sqs_per_1000",
                    variant,
                    mode,
                    _own_rounds(latency, variant, lambda r: _get(r, "sqs", "per_1000_events")),
                ),
            ]
        for variant, goal in _FAULTS.items():
            if variant in unavailable:
                cells.append(
                    evaluate(goal, variant, mode, [], f"not available: {unavailable[variant]}")
                )
            elif _present(latency, variant):
                cells.append(evaluate(goal, variant, mode, _ratio_rounds(latency, variant, _p99)))
    freshness = phases.get("freshness")
    if freshness is not None:
        for variant in _PRODUCT:
            if variant not in unavailable and _present(freshness, variant):
                cells.append(
                    evaluate(
                        "freshness",
                        variant,
                        mode,
                        _own_rounds(freshness, variant, lambda r: _get(r, "freshness", "p99_s")),
                    )
                )
    for phase_name, goal, get in (
        ("max_qps", "max_qps", lambda r: _get(r, "qps")),
        ("at_max", "p99_at_max", _p99),
    ):
        phase = phases.get(phase_name)
        if phase is None:
            continue
        for variant in _PRODUCT:
            if variant in unavailable or not _present(phase, variant):
                continue
            note = f"at {phase['rate']:g} req/s" if phase_name == "at_max" else ""
            cells.append(evaluate(goal, variant, mode, _ratio_rounds(phase, variant, get), note))
    return cells


def _qps(run: Run | None) -> float | None:
    return _get(run, "qps")


def _idlest_worker(run: Run | None) -> float | None:
    """The least busy worker's CPU (a share of one core): near 0 when the
    kernel gave it no connection."""
    shares = ((run or {}).get("cpu") or {}).get("worker_busy_shares") or []
    values = [float(v) for v in shares if isinstance(v, int | float)]
    return min(values) if values else None


def _connections(phase: dict[str, Any]) -> str:
    channels = phase.get("channels") or 1
    each = phase["concurrency"] // channels
    return f"{channels} connections, {each} in flight on each"


def figures_for_mode(mode: str, result: dict[str, Any]) -> list[Figure]:
    """The figures without a goal: what each layer of offpath's request path
    costs over the bare echo server, and multi-process serving's max QPS
    gain per analytics mode (2 workers over 1 worker within each round)."""
    unavailable: dict[str, str] = result.get("unavailable", {})
    figures = _cost_figures(mode, result["phases"].get("cost"), unavailable)
    phase = result["phases"].get("workers")
    if phase is None:
        return figures
    shared = set(result.get("serving_cpus", [])) & set(result.get("other_cpus", []))
    note = _connections(phase) + (
        f"; load generator on the same {len(shared)} cores" if shared else ""
    )
    for variant in phase["variants"]:
        one = _one_worker(variant)
        if one is None:
            continue
        missing = [v for v in (variant, one) if v in unavailable]
        if missing:
            why = "; ".join(f"{v} not available: {unavailable[v]}" for v in missing)
            figures.append(measure("workers_qps", one, mode, [], why))
        elif _present(phase, variant):
            figures.append(
                measure("workers_qps", one, mode, _ratio_rounds(phase, variant, _qps, one), note)
            )
    return figures


def _cost_figures(
    mode: str, phase: dict[str, Any] | None, unavailable: dict[str, str]
) -> list[Figure]:
    """Serving-core CPU per request of each echo layer over the bare echo
    server's, within each round."""
    if phase is None:
        return []
    figures = []
    for variant in phase["variants"]:
        if variant == ECHO:
            continue
        if variant in unavailable:
            why = f"not available: {unavailable[variant]}"
            figures.append(measure("layer_cpu", variant, mode, [], why))
        elif _present(phase, variant):
            rounds = _cpu_rounds(phase, variant, baseline=ECHO)
            figures.append(measure("layer_cpu", variant, mode, rounds, _connections(phase)))
    return figures


# -- per-variant medians ---------------------------------------------------------

_COLUMNS: dict[str, Getter] = {
    "p50_ms": lambda r: _get(r, "latency_ms", "p50"),
    "p99_ms": _p99,
    "p99.9_ms": _p999,
    "qps": _qps,
    "late_share": lambda r: _get(r, "generator", "late_share"),
    "generator_cpu_share": lambda r: _get(r, "generator", "cpu_share"),
    "server_loop_lag_p99_ms": _loop_lag,
    "serving_cpu_us_per_event": lambda r: _get(r, "cpu", "serving_us_per_event"),
    "serving_busy_share": lambda r: _get(r, "cpu", "serving_busy_share"),
    "main_thread_us_per_event": lambda r: _get(r, "cpu", "main_thread_us_per_event"),
    "other_threads_us_per_event": lambda r: _get(r, "cpu", "other_threads_us_per_event"),
    "sender_cpu_us_per_event": lambda r: _get(r, "cpu", "children_us_per_event"),
    "foreign_serving_share": lambda r: _get(r, "machine", "foreign_serving_share"),
    "sqs_per_1000_events": lambda r: _get(r, "sqs", "per_1000_events"),
    "freshness_p99_s": lambda r: _get(r, "freshness", "p99_s"),
    "burst_max_ms": lambda r: _get(r, "server", "burst", "max_ms"),
    "worker_busy_min": lambda r: _idlest_worker(r),
}


# Columns that describe one serving process (its threads, its sender): with
# several workers, the server's root is their supervisor, and its children
# are the workers, so they would say something else.
_ONE_PROCESS = frozenset(
    {"main_thread_us_per_event", "other_threads_us_per_event", "sender_cpu_us_per_event"}
)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per phase and variant: medians over the rounds (disturbed ones
    included: the cells are where they are left out), and ratios against
    off within each round."""
    summary: dict[str, Any] = {}
    for name, phase in result["phases"].items():
        rows: dict[str, Any] = {}
        for variant in phase["variants"]:
            runs = [rnd["runs"][variant] for rnd in phase["rounds"] if variant in rnd["runs"]]
            if not runs:
                continue
            row: dict[str, Any] = {"rounds": len(runs)}
            row["disturbed"] = sum(1 for r in runs if r.get("disturbed"))
            several = any((_get(r, "server", "workers") or 1) > 1 for r in runs)
            for column, get in _COLUMNS.items():
                if several and column in _ONE_PROCESS:
                    continue
                value = median([get(r) for r in runs])
                if value is not None:
                    row[column] = round(value, 4)
            for column, get in (("p99_ratio", _p99), ("p99.9_ratio", _p999)):
                value = median([v.value for v in _ratio_rounds(phase, variant, get)])
                if value is not None:
                    row[column] = round(value, 4)
            qps = median([v.value for v in _ratio_rounds(phase, variant, _qps)])
            if qps is not None:
                row["qps_ratio"] = round(qps, 4)
            if (one := _one_worker(variant)) is not None:
                gain = median([v.value for v in _ratio_rounds(phase, variant, _qps, one)])
                if gain is not None:
                    row["qps_per_one_worker"] = round(gain, 4)
            if variant != BASELINE:
                for key, which in (
                    ("serving_cpu_us_per_event_over_off", "serving_ns"),
                    ("total_cpu_us_per_event_over_off", "total_ns"),
                ):
                    cpu = median([v.value for v in _cpu_rounds(phase, variant, which)])
                    if cpu is not None:
                        row[key] = round(cpu, 2)
            senders = sorted(
                {
                    str(s)
                    for r in runs
                    if (s := r.get("server", {}).get("emitter", {}).get("sender"))
                }
            )
            if senders:
                row["sender"] = ",".join(senders)
            errors = sum(sum(r.get("errors", {}).values()) for r in runs)
            row["errors"] = errors
            rows[variant] = row
        summary[name] = {"rate": phase.get("rate"), "rows": rows}
    return summary


# -- text ---------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _verdict(cell: dict[str, Any]) -> str:
    return f"{cell['verdict']} ({cell['detail']})" if cell["detail"] else cell["verdict"]


def _rounds_text(cell: dict[str, Any]) -> str:
    return " ".join(
        _fmt(r["value"]) + ("*" if r["disturbed"] else "")
        for r in cell["rounds"]
        if r["value"] is not None
    )


def _cell_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The cells as rows under their header (for the terminal and the README)."""
    rows: list[tuple[str, ...]] = [
        ("mode", "goal", "variant", "value", "target", "rounds", "verdict")
    ]
    for cell in report["cells"]:
        rows.append(
            (
                cell["mode"],
                cell["title"],
                cell["variant"],
                _fmt(cell["value"]),
                cell["target"],
                _rounds_text(cell),
                _verdict(cell),
            )
        )
    return rows


def cells_table(report: dict[str, Any]) -> str:
    return _aligned(_cell_rows(report))


_DETAIL = (
    ("sender", "sender"),
    ("p50", "p50_ms"),
    ("p99", "p99_ms"),
    ("p99.9", "p99.9_ms"),
    ("p99/off", "p99_ratio"),
    ("p99.9/off", "p99.9_ratio"),
    ("req/s", "qps"),
    ("qps/off", "qps_ratio"),
    ("qps/1 worker", "qps_per_one_worker"),
    ("idlest worker", "worker_busy_min"),
    ("gen late", "late_share"),
    ("gen cpu", "generator_cpu_share"),
    ("lag p99", "server_loop_lag_p99_ms"),
    ("cpu µs/ev", "serving_cpu_us_per_event"),
    ("Δ vs off", "serving_cpu_us_per_event_over_off"),
    ("all Δ", "total_cpu_us_per_event_over_off"),
    ("loop µs/ev", "main_thread_us_per_event"),
    ("threads µs/ev", "other_threads_us_per_event"),
    ("child µs/ev", "sender_cpu_us_per_event"),
    ("sqs/1k", "sqs_per_1000_events"),
    ("fresh p99 s", "freshness_p99_s"),
    ("errors", "errors"),
    ("disturbed", "disturbed"),
)


# The README's medians tables: fewer columns (the JSON has every one).
_README_DETAIL = tuple(
    (h, k)
    for h, k in _DETAIL
    if k
    not in (
        "generator_cpu_share",
        "main_thread_us_per_event",
        "other_threads_us_per_event",
    )
)


def _figure_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("mode", "figure", "variant", "value", "rounds", "detail")]
    for figure in report.get("figures", []):
        value = _fmt(figure["value"]) if figure["value"] is not None else figure["verdict"]
        rows.append(
            (
                figure["mode"],
                figure["title"],
                figure["variant"],
                value,
                _rounds_text(figure),
                figure["detail"],
            )
        )
    return rows


FIGURES_HEADING = (
    "Measured, no goal in the contract. Layers: the bare echo server "
    "(offpath.bench.echo) with one more piece of offpath's request path each, closed "
    "loop, CPU per request over bare echo's in the same round. Workers: QueryService "
    "with OFFPATH_QUERY_WORKERS=2 over the same server with 1, each round; unpinned, so "
    "the load generator, one process, shares the cores with the workers:"
)


def figures_table(report: dict[str, Any]) -> str:
    return _aligned(_figure_rows(report))


def detail_table(summary: dict[str, Any]) -> str:
    """One phase's medians, with only the columns that phase has."""
    rows = summary["rows"]
    columns = [(h, k) for h, k in _DETAIL if any(k in row for row in rows.values())]
    lines = [("variant", *(h for h, _ in columns))]
    for variant, row in rows.items():
        lines.append((variant, *(_fmt(row.get(k)) for _, k in columns)))
    return _aligned(lines)


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _phase_heading(mode: str, name: str, phase: dict[str, Any]) -> str:
    if not phase.get("concurrency"):
        load = f"open loop, {phase['rate']:g} req/s"
    elif (phase.get("channels") or 1) > 1:
        load = f"closed loop, {_connections(phase)}"
    else:
        load = f"closed loop, {phase['concurrency']} in flight"
    return (
        f"{mode} / {name}: {load}, {phase['warmup_s']:g} s warm-up + "
        f"{phase['duration_s']:g} s measured, {len(phase['rounds'])} rounds"
    )


def table(report: dict[str, Any]) -> str:
    """What ``make bench`` prints: the cells first, then the medians behind them."""
    out = [
        f"offpath bench, profile {report['profile']}: {report['rounds']} rounds per phase, "
        f"order rotated per round; values are medians of per-round figures "
        f"(* = a disturbed round, left out of latency figures); took {report.get('elapsed_s')} s"
        + (f"; phases {', '.join(only)} only" if (only := report.get("only_phases")) else ""),
    ]
    if report["cells"]:
        out += ["", cells_table(report)]
    if report.get("figures"):
        out += ["", FIGURES_HEADING, figures_table(report)]
    for mode, result in report["modes"].items():
        out.append("")
        cores = result["serving_cpus"]
        out.append(
            f"{mode}: QueryService on cores {cores}, load generator and helpers "
            f"on {result['other_cpus']} (helpers at nice {result['helpers_nice']}); "
            f"default sender: {result.get('default_sender') or 'unknown'}"
        )
        for variant, why in {**result.get("duplicates", {}), **result["unavailable"]}.items():
            out.append(f"  {variant}: {why}")
        for name, phase in result["phases"].items():
            out += ["", _phase_heading(mode, name, phase), detail_table(result["summary"][name])]
    out += [
        "",
        "latencies in ms from the scheduled start (open loop); gen late = share of sends "
        "started > 1 ms late; lag = server event-loop lag; cpu µs/ev = CPU of the server's "
        "processes that may run on the serving core, per request (Δ: over off's in the same "
        "round; all Δ: the server and its sender process wherever they ran); loop / threads "
        "= the server's event-loop thread / its other threads; child = its sender process, "
        "wherever it runs; sqs/1k = SQS requests per 1,000 events sent; fresh = reply to "
        "readable; qps/1 worker = req/s over the same server with one worker in the same "
        "round; idlest worker = the least busy worker's CPU as a share of one core",
    ]
    return "\n".join(out)


# -- README -------------------------------------------------------------------------

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def _md(rows: list[tuple[str, ...]]) -> str:
    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0]), *map(line, rows[1:])])


def readme_block(report: dict[str, Any], source: str) -> str:
    """The README's results: the cells, then the latency medians, as Markdown."""
    machine = report["machine"]
    lines = [
        f"From `{source}` (profile {report['profile']}, {report['rounds']} rounds, "
        f"{report['started']}, {machine['cpus']} cores, Python {machine['python']}, "
        f"grpcio {machine['grpcio']}). Values are medians of per-round figures; "
        "`*` marks a disturbed round, left out of the latency figures."
        + (f" Phases {', '.join(only)} only." if (only := report.get("only_phases")) else ""),
    ]
    if report["cells"]:
        lines += ["", _md(_cell_rows(report))]
    if report.get("figures"):
        lines += ["", FIGURES_HEADING, "", _md(_figure_rows(report))]
    for mode, result in report["modes"].items():
        for name, phase in result["phases"].items():
            summary = result["summary"][name]
            columns = [
                (h, k) for h, k in _README_DETAIL if any(k in r for r in summary["rows"].values())
            ]
            table_rows = [("variant", *(h for h, _ in columns))]
            for variant, row in summary["rows"].items():
                table_rows.append((variant, *(_fmt(row.get(k)) for _, k in columns)))
            lines += ["", _phase_heading(mode, name, phase) + ":", "", _md(table_rows)]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between the bench markers replaced by ``block``."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"the README needs {BEGIN} and, after it, {END}")
    return text[: start + len(BEGIN)] + "\n" + block.rstrip("\n") + "\n" + text[end:]
