"""An in-memory SQS with boto3's signatures, for unit tests.

It implements every SQS call offpath makes, with the semantics offpath
relies on: visibility timeouts and receipt handles, receive counts, FIFO
de-duplication and message groups (no message of a group while another of
it is in flight), redrive to a dead-letter queue after ``maxReceiveCount``
receives, batch limits (10 entries, distinct ids) and partial failures
injected per call. Its methods are typed exactly as boto3's SQS client, so
the type checker holds it to the same Protocols the runtime code declares
(``SqsSendClient``, ``SqsConsumeClient``, ...), no cast needed.

Time is the fake's own clock (``now``): tests move it with :meth:`advance`.

Faults for producers: :meth:`FakeSqs.outage` makes every SendMessageBatch
fail (unreachable, throttled or a 5xx) until it ends (:meth:`recover`, a
number of real seconds, or a condition turning false), and
:meth:`fail_entries` fails some entries of the next calls (a partial batch
failure, retryable). :func:`fake_sqs_sink` makes an ``SqsSink`` over a
FakeSqs inside a sender process, with an outage while a flag file exists.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack, cast

from botocore.exceptions import EndpointConnectionError

from offpath.testing.calls import CallJournal, client_error, response_metadata

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        ChangeMessageVisibilityRequestTypeDef,
        CreateQueueRequestTypeDef,
        CreateQueueResultTypeDef,
        DeleteMessageBatchRequestTypeDef,
        DeleteMessageBatchResultTypeDef,
        DeleteMessageRequestTypeDef,
        EmptyResponseMetadataTypeDef,
        GetQueueAttributesRequestTypeDef,
        GetQueueAttributesResultTypeDef,
        GetQueueUrlRequestTypeDef,
        GetQueueUrlResultTypeDef,
        ListMessageMoveTasksRequestTypeDef,
        ListMessageMoveTasksResultEntryTypeDef,
        ListMessageMoveTasksResultTypeDef,
        MessageTypeDef,
        ReceiveMessageRequestTypeDef,
        ReceiveMessageResultTypeDef,
        SendMessageBatchRequestTypeDef,
        SendMessageBatchResultTypeDef,
        SendMessageRequestTypeDef,
        SendMessageResultTypeDef,
        SetQueueAttributesRequestTypeDef,
        StartMessageMoveTaskRequestTypeDef,
        StartMessageMoveTaskResultTypeDef,
    )

    from offpath.emitter.settings import EmitterSettings
    from offpath.emitter.sqs import SqsSink

_ACCOUNT = "000000000000"
_REGION = "us-east-1"
_DEDUP_WINDOW_S = 300.0
_MAX_BATCH = 10
# What a SendMessageBatch fails with during an outage, by kind.
OUTAGE_KINDS = ("unreachable", "throttled", "server_error")


def outage_error(kind: str) -> Exception:
    """The exception botocore raises for a call that fails as ``kind``."""
    if kind == "unreachable":
        return EndpointConnectionError(endpoint_url=f"https://sqs.{_REGION}.amazonaws.com/")
    if kind == "throttled":
        return client_error("ThrottlingException", "Rate exceeded", "SendMessageBatch")
    if kind == "server_error":
        return client_error(
            "InternalError", "We encountered an internal error.", "SendMessageBatch", status=500
        )
    raise ValueError(f"outage kind {kind!r} is not one of {OUTAGE_KINDS}")


@dataclass
class FakeMessage:
    """A message as the fake holds it."""

    message_id: str
    body: str
    attributes: dict[str, Any]
    sent_at: float
    group_id: str | None = None
    dedup_id: str | None = None
    receive_count: int = 0
    visible_at: float = 0.0
    receipt_handle: str | None = None


@dataclass
class FakeQueue:
    name: str
    url: str
    attributes: dict[str, str]
    messages: list[FakeMessage] = field(default_factory=list)
    dedup: dict[str, float] = field(default_factory=dict)  # dedup id -> first sent

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{_REGION}:{_ACCOUNT}:{self.name}"

    @property
    def visibility_timeout(self) -> float:
        return float(self.attributes.get("VisibilityTimeout", "30"))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class FakeSqs:
    """In-memory SQS; ``journal`` records every call (and injects faults)."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, long_poll: bool = False
    ) -> None:
        self.journal = CallJournal()
        # Calls from several threads (concurrent pollers) see one queue state;
        # with long_poll, an empty receive with WaitTimeSeconds waits (in real
        # time) for a message to become available, as SQS's long poll does.
        self.long_poll = long_poll
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.queues: dict[str, FakeQueue] = {}  # by URL
        self.closed = 0
        self._now = 1_800_000_000.0
        self._clock = clock
        # Source queue ARN -> its message move tasks, newest first.
        self.move_tasks: dict[str, list[ListMessageMoveTasksResultEntryTypeDef]] = {}
        # Producer faults (see outage and fail_entries).
        self._outage: tuple[str, Callable[[], bool]] | None = None
        self._entry_faults: list[Callable[[int], bool]] = []
        # Called with each message a SendMessageBatch accepted (under the lock).
        self.on_message: Callable[[FakeMessage], None] | None = None

    # -- producer faults -----------------------------------------------------------

    def outage(
        self,
        kind: str = "unreachable",
        *,
        seconds: float | None = None,
        while_: Callable[[], bool] | None = None,
    ) -> None:
        """Every SendMessageBatch fails as ``kind`` (:data:`OUTAGE_KINDS`) from
        now until :meth:`recover`, or for ``seconds`` of real time, or while
        ``while_()`` is true. Failed calls are journaled as any call."""
        outage_error(kind)  # an unknown kind fails here, not at the first call
        if seconds is not None:
            until = time.monotonic() + seconds
            self._outage = (kind, lambda: time.monotonic() < until)
        else:
            self._outage = (kind, while_ or (lambda: True))

    def recover(self) -> None:
        """End the outage."""
        self._outage = None

    @property
    def down(self) -> bool:
        outage = self._outage
        return outage is not None and outage[1]()

    def fail_entries(self, fail: Callable[[int], bool], *, calls: int = 1) -> None:
        """In the next ``calls`` SendMessageBatch calls, the entries whose
        position ``fail`` accepts are listed as Failed (an internal error,
        not the sender's fault: to be retried); the others are accepted."""
        self._entry_faults.extend([fail] * calls)

    # -- the test's controls ---------------------------------------------------

    @property
    def now(self) -> float:
        return self._clock() if self._clock is not None else self._now

    def advance(self, seconds: float) -> None:
        """Move the fake's clock (visibility timeouts expire, dedup windows close)."""
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def add_queue(self, name: str, **attributes: str) -> str:
        """Create a queue as set-up, without a journal entry; returns its URL."""
        return self._create(name, attributes)

    def queue(self, name_or_url: str) -> FakeQueue:
        for queue in self.queues.values():
            if name_or_url in (queue.name, queue.url):
                return queue
        raise KeyError(name_or_url)

    def bodies(self, name_or_url: str) -> list[str]:
        """Bodies of every message in the queue, in flight or not, oldest first."""
        return [m.body for m in self.queue(name_or_url).messages]

    # -- queues ------------------------------------------------------------------

    def create_queue(self, **kwargs: Unpack[CreateQueueRequestTypeDef]) -> CreateQueueResultTypeDef:
        scripted = self.journal.record("create_queue", kwargs)
        if scripted is not None:
            return cast("CreateQueueResultTypeDef", scripted)
        attributes = {str(k): v for k, v in kwargs.get("Attributes", {}).items()}
        url = self._create(kwargs["QueueName"], attributes)
        return {"QueueUrl": url, "ResponseMetadata": response_metadata()}

    def _create(self, name: str, attributes: dict[str, str]) -> str:
        url = f"https://sqs.{_REGION}.amazonaws.com/{_ACCOUNT}/{name}"
        existing = self.queues.get(url)
        if existing is not None:
            if any(existing.attributes.get(k) != v for k, v in attributes.items()):
                raise client_error(
                    "QueueAlreadyExists",
                    f"A queue already exists with the same name and a different value for "
                    f"attribute(s) {sorted(attributes)}",
                    "CreateQueue",
                )
        elif name.endswith(".fifo") != (attributes.get("FifoQueue") == "true"):
            raise client_error(
                "InvalidParameterValue",
                "The name of a FIFO queue can only include alphanumeric characters, hyphens, "
                "or underscores, must end with .fifo suffix",
                "CreateQueue",
            )
        else:
            self.queues[url] = FakeQueue(name, url, attributes)
        return url

    def get_queue_url(
        self, **kwargs: Unpack[GetQueueUrlRequestTypeDef]
    ) -> GetQueueUrlResultTypeDef:
        scripted = self.journal.record("get_queue_url", kwargs)
        if scripted is not None:
            return cast("GetQueueUrlResultTypeDef", scripted)
        queue = self._by_name(kwargs["QueueName"], "GetQueueUrl")
        return {"QueueUrl": queue.url, "ResponseMetadata": response_metadata()}

    def get_queue_attributes(
        self, **kwargs: Unpack[GetQueueAttributesRequestTypeDef]
    ) -> GetQueueAttributesResultTypeDef:
        scripted = self.journal.record("get_queue_attributes", kwargs)
        if scripted is not None:
            return cast("GetQueueAttributesResultTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "GetQueueAttributes")
        now = self.now
        everything = {
            **queue.attributes,
            "QueueArn": queue.arn,
            "ApproximateNumberOfMessages": str(
                sum(1 for m in queue.messages if m.visible_at <= now)
            ),
            "ApproximateNumberOfMessagesNotVisible": str(
                sum(1 for m in queue.messages if m.visible_at > now)
            ),
        }
        wanted = set(kwargs.get("AttributeNames", []))
        chosen = (
            everything if "All" in wanted else {k: everything[k] for k in wanted & set(everything)}
        )
        return {
            "Attributes": cast(Any, chosen),
            "ResponseMetadata": response_metadata(),
        }

    def set_queue_attributes(
        self, **kwargs: Unpack[SetQueueAttributesRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef:
        scripted = self.journal.record("set_queue_attributes", kwargs)
        if scripted is not None:
            return cast("EmptyResponseMetadataTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "SetQueueAttributes")
        queue.attributes.update({str(k): v for k, v in kwargs["Attributes"].items()})
        return {"ResponseMetadata": response_metadata()}

    # -- sending -------------------------------------------------------------------

    def send_message(self, **kwargs: Unpack[SendMessageRequestTypeDef]) -> SendMessageResultTypeDef:
        scripted = self.journal.record("send_message", kwargs)
        if scripted is not None:
            return cast("SendMessageResultTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "SendMessage")
        message_id = self._enqueue(queue, cast(Mapping[str, Any], kwargs), "SendMessage")
        response = {
            "MessageId": message_id,
            "MD5OfMessageBody": _md5(kwargs["MessageBody"]),
            "ResponseMetadata": response_metadata(),
        }
        return cast("SendMessageResultTypeDef", response)

    def send_message_batch(
        self, **kwargs: Unpack[SendMessageBatchRequestTypeDef]
    ) -> SendMessageBatchResultTypeDef:
        scripted = self.journal.record("send_message_batch", kwargs)
        if scripted is not None:
            return cast("SendMessageBatchResultTypeDef", scripted)
        outage = self._outage
        if outage is not None and outage[1]():
            raise outage_error(outage[0])
        queue = self._by_url(kwargs["QueueUrl"], "SendMessageBatch")
        entries = list(kwargs["Entries"])
        self._check_batch([e["Id"] for e in entries], "SendMessageBatch")
        fail = self._entry_faults.pop(0) if self._entry_faults else None
        total = sum(len(e["MessageBody"].encode()) for e in entries)
        limit = int(queue.attributes.get("MaximumMessageSize", str(1024 * 1024)))
        if total > limit:
            raise client_error(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {limit} bytes",
                "SendMessageBatch",
            )
        successful: list[Any] = []
        failed: list[Any] = []
        for position, entry in enumerate(entries):
            if fail is not None and fail(position):
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": False,
                        "Code": "InternalError",
                        "Message": "We encountered an internal error.",
                    }
                )
                continue
            message_id = self._enqueue(queue, cast(Mapping[str, Any], entry), "SendMessageBatch")
            successful.append(
                {
                    "Id": entry["Id"],
                    "MessageId": message_id,
                    "MD5OfMessageBody": _md5(entry["MessageBody"]),
                }
            )
        return {
            "Successful": successful,
            "Failed": failed,
            "ResponseMetadata": response_metadata(),
        }

    # -- receiving -------------------------------------------------------------------

    def receive_message(
        self, **kwargs: Unpack[ReceiveMessageRequestTypeDef]
    ) -> ReceiveMessageResultTypeDef:
        scripted = self.journal.record("receive_message", kwargs)
        if scripted is not None:
            return cast("ReceiveMessageResultTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "ReceiveMessage")
        wanted = kwargs.get("MaxNumberOfMessages", 1)
        if not 1 <= wanted <= _MAX_BATCH:
            raise client_error(
                "InvalidParameterValue",
                f"Value {wanted} for parameter MaxNumberOfMessages is invalid",
                "ReceiveMessage",
            )
        visibility = float(kwargs.get("VisibilityTimeout", queue.visibility_timeout))
        wait_s = float(kwargs.get("WaitTimeSeconds", 0)) if self.long_poll else 0.0
        deadline = time.monotonic() + wait_s
        with self._changed:
            while not (taken := self._take(queue, wanted, visibility)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        names = {str(n) for n in kwargs.get("MessageAttributeNames", [])}
        system = {str(n) for n in kwargs.get("MessageSystemAttributeNames", [])} | {
            str(n) for n in kwargs.get("AttributeNames", [])
        }
        return {
            "Messages": [self._describe(m, names, system) for m in taken],
            "ResponseMetadata": response_metadata(),
        }

    def delete_message(
        self, **kwargs: Unpack[DeleteMessageRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef:
        scripted = self.journal.record("delete_message", kwargs)
        if scripted is not None:
            return cast("EmptyResponseMetadataTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "DeleteMessage")
        if not self._delete(queue, kwargs["ReceiptHandle"]):
            raise client_error(
                "ReceiptHandleIsInvalid", "The input receipt handle is invalid.", "DeleteMessage"
            )
        return {"ResponseMetadata": response_metadata()}

    def delete_message_batch(
        self, **kwargs: Unpack[DeleteMessageBatchRequestTypeDef]
    ) -> DeleteMessageBatchResultTypeDef:
        scripted = self.journal.record("delete_message_batch", kwargs)
        if scripted is not None:
            return cast("DeleteMessageBatchResultTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "DeleteMessageBatch")
        entries = list(kwargs["Entries"])
        self._check_batch([e["Id"] for e in entries], "DeleteMessageBatch")
        successful: list[Any] = []
        failed: list[Any] = []
        for entry in entries:
            if self._delete(queue, entry["ReceiptHandle"]):
                successful.append({"Id": entry["Id"]})
            else:
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": True,
                        "Code": "ReceiptHandleIsInvalid",
                        "Message": "The input receipt handle is invalid.",
                    }
                )
        return {
            "Successful": successful,
            "Failed": failed,
            "ResponseMetadata": response_metadata(),
        }

    def change_message_visibility(
        self, **kwargs: Unpack[ChangeMessageVisibilityRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef:
        scripted = self.journal.record("change_message_visibility", kwargs)
        if scripted is not None:
            return cast("EmptyResponseMetadataTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "ChangeMessageVisibility")
        if not self._set_visibility(queue, kwargs["ReceiptHandle"], kwargs["VisibilityTimeout"]):
            raise client_error(
                "MessageNotInflight", "Message is not in flight.", "ChangeMessageVisibility"
            )
        return {"ResponseMetadata": response_metadata()}

    def change_message_visibility_batch(
        self, **kwargs: Unpack[ChangeMessageVisibilityBatchRequestTypeDef]
    ) -> ChangeMessageVisibilityBatchResultTypeDef:
        scripted = self.journal.record("change_message_visibility_batch", kwargs)
        if scripted is not None:
            return cast("ChangeMessageVisibilityBatchResultTypeDef", scripted)
        queue = self._by_url(kwargs["QueueUrl"], "ChangeMessageVisibilityBatch")
        entries = list(kwargs["Entries"])
        self._check_batch([e["Id"] for e in entries], "ChangeMessageVisibilityBatch")
        successful: list[Any] = []
        failed: list[Any] = []
        for entry in entries:
            if self._set_visibility(
                queue, entry["ReceiptHandle"], entry.get("VisibilityTimeout", 0)
            ):
                successful.append({"Id": entry["Id"]})
            else:
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": True,
                        "Code": "MessageNotInflight",
                        "Message": "Message is not in flight.",
                    }
                )
        return {
            "Successful": successful,
            "Failed": failed,
            "ResponseMetadata": response_metadata(),
        }

    # -- message move tasks (DLQ redrive) ---------------------------------------------

    def start_message_move_task(
        self, **kwargs: Unpack[StartMessageMoveTaskRequestTypeDef]
    ) -> StartMessageMoveTaskResultTypeDef:
        """Moves at once the messages visible when it starts (SQS's task runs in
        the background, counting them at its start): each is sent anew to the
        destination (the source of the DLQ's redrive when none is given), with a
        new id and receive count 0, its attributes and group kept."""
        scripted = self.journal.record("start_message_move_task", kwargs)
        if scripted is not None:
            return cast("StartMessageMoveTaskResultTypeDef", scripted)
        source = self._by_arn(kwargs["SourceArn"], "StartMessageMoveTask")
        sources = [
            q
            for q in self.queues.values()
            if json.loads(q.attributes.get("RedrivePolicy") or "{}").get("deadLetterTargetArn")
            == source.arn
        ]
        if not sources:
            raise client_error(
                "InvalidParameterValue",
                "Source queue must be configured as a Dead Letter Queue.",
                "StartMessageMoveTask",
            )
        destination_arn = kwargs.get("DestinationArn")
        destination = (
            self._by_arn(destination_arn, "StartMessageMoveTask") if destination_arn else sources[0]
        )
        if destination.fifo != source.fifo:
            raise client_error(
                "InvalidParameterValue",
                "The source queue and destination queue must be of the same queue type.",
                "StartMessageMoveTask",
            )
        tasks = self.move_tasks.setdefault(source.arn, [])
        if any(task.get("Status") == "RUNNING" for task in tasks):
            raise client_error(
                "AWS.SimpleQueueService.UnsupportedOperation",
                "There is already a task running. Only one active task is allowed per source.",
                "StartMessageMoveTask",
            )
        now = self.now
        moving = [m for m in source.messages if m.visible_at <= now]
        for message in moving:
            source.messages.remove(message)
            destination.messages.append(
                FakeMessage(
                    message_id=str(uuid.uuid4()),
                    body=message.body,
                    attributes=message.attributes,
                    sent_at=now,
                    group_id=message.group_id,
                    dedup_id=message.message_id if destination.fifo else None,
                )
            )
        handle = uuid.uuid4().hex
        entry: ListMessageMoveTasksResultEntryTypeDef = {
            "TaskHandle": handle,
            "Status": "COMPLETED",
            "SourceArn": source.arn,
            "ApproximateNumberOfMessagesMoved": len(moving),
            "ApproximateNumberOfMessagesToMove": len(moving),
            "StartedTimestamp": int(now * 1000),
        }
        if destination_arn:
            entry["DestinationArn"] = destination_arn
        tasks.insert(0, entry)
        return {"TaskHandle": handle, "ResponseMetadata": response_metadata()}

    def list_message_move_tasks(
        self, **kwargs: Unpack[ListMessageMoveTasksRequestTypeDef]
    ) -> ListMessageMoveTasksResultTypeDef:
        """The source's most recent tasks, newest first (the handle only of a
        running one, as SQS answers)."""
        scripted = self.journal.record("list_message_move_tasks", kwargs)
        if scripted is not None:
            return cast("ListMessageMoveTasksResultTypeDef", scripted)
        source = self._by_arn(kwargs["SourceArn"], "ListMessageMoveTasks")
        wanted = kwargs.get("MaxResults", 1)
        if not 1 <= wanted <= _MAX_BATCH:
            raise client_error(
                "InvalidParameterValue",
                f"Value {wanted} for parameter MaxResults is invalid",
                "ListMessageMoveTasks",
            )
        results: list[ListMessageMoveTasksResultEntryTypeDef] = []
        for task in self.move_tasks.get(source.arn, [])[:wanted]:
            shown = cast("ListMessageMoveTasksResultEntryTypeDef", dict(task))
            if shown.get("Status") != "RUNNING":
                shown.pop("TaskHandle", None)
            results.append(shown)
        return {"Results": results, "ResponseMetadata": response_metadata()}

    def _by_arn(self, arn: str, operation: str) -> FakeQueue:
        queue = next((q for q in self.queues.values() if q.arn == arn), None)
        if queue is None:
            raise client_error(
                "ResourceNotFoundException",
                "The resource that you specified for the SourceArn parameter doesn't exist.",
                operation,
            )
        return queue

    def close(self) -> None:
        self.journal.record("close", {})
        self.closed += 1

    # -- inside --------------------------------------------------------------------------

    def _by_name(self, name: str, operation: str) -> FakeQueue:
        for queue in self.queues.values():
            if queue.name == name:
                return queue
        raise client_error(
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
            operation,
        )

    def _by_url(self, url: str, operation: str) -> FakeQueue:
        queue = self.queues.get(url)
        if queue is None:
            raise client_error(
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist.",
                operation,
            )
        return queue

    @staticmethod
    def _check_batch(ids: list[str], operation: str) -> None:
        if not ids:
            raise client_error(
                "AWS.SimpleQueueService.EmptyBatchRequest",
                "There should be at least one entry in the request.",
                operation,
            )
        if len(ids) > _MAX_BATCH:
            raise client_error(
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
                f"Maximum number of entries per request are {_MAX_BATCH}.",
                operation,
            )
        if len(set(ids)) != len(ids):
            raise client_error(
                "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
                "Two or more batch entries in the request have the same Id.",
                operation,
            )

    def _enqueue(self, queue: FakeQueue, request: Mapping[str, Any], operation: str) -> str:
        group = request.get("MessageGroupId")
        dedup = request.get("MessageDeduplicationId")
        if queue.fifo and (group is None or dedup is None):
            raise client_error(
                "MissingParameter",
                "The request must contain the parameters MessageGroupId and "
                "MessageDeduplicationId (the queue does not use content-based deduplication).",
                operation,
            )
        if not queue.fifo and group is not None and dedup is not None:
            raise client_error(
                "InvalidParameterValue",
                "The request include parameter that is not valid for this queue type",
                operation,
            )
        with self._changed:
            now = self.now
            message_id = str(uuid.uuid4())
            if queue.fifo and dedup is not None:
                first = queue.dedup.get(dedup)
                if first is not None and now - first < _DEDUP_WINDOW_S:
                    return message_id  # accepted and dropped, as SQS does
                queue.dedup[dedup] = now
            queue.messages.append(
                FakeMessage(
                    message_id=message_id,
                    body=str(request["MessageBody"]),
                    attributes=json.loads(json.dumps(request.get("MessageAttributes", {}))),
                    sent_at=now,
                    group_id=group,
                    dedup_id=dedup,
                    visible_at=now + float(request.get("DelaySeconds", 0)),
                )
            )
            if self.on_message is not None:
                self.on_message(queue.messages[-1])
            self._changed.notify_all()
            return message_id

    def _take(self, queue: FakeQueue, wanted: int, visibility: float) -> list[FakeMessage]:
        """Receive up to ``wanted`` available messages (under the lock)."""
        now = self.now
        busy_groups = {
            m.group_id for m in queue.messages if m.visible_at > now and m.group_id is not None
        }
        taken: list[FakeMessage] = []
        for message in list(queue.messages):
            if len(taken) >= wanted:
                break
            if message.visible_at > now:
                continue
            if queue.fifo and message.group_id in busy_groups:
                continue
            if self._redrive(queue, message):
                continue
            message.receive_count += 1
            message.visible_at = now + visibility
            message.receipt_handle = f"{message.message_id}#{uuid.uuid4().hex}"
            taken.append(message)
        return taken

    def _redrive(self, queue: FakeQueue, message: FakeMessage) -> bool:
        """Move a message that was received maxReceiveCount times to the DLQ."""
        policy = queue.attributes.get("RedrivePolicy")
        if not policy:
            return False
        rules = json.loads(policy)
        if message.receive_count < int(rules["maxReceiveCount"]):
            return False
        target = next(
            (q for q in self.queues.values() if q.arn == rules["deadLetterTargetArn"]), None
        )
        if target is None:
            return False
        queue.messages.remove(message)
        message.visible_at = 0.0
        message.receipt_handle = None
        target.messages.append(message)
        return True

    def _find(self, queue: FakeQueue, handle: str) -> FakeMessage | None:
        return next((m for m in queue.messages if m.receipt_handle == handle), None)

    def _delete(self, queue: FakeQueue, handle: str) -> bool:
        with self._changed:
            message = self._find(queue, handle)
            if message is None:
                # SQS accepts a stale handle of a message already deleted.
                return "#" in handle
            queue.messages.remove(message)
            # A FIFO group's next message may be available now.
            self._changed.notify_all()
            return True

    def _set_visibility(self, queue: FakeQueue, handle: str, seconds: int) -> bool:
        with self._changed:
            message = self._find(queue, handle)
            if message is None or message.visible_at <= self.now:
                return False
            message.visible_at = self.now + seconds
            self._changed.notify_all()
            return True

    def _describe(self, message: FakeMessage, names: set[str], system: set[str]) -> MessageTypeDef:
        described: dict[str, Any] = {
            "MessageId": message.message_id,
            "ReceiptHandle": message.receipt_handle,
            "MD5OfBody": _md5(message.body),
            "Body": message.body,
        }
        if names and message.attributes:
            described["MessageAttributes"] = {
                k: v
                for k, v in message.attributes.items()
                if "All" in names or ".*" in names or k in names
            }
        everything = {
            "SentTimestamp": str(int(message.sent_at * 1000)),
            "ApproximateReceiveCount": str(message.receive_count),
            "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
        }
        if message.group_id is not None:
            everything["MessageGroupId"] = message.group_id
        if message.dedup_id is not None:
            everything["MessageDeduplicationId"] = message.dedup_id
        chosen = (
            everything if "All" in system else {k: v for k, v in everything.items() if k in system}
        )
        if chosen:
            described["Attributes"] = chosen
        return cast("MessageTypeDef", described)


def fake_sqs_sink(settings: EmitterSettings, arg: str) -> SqsSink:
    """An ``SqsSink`` over a FakeSqs, made in a sender process by name
    (``offpath.testing.sqs:fake_sqs_sink``) from a JSON argument: ``path``,
    where each accepted message's event ids are appended as a JSON line
    (``offpath.testing.sinks.read_batches`` reads them), and ``down_while``,
    a file whose existence means an outage of kind ``kind``."""
    from offpath.emitter.sqs import SqsSink
    from offpath.kit.sqs import decode_message

    options = json.loads(arg)
    out, flag = Path(options["path"]), Path(options["down_while"])
    sqs = FakeSqs()
    fifo = {"FifoQueue": "true"} if settings.queue_name.endswith(".fifo") else {}
    sqs.add_queue(settings.queue_name, **fifo)
    sqs.outage(options.get("kind", "unreachable"), while_=flag.exists)

    def delivered(message: FakeMessage) -> None:
        ids = [e.event_id for e in decode_message(message.body, message.attributes).events]
        with out.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"kind": "batch", "ids": ids}) + "\n")

    sqs.on_message = delivered
    return SqsSink(settings, client_factory=lambda: sqs)
