"""The benchmark: one run, every variant side by side, ratios against
analytics off.

For each CPU mode (``pinned``: QueryService alone on core 0, the load
generator, local AWS endpoint and AnalyticsIngest on core 1, so what is
measured is the cost inside the serving process; ``unpinned``: nothing
pinned) it starts the local AWS endpoint and AnalyticsIngest, then each
variant's server in turn under the same open-loop load:

- ``echo``: a bare grpc.aio server with a fixed reply (the floor);
- ``off``: QueryService, analytics off (the baseline for the ratios);
- ``background``: QueryService, analytics fire-and-forget (the product);
- ``background-sqs-slow``: the same, with SQS answering 100 ms late;
- ``background-sqs-down``: the same, with SQS accepting and never answering;
- ``off-contrast`` and ``blocking-contrast``: off, and QueryService sending
  each event to SQS before replying, at the lower ``--contrast-rate``, which
  the local endpoint can absorb one call per request at, so the blocking cost
  shows as latency rather than as time-outs;
- ``blocking``: the blocking variant at the main rate (run last: it
  saturates the endpoint).

Ratios compare each variant with ``off`` at the same rate. Failed requests stay
in the latency distribution with their time to failure.

Results go to ``bench-results/`` as JSON and an SVG chart; a table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from offpath.bench.plot import write_svg
from offpath.client import OffpathClient
from offpath.client.load import LoadResult, histogram, percentile, run_load
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log


@dataclass(frozen=True)
class Variant:
    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    proxy: tuple[str, ...] | None = None  # proxy arguments, after --upstream
    contrast: bool = False  # runs at --contrast-rate, compared with off at that rate


VARIANTS = {
    v.name: v
    for v in (
        Variant("echo", "offpath.bench.echo"),
        Variant("off", "offpath.query", {"OFFPATH_ANALYTICS": "off"}),
        Variant("background", "offpath.query", {"OFFPATH_ANALYTICS": "background"}),
        Variant(
            "background-sqs-slow",
            "offpath.query",
            {"OFFPATH_ANALYTICS": "background"},
            ("--delay-ms", "100"),
        ),
        Variant(
            "background-sqs-down",
            "offpath.query",
            {"OFFPATH_ANALYTICS": "background", "OFFPATH_EMIT_DRAIN_TIMEOUT_S": "2"},
            ("--blackhole",),
        ),
        # The local endpoint cannot absorb one SQS call per request at the main
        # rate, so the blocking contrast is also measured where it can.
        Variant("off-contrast", "offpath.query", {"OFFPATH_ANALYTICS": "off"}, contrast=True),
        Variant(
            "blocking-contrast", "offpath.query", {"OFFPATH_ANALYTICS": "blocking"}, contrast=True
        ),
        # Last: at the main rate it saturates the endpoint and leaves a backlog
        # that would disturb whatever ran after it.
        Variant("blocking", "offpath.query", {"OFFPATH_ANALYTICS": "blocking"}),
    )
}
BASELINE = "off"
FRESHNESS_SAMPLE = 200


def _summary(load: LoadResult) -> dict[str, Any]:
    values = sorted(load.latencies_ns)
    ms = {f"p{q:g}": round(percentile(values, q) / 1e6, 3) for q in (50, 90, 99, 99.9)}
    return {
        **ms,
        "max": round(values[-1] / 1e6, 3) if values else None,
        "mean": round(sum(values) / len(values) / 1e6, 3) if values else None,
        "measured": len(values),
        "errors": dict(load.errors),
        "late_starts": load.late_starts,
        "histogram_ms": histogram(load.latencies_ns),
    }


def _emitter_stats(log_path: Path) -> dict[str, Any] | None:
    """The emitter's final counters, from the server's ``emitter_stopped`` log line."""
    if not log_path.exists():
        return None
    stopped = [r for r in read_log(log_path) if r.get("event") == "emitter_stopped"]
    if not stopped:
        return None
    return {k: stopped[-1][k] for k in ("enqueued", "sent", "requests", "retries", "dropped")}


def _freshness(client: OffpathClient, event_ids: list[str]) -> dict[str, Any]:
    """Reply-to-stored delay: ingested_at minus (occurred_at + processing_time),
    over a sample of the variant's events."""
    step = max(1, len(event_ids) // FRESHNESS_SAMPLE)
    delays: list[int] = []
    missing = 0
    for event_id in event_ids[::step][:FRESHNESS_SAMPLE]:
        try:
            stored = client.wait_for_event(event_id, timeout=10)
        except grpc.RpcError:
            missing += 1
            continue
        replied = (
            stored.event.occurred_at.ToNanoseconds() + stored.event.processing_time.ToNanoseconds()
        )
        delays.append(stored.ingested_at.ToNanoseconds() - replied)
    delays.sort()
    return {
        "sampled": len(delays) + missing,
        "missing": missing,
        "p50_ms": round(percentile(delays, 50) / 1e6, 1) if delays else None,
        "p99_ms": round(percentile(delays, 99) / 1e6, 1) if delays else None,
        "max_ms": round(delays[-1] / 1e6, 1) if delays else None,
    }


def run_mode(
    mode: str, variants: list[Variant], args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    pinned = mode == "pinned"
    all_cpus = set(range(os.cpu_count() or 1))
    serve_cpus, other_cpus = ({0}, all_cpus - {0}) if pinned else (all_cpus, all_cpus)
    os.sched_setaffinity(0, other_cpus)  # this process is the load generator
    results: dict[str, Any] = {}
    stack = DevStack(
        aws_port=0,
        ingest_port=0,
        env={"OFFPATH_INGEST_WAIT_S": "1"},
        log_dir=log_dir / mode,
        cpus=other_cpus,
    )
    stack.start(("local-aws", "ingest"))
    try:
        aws_port = stack.port("local-aws")
        with OffpathClient(ingest_target=stack.ingest_target) as client:
            for variant in variants:
                env = {
                    **stack.aws_env(),
                    **variant.env,
                    "OFFPATH_QUERY_PORT": "0",
                    "OFFPATH_QUERY_METRICS_PORT": "0",
                    "OFFPATH_PRODUCER_ID": f"bench-{mode}-{variant.name}",
                }
                if variant.proxy is not None:
                    proxy = stack.spawn(
                        f"proxy-{variant.name}",
                        "offpath.dev.proxy",
                        {},
                        args=("--upstream", f"127.0.0.1:{aws_port}", *variant.proxy),
                        cpus=other_cpus,
                    )
                    env["AWS_ENDPOINT_URL_SQS"] = f"http://127.0.0.1:{proxy.port}"
                rate = args.contrast_rate if variant.contrast else args.rate
                name = f"server-{variant.name}"
                server = stack.spawn(name, variant.module, env, cpus=serve_cpus)
                print(
                    f"[{mode}] {variant.name}: {rate:g} req/s for "
                    f"{args.warmup:g}+{args.duration:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                load = asyncio.run(
                    run_load(
                        f"127.0.0.1:{server.port}",
                        rate=rate,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                    )
                )
                stack.stop_child(name)
                if variant.proxy is not None:
                    stack.stop_child(f"proxy-{variant.name}")
                entry = {"latency_ms": _summary(load)}
                stats = _emitter_stats(log_dir / mode / f"{name}.log")
                if stats is not None:
                    entry["emitter"] = stats
                    if stats["sent"]:
                        entry["sqs_requests_per_1000_events"] = round(
                            1000 * stats["requests"] / stats["sent"], 2
                        )
                if variant.name in ("background", "blocking-contrast") and load.event_ids:
                    entry["freshness"] = _freshness(client, load.event_ids)
                entry["rate"] = rate
                results[variant.name] = entry
    finally:
        stack.stop()
    for variant in variants:
        baseline = results.get("off-contrast" if variant.contrast else BASELINE)
        if baseline is None:
            continue
        base = baseline["latency_ms"]
        lat = results[variant.name]["latency_ms"]
        results[variant.name]["ratio_vs_off"] = {
            q: round(lat[q] / base[q], 3) if lat[q] and base[q] else None for q in ("p50", "p99")
        }
    return results


def _table(report: dict[str, Any]) -> str:
    lines = []
    head = (
        f"{'mode':9} {'variant':21} {'req/s':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} "
        f"{'errors':>6} {'p50/off':>8} {'p99/off':>8} {'sqs/1k':>7} {'fresh p99':>9}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for mode, variants in report["modes"].items():
        for name, entry in variants.items():
            lat = entry["latency_ms"]
            ratio = entry.get("ratio_vs_off", {})
            fresh = entry.get("freshness", {}).get("p99_ms")
            sqs = entry.get("sqs_requests_per_1000_events")
            lines.append(
                f"{mode:9} {name:21} {entry['rate']:5g} {lat['p50']:8.2f} {lat['p90']:8.2f} "
                f"{lat['p99']:8.2f} "
                f"{lat['p99.9']:8.2f} {sum(lat['errors'].values()):6d} "
                f"{_fmt(ratio.get('p50')):>8} {_fmt(ratio.get('p99')):>8} "
                f"{_fmt(sqs):>7} {_fmt(fresh, 'ms'):>9}"
            )
    lines.append(
        "latencies in ms from the scheduled start (open loop); "
        "sqs/1k = SQS requests per 1,000 events sent; fresh = reply to stored"
    )
    return "\n".join(lines)


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None or value != value else f"{value:g}{unit}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="offpath-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second offered")
    parser.add_argument(
        "--contrast-rate",
        type=float,
        default=50.0,
        help="requests per second for the *-contrast variants (blocking vs off)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per variant")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--modes", default="pinned,unpinned", help="pinned, unpinned or both")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    try:
        variants = [VARIANTS[name] for name in args.variants.split(",") if name]
    except KeyError as exc:
        parser.error(f"unknown variant {exc}; choose from {', '.join(VARIANTS)}")
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("pinned", "unpinned") for m in modes):
        parser.error("--modes takes pinned and/or unpinned")
    if "pinned" in modes and (os.cpu_count() or 1) < 2:
        parser.error("pinned mode needs at least 2 cores; use --modes unpinned")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "grpcio": grpc.__version__,
        },
        "load": {
            "rate": args.rate,
            "contrast_rate": args.contrast_rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "open_loop": True,
        },
        "modes": {},
    }
    started = time.monotonic()
    for mode in modes:
        report["modes"][mode] = run_mode(mode, variants, args, run_dir / "logs")
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    (run_dir / "bench.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_svg(report, run_dir / "bench.svg")
    print(_table(report))
    print(f"\nresults: {run_dir / 'bench.json'}  chart: {run_dir / 'bench.svg'}")


if __name__ == "__main__":
    main()
