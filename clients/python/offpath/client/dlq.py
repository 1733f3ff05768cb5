"""Looking into the dead-letter queue and sending its messages back.

Two kinds of message land there: those AnalyticsIngest dead-lettered itself
(they carry the reason in ``offpath-dlq-reason``) and those SQS moved after
``maxReceiveCount`` failed receives (no reason: processing kept failing,
typically DynamoDB was unavailable).

SQS has no way to look at a message without receiving it: every ``peek``
and ``show`` adds one to the receive count of what it looks at. The DLQ has
no redrive policy of its own (deploy/aws/offpath.yaml), so a higher count
moves nothing; :meth:`DeadLetterQueue.state` says whether that holds.

``redrive`` makes one pass over what is in the DLQ when it starts. A
message whose cause was not fixed comes straight back (AnalyticsIngest
dead-letters it again within milliseconds, as a new message with a new id),
so a loop of receive-send-delete would move the same message again and
again. Two things keep a pass honest: SQS's own ``StartMessageMoveTask``
counts the messages when it starts and moves those; the fallback
(receive, send back, delete) remembers the content of every message it moved
(the set of event ids, or the body when it does not decode) and leaves in the
DLQ whatever comes back with the same content in the same pass. Each message
is deleted from the DLQ only after its send succeeded.

On a FIFO DLQ, SQS returns at most one receive's worth (10) per message group
until those are deleted, so ``peek`` and ``show`` reach up to 10 messages per
group.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol, Unpack

from botocore.exceptions import ClientError

from offpath.kit.aws import sqs_client
from offpath.kit.sqs import (
    REASON_ATTRIBUTE,
    SOURCE_ID_ATTRIBUTE,
    PoisonMessage,
    QueueNames,
    QueueUrlClient,
    decode_message,
    fifo_fields,
    queue_url,
    string_attribute,
    without_dead_letter_attributes,
)
from offpath.v1 import analytics_pb2

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        DeleteMessageRequestTypeDef,
        EmptyResponseMetadataTypeDef,
        GetQueueAttributesRequestTypeDef,
        GetQueueAttributesResultTypeDef,
        ListMessageMoveTasksRequestTypeDef,
        ListMessageMoveTasksResultTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
        SendMessageRequestTypeDef,
        SendMessageResultTypeDef,
        StartMessageMoveTaskRequestTypeDef,
        StartMessageMoveTaskResultTypeDef,
    )


class DlqClient(QueueUrlClient, Protocol):
    """The SQS calls the DLQ tool makes (boto3's SQS client has them)."""

    def get_queue_attributes(
        self, **kwargs: Unpack[GetQueueAttributesRequestTypeDef]
    ) -> GetQueueAttributesResultTypeDef: ...

    def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef: ...

    def send_message(
        self, **kwargs: Unpack[SendMessageRequestTypeDef]
    ) -> SendMessageResultTypeDef: ...

    def delete_message(
        self, **kwargs: Unpack[DeleteMessageRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef: ...

    def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef: ...

    def start_message_move_task(
        self, **kwargs: Unpack[StartMessageMoveTaskRequestTypeDef]
    ) -> StartMessageMoveTaskResultTypeDef: ...

    def list_message_move_tasks(
        self, **kwargs: Unpack[ListMessageMoveTasksRequestTypeDef]
    ) -> ListMessageMoveTasksResultTypeDef: ...


# Messages looked at are hidden this long, then made visible again at once.
_PEEK_VISIBILITY_S: Final = 30
# A redrive pass hides what it leaves in the DLQ this long (made visible
# again at its end), so it never receives the same message twice.
_HOLD_VISIBILITY_S: Final = 300
REDRIVEN_BY_SQS: Final = "(moved by SQS after maxReceiveCount receives)"
MOVE_TASK: Final = "StartMessageMoveTask"
RECEIVE_SEND_DELETE: Final = "receive-send-delete"
# How often a redrive asks how SQS's move task is doing.
_TASK_POLL_S: Final = 1.0


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
    # Where AnalyticsIngest received it (None when SQS moved it).
    source_message_id: str | None = None
    group_id: str | None = None


def _decoded(message: dict[str, Any]) -> analytics_pb2.AnalyticsBatch | None:
    try:
        return decode_message(message.get("Body", ""), message.get("MessageAttributes", {}))
    except PoisonMessage:
        return None


def _describe(message: dict[str, Any]) -> DeadLetter:
    attributes = message.get("MessageAttributes", {})
    reason = string_attribute(attributes, REASON_ATTRIBUTE) or REDRIVEN_BY_SQS
    system = message.get("Attributes", {})
    sent_ms = system.get("SentTimestamp")
    batch = _decoded(message)
    return DeadLetter(
        message_id=message["MessageId"],
        reason=reason,
        sent_at=datetime.fromtimestamp(int(sent_ms) / 1000, UTC) if sent_ms else None,
        receive_count=int(system.get("ApproximateReceiveCount", 0)),
        body_bytes=len(message.get("Body", "").encode()),
        events=None if batch is None else len(batch.events),
        batch_id=None if batch is None else batch.batch_id,
        source_message_id=string_attribute(attributes, SOURCE_ID_ATTRIBUTE),
        group_id=system.get("MessageGroupId"),
    )


def content_key(message: dict[str, Any]) -> str:
    """What stays the same when a message is dead-lettered again: the set of
    its event ids (AnalyticsIngest re-batches invalid events under a new batch
    id), or its body when it does not decode (kept byte for byte)."""
    batch = _decoded(message)
    if batch is not None and batch.events:
        text = "\n".join(sorted(event.event_id for event in batch.events))
        return "events:" + hashlib.sha256(text.encode()).hexdigest()
    return "body:" + hashlib.sha256(message.get("Body", "").encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class QueueState:
    """The DLQ as SQS describes it (counts are SQS's approximate ones)."""

    arn: str
    visible: int
    in_flight: int
    # The DLQ's own redrive policy (JSON), normally absent.
    redrive_policy: str | None


@dataclass(frozen=True, slots=True)
class ShownLetter:
    """One message, with its decoded batch when the body decodes."""

    letter: DeadLetter
    batch: analytics_pb2.AnalyticsBatch | None
    body: str


@dataclass
class MoveTask:
    """SQS's message move task, as ListMessageMoveTasks last described it."""

    handle: str
    status: str = "RUNNING"
    to_move: int | None = None
    moved: int | None = None
    failure_reason: str | None = None


@dataclass
class RedriveReport:
    """What one redrive pass did.

    ``moved`` counts distinct messages: with the fallback each one is listed
    in ``letters``; with SQS's move task it is the task's own approximate count.
    """

    method: str
    at_start: int  # messages in the DLQ when the pass started (SQS's approximate count)
    moved: int = 0
    letters: list[DeadLetter] = field(default_factory=list)
    # Messages with the content of one moved in this pass (it came back, its
    # cause not fixed, or it was there twice): left in the DLQ.
    came_back: int = 0
    # Received but not moved because ``limit`` was reached.
    over_limit: int = 0
    task: MoveTask | None = None
    # Why SQS's move task was not used (None when it was, or not tried).
    fallback_reason: str | None = None


def _arn_of_sibling(arn: str, name: str) -> str:
    """The ARN of queue ``name`` in the same account and region as ``arn``
    (the stack creates both queues together)."""
    return arn.rsplit(":", 1)[0] + ":" + name


def _error_text(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    message = " ".join(str(error.get("Message", "")).split())
    return f"{error.get('Code', '?')}: {message[:120]}"


class DeadLetterQueue:
    """The DLQ and the queue it belongs to, by URL."""

    def __init__(
        self,
        sqs: DlqClient,
        *,
        dlq_url: str,
        queue_url: str,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sqs = sqs
        self.dlq_url = dlq_url
        self.queue_url = queue_url
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_names(cls, names: QueueNames, sqs: DlqClient | None = None) -> DeadLetterQueue:
        client = sqs or sqs_client()
        return cls(
            client,
            dlq_url=queue_url(client, names.dlq),
            queue_url=queue_url(client, names.queue),
        )

    @property
    def queue_name(self) -> str:
        return self.queue_url.rstrip("/").rsplit("/", 1)[-1]

    def state(self) -> QueueState:
        """The DLQ's ARN, its approximate counts and its own redrive policy."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.dlq_url,
            AttributeNames=[
                "QueueArn",
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "RedrivePolicy",
            ],
        )["Attributes"]
        return QueueState(
            arn=attributes["QueueArn"],
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            redrive_policy=attributes.get("RedrivePolicy") or None,
        )

    # -- looking -----------------------------------------------------------

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

    def _release(self, handles: list[str]) -> None:
        """Make received messages visible again, ten a call."""
        for start in range(0, len(handles), 10):
            self._sqs.change_message_visibility_batch(
                QueueUrl=self.dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                    for i, handle in enumerate(handles[start : start + 10])
                ],
            )

    def _look(self, stop: Callable[[dict[str, dict[str, Any]]], bool]) -> dict[str, dict[str, Any]]:
        """Receive distinct messages until ``stop(seen)`` or none is left,
        then make them all visible again."""
        seen: dict[str, dict[str, Any]] = {}
        handles: list[str] = []
        try:
            while not stop(seen):
                batch = [m for m in self._receive(_PEEK_VISIBILITY_S) if m["MessageId"] not in seen]
                if not batch:
                    break
                for message in batch:
                    seen[message["MessageId"]] = message
                    handles.append(message["ReceiptHandle"])
        finally:
            self._release(handles)
        return seen

    def peek(self, limit: int = 10) -> list[DeadLetter]:
        """Up to ``limit`` messages, left in the queue (made visible again).
        Each one's receive count goes up by one: SQS counts every receive."""
        seen = self._look(lambda seen: len(seen) >= limit)
        return [_describe(m) for m in list(seen.values())[:limit]]

    def show(self, message_id: str) -> ShownLetter | None:
        """One message by its id, decoded; None when it is not (reachable) in
        the DLQ. Looking for it receives the messages before it too."""
        seen = self._look(lambda seen: message_id in seen)
        message = seen.get(message_id)
        if message is None:
            return None
        return ShownLetter(_describe(message), _decoded(message), message.get("Body", ""))

    # -- redriving ---------------------------------------------------------

    def redrive(
        self,
        limit: int | None = None,
        *,
        move_task: bool = True,
        wait_s: float = 60.0,
    ) -> RedriveReport:
        """One pass: send what is in the DLQ now back to the analytics queue.

        Without ``limit``, SQS's ``StartMessageMoveTask`` does it when the
        endpoint supports it (waiting up to ``wait_s`` for the task to finish);
        otherwise, and with ``limit``, receive-send-delete, each distinct
        message at most once.
        """
        state = self.state()
        if limit is None and move_task:
            try:
                handle = self._sqs.start_message_move_task(
                    SourceArn=state.arn,
                    DestinationArn=_arn_of_sibling(state.arn, self.queue_name),
                )["TaskHandle"]
            except ClientError as exc:
                # moto, and endpoints without DLQ redrive, refuse it: the
                # fallback does the same job, one message at a time.
                report = self._receive_send_delete(limit, state.visible)
                report.fallback_reason = _error_text(exc)
                return report
            task = self._follow(state.arn, MoveTask(handle), wait_s)
            return RedriveReport(
                method=MOVE_TASK, at_start=state.visible, moved=task.moved or 0, task=task
            )
        return self._receive_send_delete(limit, state.visible)

    def _follow(self, dlq_arn: str, task: MoveTask, wait_s: float) -> MoveTask:
        """Ask SQS how its move task is doing until it ends or ``wait_s`` passed."""
        deadline = self._clock() + wait_s
        while True:
            results = self._sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=1)["Results"]
            if results:
                # The newest task first: the one just started (SQS allows
                # one running task per queue).
                latest = results[0]
                task.status = latest.get("Status", task.status)
                task.to_move = latest.get("ApproximateNumberOfMessagesToMove", task.to_move)
                task.moved = latest.get("ApproximateNumberOfMessagesMoved", task.moved)
                task.failure_reason = latest.get("FailureReason")
            if task.status != "RUNNING" or self._clock() >= deadline:
                return task
            self._sleep(_TASK_POLL_S)

    def _receive_send_delete(self, limit: int | None, at_start: int) -> RedriveReport:
        report = RedriveReport(method=RECEIVE_SEND_DELETE, at_start=at_start)
        moved_keys: set[str] = set()
        seen: set[str] = set()
        # Received and left in the DLQ: visible again when the pass ends.
        held: dict[str, str] = {}
        try:
            while limit is None or report.moved < limit:
                messages = self._receive(_HOLD_VISIBILITY_S)
                if not messages:
                    break
                for message in messages:
                    message_id = message["MessageId"]
                    if message_id in seen:
                        # One left earlier whose hold ran out: hold it again.
                        held[message_id] = message["ReceiptHandle"]
                        continue
                    seen.add(message_id)
                    key = content_key(message)
                    if key in moved_keys:
                        report.came_back += 1
                        held[message_id] = message["ReceiptHandle"]
                    elif limit is not None and report.moved >= limit:
                        report.over_limit += 1
                        held[message_id] = message["ReceiptHandle"]
                    else:
                        self._send_back(message)
                        moved_keys.add(key)
                        report.moved += 1
                        report.letters.append(_describe(message))
        finally:
            self._release(list(held.values()))
        return report

    def _send_back(self, message: dict[str, Any]) -> None:
        self._sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=message["Body"],
            MessageAttributes=without_dead_letter_attributes(message.get("MessageAttributes", {})),
            **fifo_fields(
                self.queue_url,
                group_id=message.get("Attributes", {}).get("MessageGroupId") or "redrive",
                dedup_id=f"redrive-{message['MessageId']}",
            ),
        )
        self._sqs.delete_message(QueueUrl=self.dlq_url, ReceiptHandle=message["ReceiptHandle"])
