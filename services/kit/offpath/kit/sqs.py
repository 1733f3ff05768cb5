"""Our SQS queues: names, look-up, the message format, FIFO fields and
dead-letter attributes, in one place for every producer and consumer.

Format: one message carries one ``AnalyticsBatch``. The body is base64 of the
batch's binary protobuf encoding (SQS bodies are text); message attributes
name the schema and its version, so a consumer can tell a message it
understands from one it must dead-letter. On FIFO queues the
MessageGroupId is the producer and the MessageDeduplicationId a stable id of
the content (the batch id), so a resend after a lost response is not a
duplicate. A dead-lettered message carries why (``offpath-dlq-reason``) and
where it came from (``offpath-source-message-id``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypedDict, Unpack

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf.message import DecodeError

from offpath.kit.settings import SettingsError, env_str
from offpath.v1 import analytics_pb2

_log = structlog.get_logger("offpath.sqs")

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import (
        GetQueueUrlRequestTypeDef,
        GetQueueUrlResultTypeDef,
        SendMessageRequestTypeDef,
        SendMessageResultTypeDef,
    )

# -- names -----------------------------------------------------------------------

ENV_QUEUE_NAME: Final = "OFFPATH_SQS_QUEUE_NAME"
ENV_DLQ_NAME: Final = "OFFPATH_SQS_DLQ_NAME"
# Set them to skip the GetQueueUrl look-up (and its IAM permission).
ENV_QUEUE_URL: Final = "OFFPATH_SQS_QUEUE_URL"
ENV_DLQ_URL: Final = "OFFPATH_SQS_DLQ_URL"
DEFAULT_QUEUE_NAME: Final = "offpath-events.fifo"
_FIFO_SUFFIX: Final = ".fifo"


def is_fifo(name_or_url: str) -> bool:
    """FIFO queues are the ones whose name ends in ``.fifo``."""
    return name_or_url.endswith(_FIFO_SUFFIX)


def default_dlq_name(queue: str) -> str:
    """``events`` → ``events-dlq``; ``events.fifo`` → ``events-dlq.fifo``."""
    if is_fifo(queue):
        return f"{queue.removesuffix(_FIFO_SUFFIX)}-dlq{_FIFO_SUFFIX}"
    return f"{queue}-dlq"


def queue_name_from_env(env: Mapping[str, str]) -> str:
    """The analytics queue's name: all a producer needs."""
    return env_str(env, ENV_QUEUE_NAME, DEFAULT_QUEUE_NAME)


@dataclass(frozen=True, slots=True)
class QueueNames:
    """The analytics queue and its dead-letter queue: what a consumer (and
    the set-up and DLQ tools) need. The DLQ's name defaults to the queue's
    with ``-dlq`` (before ``.fifo``), so setting the queue alone is enough."""

    queue: str = DEFAULT_QUEUE_NAME
    dlq: str = default_dlq_name(DEFAULT_QUEUE_NAME)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> QueueNames:
        queue = queue_name_from_env(env)
        dlq = env_str(env, ENV_DLQ_NAME, default_dlq_name(queue))
        if is_fifo(queue) != is_fifo(dlq):
            raise SettingsError(
                f"{ENV_QUEUE_NAME}={queue!r} and {ENV_DLQ_NAME}={dlq!r}: a FIFO queue needs a "
                "FIFO dead-letter queue (both names end in .fifo, or neither)"
            )
        return cls(queue=queue, dlq=dlq)


# -- look-up -----------------------------------------------------------------------


class QueueUrlClient(Protocol):
    """The one SQS call a queue look-up makes (boto3's SQS client has it)."""

    def get_queue_url(
        self, **kwargs: Unpack[GetQueueUrlRequestTypeDef]
    ) -> GetQueueUrlResultTypeDef: ...


def queue_url(client: QueueUrlClient, name: str, configured: str | None = None) -> str:
    """``configured`` when set (``OFFPATH_SQS_*_URL`` skips the call),
    otherwise the URL SQS gives for ``name``. Raises what the call raises."""
    if configured:
        return configured
    return client.get_queue_url(QueueName=name)["QueueUrl"]


# -- FIFO fields -------------------------------------------------------------------


class FifoFields(TypedDict, total=False):
    MessageGroupId: str
    MessageDeduplicationId: str


def fifo_fields(queue_url_or_name: str, *, group_id: str, dedup_id: str) -> FifoFields:
    """The fields a message needs on a FIFO queue (none on a standard one).
    ``dedup_id`` must be stable for the same content: SQS drops a resend
    with the same id within five minutes."""
    if not is_fifo(queue_url_or_name):
        return {}
    return {"MessageGroupId": group_id[:128], "MessageDeduplicationId": dedup_id[:128]}


# -- the message format ------------------------------------------------------------

SCHEMA_ATTRIBUTE: Final = "offpath-schema"
VERSION_ATTRIBUTE: Final = "offpath-schema-version"
SCHEMA_NAME: Final = "offpath.v1.AnalyticsBatch"
SCHEMA_VERSION: Final = "1"

