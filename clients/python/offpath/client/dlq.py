"""Looking into the dead-letter queue and sending its messages back.

Two kinds of message land there: those AnalyticsIngest dead-lettered itself
(they carry the reason in ``offpath-dlq-reason``) and those SQS moved after
``maxReceiveCount`` failed receives (no reason: processing kept failing,
typically DynamoDB was unavailable). ``redrive`` sends messages back to the
analytics queue and deletes them from the DLQ only once the send succeeded;
messages whose cause was not fixed will come back.

On a FIFO DLQ, SQS returns at most one receive's worth (10) per message group
until those are deleted, so ``peek`` shows up to 10 messages per group.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from offpath.kit.aws import sqs_client
from offpath.kit.sqs import (
    REASON_ATTRIBUTE,
    PoisonMessage,
    QueueNames,
    QueueUrlClient,
    decode_message,
    fifo_fields,
    queue_url,
    without_dead_letter_attributes,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        ChangeMessageVisibilityRequestTypeDef,
        DeleteMessageRequestTypeDef,
        EmptyResponseMetadataTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
        SendMessageRequestTypeDef,
        SendMessageResultTypeDef,
    )


class DlqClient(QueueUrlClient, Protocol):
    """The SQS calls the DLQ tool makes (boto3's SQS client has them)."""

    def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef: ...

    def send_message(
        self, **kwargs: Unpack[SendMessageRequestTypeDef]
    ) -> SendMessageResultTypeDef: ...

    def delete_message(
        self, **kwargs: Unpack[DeleteMessageRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef: ...

    def change_message_visibility(
        self, **kwargs: Unpack[ChangeMessageVisibilityRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef: ...

    def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef: ...


_PEEK_VISIBILITY_S = 30
REDRIVEN_BY_SQS = "(moved by SQS after maxReceiveCount receives)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter queue."""

    message_id: str
    reason: str
    sent_at: datetime | None
    receive_count: int
    body_bytes: int
    events: int | None  # None when the body does not decode
    batch_id: str | None


def _describe(message: dict[str, Any]) -> DeadLetter:
    attributes = message.get("MessageAttributes", {})
    reason = attributes.get(REASON_ATTRIBUTE, {}).get("StringValue") or REDRIVEN_BY_SQS
    system = message.get("Attributes", {})
    sent_ms = system.get("SentTimestamp")
    events: int | None = None
    batch_id: str | None = None
    try:
        batch = decode_message(message.get("Body", ""), attributes)
    except PoisonMessage:
        pass
    else:
        events, batch_id = len(batch.events), batch.batch_id
    return DeadLetter(
        message_id=message["MessageId"],
        reason=reason,
        sent_at=datetime.fromtimestamp(int(sent_ms) / 1000, UTC) if sent_ms else None,
        receive_count=int(system.get("ApproximateReceiveCount", 0)),
        body_bytes=len(message.get("Body", "").encode()),
        events=events,
        batch_id=batch_id,
    )


class DeadLetterQueue:
    """The DLQ and the queue it belongs to, by URL."""

    def __init__(self, sqs: DlqClient, *, dlq_url: str, queue_url: str) -> None:
        self._sqs = sqs
        self.dlq_url = dlq_url
        self.queue_url = queue_url

    @classmethod
    def from_names(cls, names: QueueNames, sqs: DlqClient | None = None) -> DeadLetterQueue:
        client = sqs or sqs_client()
        return cls(
            client,
            dlq_url=queue_url(client, names.dlq),
            queue_url=queue_url(client, names.queue),
        )

    def _receive(self, visibility_s: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.dlq_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=visibility_s,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=[
                "SentTimestamp",
                "ApproximateReceiveCount",
                "MessageGroupId",
            ],
        )
        return list(response.get("Messages", []))  # type: ignore[arg-type]

    def peek(self, limit: int = 10) -> list[DeadLetter]:
        """Up to ``limit`` messages, left in the queue (made visible again)."""
        seen: dict[str, dict[str, Any]] = {}
        handles: list[str] = []
        while len(seen) < limit:
            batch = [m for m in self._receive(_PEEK_VISIBILITY_S) if m["MessageId"] not in seen]
            if not batch:
                break
            for message in batch:
                seen[message["MessageId"]] = message
                handles.append(message["ReceiptHandle"])
        for start in range(0, len(handles), 10):
            self._sqs.change_message_visibility_batch(
                QueueUrl=self.dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                    for i, handle in enumerate(handles[start : start + 10])
                ],
            )
        return [_describe(m) for m in list(seen.values())[:limit]]

    def redrive(self, limit: int | None = None) -> Iterator[DeadLetter]:
        """Send messages back to the analytics queue, deleting each from the
        DLQ after its send succeeded; yields what was moved."""
        moved = 0
        while limit is None or moved < limit:
            messages = self._receive(_PEEK_VISIBILITY_S)
            if not messages:
                return
            for message in messages:
                if limit is not None and moved >= limit:
                    # Not moved: make it visible again for the next run.
                    self._sqs.change_message_visibility(
                        QueueUrl=self.dlq_url,
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=0,
                    )
                    continue
                self._sqs.send_message(
                    QueueUrl=self.queue_url,
                    MessageBody=message["Body"],
                    MessageAttributes=without_dead_letter_attributes(
                        message.get("MessageAttributes", {})
                    ),
                    **fifo_fields(
                        self.queue_url,
                        group_id=message.get("Attributes", {}).get("MessageGroupId") or "redrive",
                        dedup_id=f"redrive-{message['MessageId']}",
                    ),
                )
                self._sqs.delete_message(
                    QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"]
                )
                moved += 1
                yield _describe(message)
