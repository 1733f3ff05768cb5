"""The ``offpath`` command line.

    offpath query "kubernetes"          ask QueryService; prints the answer and event id
    offpath event EVENT_ID [--wait 5]   print a stored event (JSON)
    offpath events [--since 1h]         list recent events
    offpath summary [--since 24h]       totals over a time range
    offpath dlq list [--limit 10]       dead-lettered messages and why (AWS, not gRPC)
    offpath dlq redrive [--limit N]     send dead-lettered messages back to the queue

Targets default to the local ports and can be set with
``OFFPATH_QUERY_TARGET`` / ``OFFPATH_INGEST_TARGET`` or ``--query-target`` /
``--ingest-target``. The ``dlq`` commands talk to SQS directly, configured by
the standard AWS variables and ``OFFPATH_SQS_QUEUE_NAME`` /
``OFFPATH_SQS_DLQ_NAME``. Exit codes: 0 ok, 1 the server (or AWS) answered
with an error, 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf import json_format

from offpath.client.client import DEFAULT_INGEST_TARGET, DEFAULT_QUERY_TARGET, OffpathClient
from offpath.client.dlq import DeadLetterQueue
from offpath.kit.settings import SettingsError
from offpath.kit.sqs import QueueNames

# A command's handler: what it does with the parsed arguments and a client.
Handler = Callable[[argparse.Namespace, OffpathClient], None]

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 1h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _json(message: object) -> str:
    return json_format.MessageToJson(message, indent=2)  # type: ignore[arg-type]


# -- gRPC commands -------------------------------------------------------------------


def _query(args: argparse.Namespace, client: OffpathClient) -> None:
    response = client.query(args.text, args.top_k)
    if args.json:
        print(_json(response))
        return
    print(response.answer)
    for skill in response.matched_skills:
        print(f"  {skill.score:.3f}  {skill.name}")
    ms = response.processing_time.ToNanoseconds() / 1e6
    print(
        f"event {response.event_id}  ({response.model}, {response.token_count} tokens, {ms:.2f} ms)"
    )


def _event(args: argparse.Namespace, client: OffpathClient) -> None:
    stored = (
        client.wait_for_event(args.event_id, timeout=args.wait)
        if args.wait > 0
        else client.get_event(args.event_id)
    )
    print(_json(stored))


def _events(args: argparse.Namespace, client: OffpathClient) -> None:
    now = datetime.now(UTC)
    for item in client.list_events(
        start=now - args.since,
        end=now,
        newest_first=not args.oldest_first,
        limit=args.limit,
    ):
        when = item.occurred_at.ToDatetime(UTC).isoformat(timespec="milliseconds")
        skills = ", ".join(s.name for s in item.matched_skills)
        print(f"{when}  {item.event_id}  {item.status_code:>2}  {item.query!r}  [{skills}]")


def _summary(args: argparse.Namespace, client: OffpathClient) -> None:
    now = datetime.now(UTC)
    print(_json(client.summary(start=now - args.since, end=now)))


# -- dead-letter queue commands (SQS, not gRPC) -----------------------------------------


def _dlq_list(queue: DeadLetterQueue, args: argparse.Namespace) -> None:
    letters = queue.peek(args.limit)
    for letter in letters:
        when = letter.sent_at.isoformat(timespec="seconds") if letter.sent_at else "?"
        events = "undecodable" if letter.events is None else f"{letter.events} events"
        print(
            f"{when}  {letter.message_id}  {events}, {letter.body_bytes} bytes, "
            f"received {letter.receive_count}x\n    reason: {letter.reason}"
        )
    print(f"{len(letters)} message(s) shown from {queue.dlq_url}")


def _dlq_redrive(queue: DeadLetterQueue, args: argparse.Namespace) -> None:
    moved = 0
    for letter in queue.redrive(args.limit):
        moved += 1
        print(f"moved {letter.message_id}  ({letter.reason})")
    print(f"{moved} message(s) moved back to {queue.queue_url}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offpath", description="Query offpath and read its analytics."
    )
    parser.add_argument(
        "--query-target",
        default=os.environ.get("OFFPATH_QUERY_TARGET", DEFAULT_QUERY_TARGET),
        help="QueryService host:port (OFFPATH_QUERY_TARGET)",
    )
    parser.add_argument(
        "--ingest-target",
        default=os.environ.get("OFFPATH_INGEST_TARGET", DEFAULT_INGEST_TARGET),
        help="AnalyticsIngest host:port (OFFPATH_INGEST_TARGET)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per-call deadline, seconds")
    commands = parser.add_subparsers(dest="command", required=True)

    query = commands.add_parser("query", help="ask QueryService")
    query.add_argument("text")
    query.add_argument("--top-k", type=int, default=None)
    query.add_argument("--json", action="store_true", help="print the whole response as JSON")
    query.set_defaults(handler=_query, target="query")

    event = commands.add_parser("event", help="print one stored event")
    event.add_argument("event_id")
    event.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep asking while it is not stored yet",
    )
    event.set_defaults(handler=_event, target="ingest")

    events = commands.add_parser("events", help="list stored events")
    events.add_argument("--since", type=_duration, default=timedelta(hours=1))
    events.add_argument("--limit", type=int, default=20)
    events.add_argument("--oldest-first", action="store_true")
    events.set_defaults(handler=_events, target="ingest")

    summary = commands.add_parser("summary", help="totals over a time range")
    summary.add_argument("--since", type=_duration, default=timedelta(hours=24))
    summary.set_defaults(handler=_summary, target="ingest")

    dlq = commands.add_parser("dlq", help="the dead-letter queue (talks to SQS directly)")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list", help="show dead-lettered messages, leave them")
    dlq_list.add_argument("--limit", type=int, default=10)
    dlq_list.set_defaults(dlq_handler=_dlq_list)
    dlq_redrive = dlq_commands.add_parser("redrive", help="move messages back to the queue")
    dlq_redrive.add_argument("--limit", type=int, default=None, help="default: all")
    dlq_redrive.set_defaults(dlq_handler=_dlq_redrive)
    return parser


def _run_dlq(args: argparse.Namespace) -> None:
    try:
        queue = DeadLetterQueue.from_names(QueueNames.from_env(os.environ))
        args.dlq_handler(queue, args)
    except SettingsError as exc:
        print(f"offpath: {exc}", file=sys.stderr)
        sys.exit(2)
    except (BotoCoreError, ClientError) as exc:
        print(f"offpath: SQS: {exc}", file=sys.stderr)
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "dlq":
        _run_dlq(args)
        return
    handler: Handler = args.handler
    with OffpathClient(args.query_target, args.ingest_target, timeout=args.timeout) as client:
        try:
            handler(args, client)
        except grpc.RpcError as exc:
            code = exc.code()
            target = args.query_target if args.target == "query" else args.ingest_target
            detail = exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                detail = f"cannot reach {target} ({detail}); is `make run` up?"
            print(f"offpath: {code.name}: {detail}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
