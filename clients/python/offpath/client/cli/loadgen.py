"""``offpath load`` (open-loop load on QueryService, the benchmark's own
generator) and ``offpath reconcile`` (which of its event ids were stored)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any, Final, TextIO

import click
import grpc

from offpath.client.aio import AsyncOffpathClient
from offpath.client.channels import open_aio_channel
from offpath.client.cli.app import (
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    CommandError,
    Report,
    Session,
    command,
    exit_code,
)
from offpath.client.load import LoadResult, Watch, percentile, run_load
from offpath.client.reconcile import DEFAULT_CONCURRENCY, read_ids, reconcile

MAX_RATE: Final = 5000.0
MAX_DURATION_S: Final = 3600.0
MAX_REQUESTS: Final = 1_000_000
MAX_CONCURRENCY: Final = 64
MAX_WAIT_S: Final = 600.0
# The progress line is redrawn at most this often.
_PROGRESS_INTERVAL_S: Final = 0.25
# Missing ids printed under the table at most (all of them in JSON).
_SHOWN_MISSING: Final = 20

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    match = _DURATION.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 30s, 5m or 1h")
    seconds = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
    if not 0 < seconds <= MAX_DURATION_S:
        raise click.BadParameter(f"{value!r} must be above 0 and at most 1h")
    return seconds


def _progress(total: int, duration_s: float, out: TextIO) -> Watch:
    """A one-line display on ``out``: sent, answered, failed, time."""

    async def watch(result: LoadResult) -> None:
        started = time.monotonic()
        while True:
            failed = sum(result.errors.values())
            answered = len(result.latencies_ns) - failed
            elapsed = min(time.monotonic() - started, duration_s)
            width = 20
            filled = int(width * result.sends / total) if total else width
            out.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] sent {result.sends}/{total}  "
                f"answered {answered}  failed {failed}  {elapsed:.0f}/{duration_s:.0f} s "
            )
            out.flush()
            await asyncio.sleep(_PROGRESS_INTERVAL_S)

    return watch


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


async def _run_load(session: Session, rate: float, duration_s: float, progress: bool) -> LoadResult:
    settings = session.settings
    target = settings.query_target
    session.calling = target
    channel = open_aio_channel(target, settings)
    try:
        await asyncio.wait_for(channel.channel_ready(), settings.timeout_s)
    except TimeoutError:
        await channel.close(None)
        raise CommandError(
            f"UNAVAILABLE: cannot reach {target} within {settings.timeout_s:g} s; "
            "is `make run` up?",
            EXIT_UNAVAILABLE,
        ) from None
    total = int(rate * duration_s)
    try:
        return await run_load(
            target,
            rate=rate,
            duration_s=duration_s,
            warmup_s=0.0,
            timeout_s=settings.timeout_s,
            channel=lambda: channel,
            watch=_progress(total, duration_s, sys.stderr) if progress else None,
        )
    finally:
        if progress:
            sys.stderr.write("\n")


@click.option(
    "--rate",
    type=click.FloatRange(0.1, MAX_RATE),
    default=10.0,
    show_default=True,
    metavar="PER_SECOND",
    help="queries started per second, on a fixed schedule whatever the replies do",
)
@click.option(
    "--duration",
    default="10s",
    show_default=True,
    metavar="DURATION",
    callback=_duration,
    help="how long, like 500ms, 30s, 5m or 1h (at most 1h)",
)
@click.option(
    "--ids",
    "ids_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    metavar="FILE",
    help="write the event id of every reply to FILE, one a line (for `offpath reconcile`)",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="a progress line on stderr [default: when stderr is a terminal]",
)
def load(
    session: Session, rate: float, duration: float, ids_path: Path | None, progress: bool | None
) -> None:
    """Open-loop load on QueryService: RATE queries a second for DURATION,
    then a latency summary; exits by the most frequent failure's status
    when any query failed (4 when the service is unreachable).

    Uses the benchmark's load generator (offpath.client.load.run_load): each
    latency is timed from the query's scheduled start, so a slow server is
    charged for the queue it causes. Queries cycle through a few sample
    questions. The event ids of the replies go to --ids FILE.

    \b
    Examples:
      offpath load --rate 100 --duration 30s --ids ids.txt
      offpath reconcile ids.txt
    """
    total = int(rate * duration)
    if total < 1:
        raise click.BadParameter("rate x duration is under one query", param_hint="--rate")
    if total > MAX_REQUESTS:
        raise click.BadParameter(
            f"rate x duration is {total} queries, above {MAX_REQUESTS}", param_hint="--rate"
        )
    show_progress = sys.stderr.isatty() if progress is None else progress
    result = asyncio.run(_run_load(session, rate, duration, show_progress))
    if ids_path is not None:
        ids_path.write_text("".join(f"{i}\n" for i in result.event_ids), encoding="utf-8")
    latencies = sorted(result.latencies_ns)
    failed = sum(result.errors.values())
    quantiles = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
    latency_ms = {name: _ms(percentile(latencies, q)) for name, q in quantiles.items()}
    latency_ms["max"] = _ms(latencies[-1]) if latencies else float("nan")
    achieved = result.sends / result.wall_s if result.wall_s else 0.0
    document = {
        "target": session.settings.query_target,
        "rate": rate,
        "durationS": duration,
        "sent": result.sends,
        "answered": result.sends - failed,
        "failed": dict(sorted(result.errors.items())),
        "latencyMs": latency_ms if latencies else None,
        "achievedRate": round(achieved, 2),
        "eventIds": len(result.event_ids),
        "idsFile": str(ids_path) if ids_path is not None else None,
        "generatorLate": result.late,
        "keptUp": result.kept_up,
    }
    footer = []
    if result.late:
        footer.append(
            f"note: the generator started {result.late_share:.1%} of queries over 1 ms late; "
            "the tail is partly its own"
        )
    if not result.kept_up:
        footer.append(f"note: the server answered {result.kept_up_share:.0%} of the offered rate")
    footer.append(
        f"{len(result.event_ids)} event id(s) written to {ids_path}"
        if ids_path is not None
        else "pass --ids FILE to keep the event ids for `offpath reconcile FILE`"
    )
    session.emit(
        Report(
            document=document,
            lines=[
                f"{result.sends} queries at {rate:g}/s to {document['target']} in "
                f"{result.wall_s:.1f} s: {result.sends - failed} answered, {failed} failed"
                + "".join(f"  {code} {n}" for code, n in sorted(result.errors.items()))
            ],
            headers=("LATENCY_MS", *latency_ms) if latencies else (),
            rows=[("", *(f"{v:.2f}" for v in latency_ms.values()))] if latencies else (),
            footer=footer,
        )
    )
    if failed:
        (worst, count), *_ = result.errors.most_common(1)
        raise CommandError(
            f"{failed} of {result.sends} queries failed (most often {worst}: {count})",
            exit_code(grpc.StatusCode[worst]),
        )


@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="GetEvent calls in flight at most (for ids the listing did not find)",
)
@click.option(
    "--wait",
    type=click.FloatRange(0, MAX_WAIT_S),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="keep asking for missing ids this long (events still on their way)",
)
def reconcile_(session: Session, file: TextIO, concurrency: int, wait: float) -> None:
    """Which event ids of FILE (one a line, as `offpath load --ids` writes)
    are stored: delivered, missing, repeated, and the delivery percentage.
    Exits 3 when any id is missing, 2 when a line is not a UUID.

    Reads through AnalyticsIngest's read API: ListEvents over the time ranges
    the ids' UUIDv7 timestamps give (1,000 events a call), then GetEvent for
    each id the listing did not find (a consistent read). Events are stored
    one per id, so the same id stored twice cannot happen; "repeated" counts
    ids that appear more than once in FILE.

    \b
    Examples:
      offpath reconcile ids.txt
      offpath reconcile ids.txt --wait 30 --output json
    """
    ids = read_ids(file)
    session.calling = session.settings.ingest_target

    async def run() -> Any:
        async with AsyncOffpathClient(settings=session.settings) as client:
            return await reconcile(client, ids, concurrency=concurrency, wait_s=wait)

    result = asyncio.run(run())
    repeated = sum(n - 1 for n in result.repeated.values())
    document = {
        "ids": result.ids,
        "distinct": result.distinct,
        "delivered": result.delivered,
        "missing": result.missing,
        "deliveredPercent": result.delivered_percent,
        "repeatedInFile": result.repeated,
        "notUuids": result.invalid,
        "listedTwice": result.listed_twice,
        "listedEvents": result.listed_events,
        "getEventCalls": result.get_calls,
        "listingCutShort": result.listing_cut_short,
    }
    footer = [f"missing: {i}" for i in result.missing[:_SHOWN_MISSING]]
    if len(result.missing) > _SHOWN_MISSING:
        footer.append(f"... and {len(result.missing) - _SHOWN_MISSING} more (--output json)")
    footer.append(
        f"read {result.listed_events} event(s) with ListEvents, {result.get_calls} GetEvent call(s)"
        + (
            " (a ListEvents page hit the deadline: the rest one by one)"
            if result.listing_cut_short
            else ""
        )
    )
    session.emit(
        Report(
            document=document,
            lines=[
                f"{result.delivered_percent:.2f} % delivered "
                f"({result.delivered} of {result.distinct} distinct ids)"
            ],
            headers=("COUNT", "IDS"),
            rows=[
                (result.ids, "read from the file"),
                (result.distinct, "distinct"),
                (result.delivered, "delivered (stored)"),
                (len(result.missing), "missing (GetEvent: NOT_FOUND)"),
                (repeated, "repeated in the file (extra copies)"),
                (len(result.listed_twice), "listed twice by the time index (expected 0)"),
                (len(result.invalid), "lines that are not UUIDs"),
            ],
            footer=footer,
        )
    )
    if result.missing:
        raise CommandError(
            f"{len(result.missing)} of {result.distinct} event(s) missing", EXIT_NOT_FOUND
        )
    if result.invalid:
        raise CommandError(f"{len(result.invalid)} line(s) are not UUIDs", EXIT_INVALID)


def register(root: click.Group) -> None:
    command(root)(load)
    command(root, "reconcile")(reconcile_)