MESSAGE_ATTRIBUTES: Final[dict[str, Any]] = {
    SCHEMA_ATTRIBUTE: {"DataType": "String", "StringValue": SCHEMA_NAME},
    VERSION_ATTRIBUTE: {"DataType": "String", "StringValue": SCHEMA_VERSION},
}


def attributes_size(attributes: Mapping[str, Any]) -> int:
    """Bytes SQS counts toward the message size for these attributes
    (name, data type and value of each)."""
    total = 0
    for name, attribute in attributes.items():
        total += len(name.encode()) + len(str(attribute["DataType"]).encode())
        value = attribute.get("StringValue")
        if value is not None:
            total += len(str(value).encode())
        binary = attribute.get("BinaryValue")
        if binary is not None:
            total += len(binary)
    return total


MESSAGE_ATTRIBUTES_SIZE: Final = attributes_size(MESSAGE_ATTRIBUTES)


def encoded_size(serialized_size: int) -> int:
    """Length of the base64 body for a batch of ``serialized_size`` bytes."""
    return 4 * ((serialized_size + 2) // 3)


def encode_batch(batch: analytics_pb2.AnalyticsBatch) -> str:
    """The SQS message body for ``batch``."""
    return base64.b64encode(batch.SerializeToString()).decode("ascii")


class PoisonMessage(ValueError):
    """A message that can never be processed; ``reason`` says why (it is
    stored with the message in the dead-letter queue)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def string_attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    """A String message attribute's value, or None when absent or not text."""
    attribute = attributes.get(name)
    if not isinstance(attribute, Mapping):
        return None
    value = attribute.get("StringValue")
    return value if isinstance(value, str) else None


def decode_message(body: str, attributes: Mapping[str, Any]) -> analytics_pb2.AnalyticsBatch:
    """Parse an SQS message into its batch, or raise :class:`PoisonMessage`."""
    schema = string_attribute(attributes, SCHEMA_ATTRIBUTE)
    if schema != SCHEMA_NAME:
        raise PoisonMessage(
            f"message attribute {SCHEMA_ATTRIBUTE}={schema!r}, want {SCHEMA_NAME!r}"
        )
    version = string_attribute(attributes, VERSION_ATTRIBUTE)
    if version != SCHEMA_VERSION:
        raise PoisonMessage(
            f"message attribute {VERSION_ATTRIBUTE}={version!r}, want {SCHEMA_VERSION!r}"
        )
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise PoisonMessage(f"body is not base64: {exc}") from None
    batch = analytics_pb2.AnalyticsBatch()
    try:
        batch.ParseFromString(raw)
    except DecodeError as exc:
        raise PoisonMessage(f"body is not an AnalyticsBatch: {exc}") from None
    if not batch.batch_id:
        raise PoisonMessage("batch has no batch_id")
    return batch


# -- dead letters ------------------------------------------------------------------

REASON_ATTRIBUTE: Final = "offpath-dlq-reason"
SOURCE_ID_ATTRIBUTE: Final = "offpath-source-message-id"
DEAD_LETTER_ATTRIBUTES: Final = frozenset({REASON_ATTRIBUTE, SOURCE_ID_ATTRIBUTE})
DEAD_LETTER_GROUP: Final = "offpath-dead-letters"
MAX_REASON_CHARS: Final = 1000
# SQS allows 10 message attributes per message; two are ours.
_MAX_KEPT_ATTRIBUTES: Final = 10 - len(DEAD_LETTER_ATTRIBUTES)


def without_dead_letter_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A message's attributes minus the ones a dead-lettering added."""
    return {k: v for k, v in attributes.items() if k not in DEAD_LETTER_ATTRIBUTES}


def dead_letter_message(
    dlq_url: str, *, body: str, attributes: Mapping[str, Any], reason: str, source_id: str
) -> dict[str, Any]:
    """A ``SendMessage`` request that puts ``body`` into the DLQ with its reason.
    ``source_id`` names where it came from and, on a FIFO DLQ, de-duplicates
    it: dead-lettering the same message twice keeps one copy."""
    kept = dict(list(without_dead_letter_attributes(attributes).items())[:_MAX_KEPT_ATTRIBUTES])
    return {
        "QueueUrl": dlq_url,
        "MessageBody": body or "(empty body)",
        "MessageAttributes": {
            **kept,
            REASON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:MAX_REASON_CHARS]},
            SOURCE_ID_ATTRIBUTE: {"DataType": "String", "StringValue": source_id},
        },
        **fifo_fields(dlq_url, group_id=DEAD_LETTER_GROUP, dedup_id=source_id),
    }


class SqsSendClient(Protocol):
    """The one SQS call dead-lettering makes."""

    def send_message(
        self, **kwargs: Unpack[SendMessageRequestTypeDef]
    ) -> SendMessageResultTypeDef: ...


def send_dead_letter(sqs: SqsSendClient, request: dict[str, Any], source_id: str) -> bool:
    """Send a dead-letter request (:func:`dead_letter_message`); False, with
    an error line, when SQS did not take it: the message stays where it is,
    to be handled again, and SQS's redrive policy is the backstop."""
    try:
        sqs.send_message(**request)
    except (BotoCoreError, ClientError) as exc:
        _log.error("dead_letter_failed", source_id=source_id, error=str(exc))
        return False
    return True
