"""Commands over gRPC: ``query`` (QueryService), ``event``, ``events`` and
``summary`` (AnalyticsIngest's read API)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click
from google.protobuf import json_format
from google.protobuf.message import Message

from offpath.client import report as render
from offpath.client.cli.app import Report, Session, command, render_table, since_option
from offpath.client.messages import status_name
from offpath.v1 import analytics_pb2, ingest_pb2

# QueryService's limits (offpath.query.servicer; a test keeps them equal).
MAX_TOP_K: Final = 20
# AnalyticsIngest answers a range of at most this (offpath.ingest.store).
MAX_RANGE: Final = timedelta(days=31)
MAX_EVENTS: Final = 10_000
MAX_WAIT_S: Final = 600.0


def _document(message: Message) -> dict[str, Any]:
    """Proto3 JSON (the contract's field names, camelCase), with fields at
    their default value present, so a program always finds the same keys."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _event_document(event: analytics_pb2.AnalyticsEvent) -> dict[str, Any]:
    return {**_document(event), "status": status_name(event.status_code)}


def _ms(duration: Any) -> str:
    return f"{duration.ToNanoseconds() / 1e6:.2f}"


def _when(timestamp: Any) -> str:
    return str(timestamp.ToDatetime(UTC).isoformat(timespec="milliseconds"))


@click.argument("text")
@click.option(
    "--top-k",
    type=click.IntRange(1, MAX_TOP_K),
    default=None,
    help="how many skills to match [server default: 3]",
)
def query(session: Session, text: str, top_k: int | None) -> None:
    """Ask QueryService; prints the answer, the matched skills and the event id.

    \b
    Examples:
      offpath query "does she know k8s?"
      offpath query terraform --top-k 5 --output json
    """
    response = session.client("query").query(text, top_k)
    session.emit(
        Report(
            document=_document(response),
            lines=[response.answer],
            headers=("SCORE", "SKILL") if response.matched_skills else (),
            rows=[(f"{s.score:.3f}", s.name) for s in response.matched_skills],
            footer=[
                f"event {response.event_id}  ({response.model}, "
                f"{response.token_count} tokens, {_ms(response.processing_time)} ms)"
            ],
        )
    )


@click.argument("event_id")
@click.option(
    "--wait",
    type=click.FloatRange(0, MAX_WAIT_S),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="keep asking while the event is not stored yet (0: ask once)",
)
def event(session: Session, event_id: str, wait: float) -> None:
    """Print one stored event; exits 3 if it is not stored (yet).

    \b
    Examples:
      offpath event 0198c1f0-...            ask once
      offpath event 0198c1f0-... --wait 5   while it is on its way
    """
    client = session.client("ingest")
    stored = (
        client.wait_for_event(event_id, timeout=wait) if wait > 0 else client.get_event(event_id)
    )
    e = stored.event
    document = _document(stored)
    document["event"] = _event_document(e)
    rows = [
        ("event_id", e.event_id),
        ("occurred_at", _when(e.occurred_at)),
        ("ingested_at", _when(stored.ingested_at)),
        ("batch_id", stored.batch_id),
        ("producer", e.producer_id),
        ("method", f"{e.service}/{e.method}"),
        ("status", status_name(e.status_code)),
        ("query", repr(e.query)),
        ("skills", ", ".join(f"{s.name} ({s.score:.3f})" for s in e.matched_skills)),
        ("model", e.model),
        ("tokens", e.token_count),
        ("processing_ms", _ms(e.processing_time)),
        *((f"attribute {k}", v) for k, v in sorted(e.attributes.items())),
    ]
    session.emit(
        Report(
            document=document,
            headers=("FIELD", "VALUE"),
            rows=[(name, str(value) or "-") for name, value in rows],
        )
    )


@since_option("1h", MAX_RANGE)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_EVENTS),
    default=20,
    show_default=True,
    help="events to print at most",
)
@click.option("--oldest-first", is_flag=True, help="oldest first [default: newest first]")
def events(session: Session, since: timedelta, limit: int, oldest_first: bool) -> None:
    """List stored events of a recent time range.

    \b
    Examples:
      offpath events --since 15m
      offpath events --since 7d --limit 1000 --output json
    """
    now = datetime.now(UTC)
    found = list(
        session.client("ingest").list_events(
            start=now - since, end=now, newest_first=not oldest_first, limit=limit
        )
    )
    session.emit(
        Report(
            document={"events": [_event_document(e) for e in found]},
            headers=("OCCURRED_AT", "EVENT_ID", "STATUS", "MS", "QUERY", "SKILLS"),
            rows=[
                (
                    _when(e.occurred_at),
                    e.event_id,
                    status_name(e.status_code),
                    _ms(e.processing_time),
                    repr(e.query),
                    ", ".join(s.name for s in e.matched_skills) or "-",
                )
                for e in found
            ],
            footer=[f"{len(found)} event(s) in the last {since}"],
        )
    )


def summary_document(summary: ingest_pb2.GetSummaryResponse) -> dict[str, Any]:
    """The GetSummary reply as ``--output json`` prints it (summary and report)."""
    return _document(summary)


def _section(title: str, headers: tuple[str, ...], rows: list[tuple[object, ...]]) -> list[str]:
    return ["", title, *(render_table(headers, rows) if rows else ["  (none)"])]


@since_option("24h", MAX_RANGE)
def summary(session: Session, since: timedelta) -> None:
    """Totals over a recent time range, from the rollups: events, errors by
    status code, processing time percentiles, top skills and queries, tokens
    by model, and the buckets the range covers (per bucket in --output json;
    charted by `offpath report`).

    \b
    Examples:
      offpath summary
      offpath summary --since 7d --output json
    """
    now = datetime.now(UTC)
    totals = session.client("ingest").summary(start=now - since, end=now)
    width = render.bucket_width(totals)
    busiest = max(totals.volume, key=lambda b: b.event_count, default=None)
    lines = [
        f"{render.range_text(totals)} (last {render.duration_text(since)}, "
        f"{render.duration_text(width)} buckets)",
        *render.headline(totals),
    ]
    if busiest is not None:
        lines.append(
            f"{len(totals.volume)} bucket(s) with events; the busiest "
            f"{_when(busiest.start_time)} with {busiest.event_count:,}"
        )
    lines += _section(
        "Errors by status code",
        ("COUNT", "STATUS"),
        [(e.count, f"{status_name(e.code)} ({e.code})") for e in totals.errors_by_code],
    )
    lines += _section(
        "Top skills", ("COUNT", "SKILL"), [(s.count, s.name) for s in totals.top_skills]
    )
    queries: list[tuple[object, ...]] = [(q.count, repr(q.text)) for q in totals.top_queries]
    if totals.other_query_count:
        queries.append((totals.other_query_count, "(not counted by text)"))
    lines += _section("Top queries", ("COUNT", "QUERY"), queries)
    lines += _section(
        "Models",
        ("EVENTS", "TOKENS", "MODEL"),
        [(m.event_count, m.token_count, m.model or "(none)") for m in totals.models],
    )
    session.emit(Report(document=summary_document(totals), lines=lines))


def register(root: click.Group) -> None:
    for func in (query, event, events, summary):
        command(root)(func)
