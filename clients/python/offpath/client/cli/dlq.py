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
    from offpath.client.dlq import DeadLetter, DeadLetterQueue

MAX_LIST: Final = 1000
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


@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST),
    default=10,
    show_default=True,
    help="messages to show at most",
)
def list_(session: Session, limit: int) -> None:
    """Show dead-lettered messages and why, leaving them in the queue.

    \b
    Examples:
      offpath dlq list
      offpath dlq list --limit 100 --output json
    """
    with _queue() as queue:
        letters = queue.peek(limit)
    session.emit(
        Report(
            document={"dlqUrl": queue.dlq_url, "messages": [_letter(x) for x in letters]},
            headers=_HEADERS,
            rows=[_row(x) for x in letters],
            footer=[f"{len(letters)} message(s) shown from {queue.dlq_url}"],
        )
    )


@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="messages to move at most [default: all]",
)
def redrive(session: Session, limit: int | None) -> None:
    """Send dead-lettered messages back to the analytics queue.

    Each message is deleted from the DLQ only after its send succeeded; one
    whose cause was not fixed comes back.

    \b
    Examples:
      offpath dlq redrive --limit 10
    """
    with _queue() as queue:
        moved = list(queue.redrive(limit))
    session.emit(
        Report(
            document={"queueUrl": queue.queue_url, "moved": [_letter(x) for x in moved]},
            headers=("MESSAGE_ID", "REASON") if moved else (),
            rows=[(x.message_id, x.reason) for x in moved],
            footer=[f"{len(moved)} message(s) moved back to {queue.queue_url}"],
        )
    )


@click.group(epilog="Both commands talk to SQS with the standard AWS settings.")
@global_options
def dlq() -> None:
    """The dead-letter queue (talks to SQS directly, not to the services).

    Queues are named by OFFPATH_SQS_QUEUE_NAME / OFFPATH_SQS_DLQ_NAME; region,
    credentials and endpoint come from the standard AWS chain.
    """


def register(root: click.Group) -> None:
    command(dlq, "list")(list_)
    command(dlq)(redrive)
    root.add_command(dlq)
