"""``offpath dlq``: the dead-letter queue, read and redriven over SQS directly.

These commands need boto3 (the services' AWS dependency); it is imported only
when one of them runs, so the rest of the command line works without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import click
from google.protobuf import json_format

from offpath.client.cli.app import (
    EXIT_ERROR,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    CommandError,
    Report,
    Session,
    command,
    global_options,
)

if TYPE_CHECKING:
    from offpath.client.dlq import DeadLetter, DeadLetterQueue, MoveTask

MAX_LIST: Final = 1000
MAX_TASK_WAIT_S: Final = 3600.0
_MISSING_QUEUE: Final = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


@contextmanager
def _queue() -> Iterator[DeadLetterQueue]:
    """The DLQ named by ``OFFPATH_SQS_*``, AWS failures turned into exit codes."""
    try:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            ReadTimeoutError,
        )

        from offpath.client.dlq import DeadLetterQueue
        from offpath.kit.sqs import QueueNames
    except ImportError as exc:
        raise CommandError(
            f"offpath dlq needs boto3, which is not installed ({exc})", EXIT_INVALID
        ) from None
    try:
        yield DeadLetterQueue.from_names(QueueNames.from_env(os.environ))
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise CommandError(f"SQS: {exc}", EXIT_UNAVAILABLE) from None
    except (NoCredentialsError, NoRegionError) as exc:
        raise CommandError(f"SQS: {exc}", EXIT_INVALID) from None
    except ClientError as exc:
        missing = exc.response.get("Error", {}).get("Code") in _MISSING_QUEUE
        raise CommandError(f"SQS: {exc}", EXIT_NOT_FOUND if missing else EXIT_ERROR) from None
    except BotoCoreError as exc:
        raise CommandError(f"SQS: {exc}", EXIT_ERROR) from None


def _letter(letter: DeadLetter) -> dict[str, Any]:
    return {
        "messageId": letter.message_id,
        "reason": letter.reason,
        "sentAt": letter.sent_at.isoformat() if letter.sent_at else None,
        "receiveCount": letter.receive_count,
        "bodyBytes": letter.body_bytes,
        "events": letter.events,
        "batchId": letter.batch_id,
        "sourceMessageId": letter.source_message_id,
        "groupId": letter.group_id,
    }


_HEADERS: Final = ("SENT_AT", "MESSAGE_ID", "EVENTS", "BYTES", "RECEIVES", "REASON")


def _row(letter: DeadLetter) -> tuple[object, ...]:
    return (
        letter.sent_at.isoformat(timespec="seconds") if letter.sent_at else "?",
        letter.message_id,
        "undecodable" if letter.events is None else letter.events,
        letter.body_bytes,
        letter.receive_count,
        letter.reason,
    )


def _receive_note(queue: DeadLetterQueue, shown: int) -> str:
    """What looking did to the messages: SQS counts every receive."""
    state = queue.state()
    consequence = (
        "the DLQ has no redrive policy, so that moves nothing"
        if state.redrive_policy is None
        else f"the DLQ has a redrive policy ({state.redrive_policy}): "
        "enough listings move a message on"
    )
    return (
        f"{shown} message(s) shown from {queue.dlq_url} (about {state.visible} visible, "
        f"{state.in_flight} in flight). SQS cannot look without receiving: each listing "
        f"adds 1 to RECEIVES of what it shows; {consequence}."
    )


@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST),
    default=10,
    show_default=True,
    help="messages to show at most",
)
def list_(session: Session, limit: int) -> None:
    """Show dead-lettered messages and why, leaving them in the queue.

    SQS cannot show a message without receiving it: each listing adds one
    to the receive count (RECEIVES) of every message it shows. The DLQ has no
    redrive policy, so that is all it does; the note under the table says so
    (or names the policy when one was added).

    \b
    Examples:
      offpath dlq list
      offpath dlq list --limit 100 --output json
    """
    with _queue() as queue:
        letters = queue.peek(limit)
        note = _receive_note(queue, len(letters))
    session.emit(
        Report(
            document={
                "dlqUrl": queue.dlq_url,
                "messages": [_letter(x) for x in letters],
                "note": note,
            },
            headers=_HEADERS,
            rows=[_row(x) for x in letters],
            footer=[note],
        )
    )


@click.argument("message_id")
def show(session: Session, message_id: str) -> None:
    """Print one dead-lettered message, decoded, with its reason; exits 3 if
    it is not in the DLQ.

    The body is decoded as an AnalyticsBatch when it is one. Finding the
    message receives it and the messages before it (each receive count goes
    up by one); all are left in the queue.

    \b
    Examples:
      offpath dlq show 5fd3c3a4-...
      offpath dlq show 5fd3c3a4-... --output json
    """
    with _queue() as queue:
        shown = queue.show(message_id)
    if shown is None:
        raise CommandError(
            f"no message {message_id} in {queue.dlq_url} (on a FIFO queue only the first "
            "10 messages of each message group can be reached)",
            EXIT_NOT_FOUND,
        )
    letter = shown.letter
    batch = (
        None
        if shown.batch is None
        else json_format.MessageToDict(shown.batch, always_print_fields_with_no_presence=True)
    )
    document = {**_letter(letter), "batch": batch, "body": None if batch else shown.body}
    rows: list[tuple[str, object]] = [
        ("message_id", letter.message_id),
        ("reason", letter.reason),
        ("sent_at", letter.sent_at.isoformat() if letter.sent_at else "?"),
        ("receive_count", f"{letter.receive_count} (this look included)"),
        ("group_id", letter.group_id or "-"),
        ("source_message_id", letter.source_message_id or "-"),
        ("body_bytes", letter.body_bytes),
    ]
    if shown.batch is None:
        rows.append(("body", repr(shown.body[:200]) + (" ..." if len(shown.body) > 200 else "")))
    else:
        rows += [
            ("batch_id", shown.batch.batch_id),
            ("producer", shown.batch.producer_id or "-"),
            ("events", len(shown.batch.events)),
        ]
        rows += [
            (f"event {e.event_id}", f"{e.service}/{e.method} {e.query!r}")
            for e in shown.batch.events
        ]
    session.emit(
        Report(document=document, headers=("FIELD", "VALUE"), rows=[(k, str(v)) for k, v in rows])
    )


def _task(task: MoveTask | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {
        "handle": task.handle,
        "status": task.status,
        "toMove": task.to_move,
        "moved": task.moved,
        "failureReason": task.failure_reason,
    }


@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="distinct messages to move at most [default: all]",
)
@click.option(
    "--no-move-task",
    is_flag=True,
    help="move messages one by one (receive, send, delete) instead of SQS's move task",
)
@click.option(
    "--wait",
    type=click.FloatRange(0, MAX_TASK_WAIT_S),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="how long to follow SQS's move task before reporting it as running",
)
def redrive(session: Session, limit: int | None, no_move_task: bool, wait: float) -> None:
    """Send what is in the DLQ now back to the analytics queue, once.

    One pass over the messages in the DLQ when it starts, each moved at most
    once. Without --limit it asks SQS to do it (StartMessageMoveTask) and
    follows the task; where the endpoint does not support that (moto, the
    local endpoint) it falls back to receive, send back, delete, and says so.
    A message whose cause was not fixed is dead-lettered again by the
    consumer: the pass recognises it by its content (its event ids, or its
    body) and leaves it in the DLQ rather than moving it again.

    \b
    Examples:
      offpath dlq redrive
      offpath dlq redrive --limit 10 --output json
    """
    with _queue() as queue:
        report = queue.redrive(limit, move_task=not no_move_task, wait_s=wait)
    lines = []
    if report.fallback_reason is not None:
        lines.append(f"StartMessageMoveTask refused ({report.fallback_reason}); moved one by one")
    if report.task is not None and report.task.status != "COMPLETED":
        lines.append(
            f"SQS move task {report.task.status.lower()}"
            + (f": {report.task.failure_reason}" if report.task.failure_reason else "")
            + (f" (handle {report.task.handle})" if report.task.status == "RUNNING" else "")
        )
    footer = [
        f"moved {report.moved} distinct message(s) back to {queue.queue_url} "
        f"(about {report.at_start} in the DLQ at the start; {report.method})"
    ]
    if report.came_back:
        footer.append(
            f"{report.came_back} message(s) with the content of one moved in this pass "
            "(dead-lettered again, its cause not fixed) left in the DLQ"
        )
    if report.over_limit:
        footer.append(f"{report.over_limit} message(s) left in the DLQ by --limit")
    session.emit(
        Report(
            document={
                "queueUrl": queue.queue_url,
                "method": report.method,
                "fallbackReason": report.fallback_reason,
                "atStart": report.at_start,
                "movedCount": report.moved,
                "moved": [_letter(x) for x in report.letters],
                "cameBack": report.came_back,
                "overLimit": report.over_limit,
                "task": _task(report.task),
            },
            lines=lines,
            headers=("MESSAGE_ID", "REASON") if report.letters else (),
            rows=[(x.message_id, x.reason) for x in report.letters],
            footer=footer,
        )
    )


@click.group(epilog="These commands talk to SQS with the standard AWS settings.")
@global_options
def dlq() -> None:
    """The dead-letter queue (talks to SQS directly, not to the services).

    Queues are named by OFFPATH_SQS_QUEUE_NAME / OFFPATH_SQS_DLQ_NAME; region,
    credentials and endpoint come from the standard AWS chain.
    """


def register(root: click.Group) -> None:
    command(dlq, "list")(list_)
    command(dlq)(show)
    command(dlq)(redrive)
    root.add_command(dlq)
