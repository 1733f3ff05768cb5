"""The SQS message format: one message carries one ``AnalyticsBatch``.

The body is base64 of the batch's binary protobuf encoding (SQS bodies are
text); message attributes name the schema and its version, so a consumer can
tell a message it understands from one it must dead-letter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from offpath.v1 import analytics_pb2

SCHEMA_ATTRIBUTE = "offpath-schema"
VERSION_ATTRIBUTE = "offpath-schema-version"
SCHEMA_NAME = "offpath.v1.AnalyticsBatch"
SCHEMA_VERSION = "1"
# Set on dead-lettered messages: why, and which message they came from.
REASON_ATTRIBUTE = "offpath-dlq-reason"
SOURCE_ID_ATTRIBUTE = "offpath-source-message-id"

MESSAGE_ATTRIBUTES: dict[str, Any] = {
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


MESSAGE_ATTRIBUTES_SIZE = attributes_size(MESSAGE_ATTRIBUTES)


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


def _string_attribute(attributes: Mapping[str, Any], name: str) -> str | None:
    attribute = attributes.get(name)
    if not isinstance(attribute, Mapping):
        return None
    value = attribute.get("StringValue")
    return value if isinstance(value, str) else None


def decode_message(body: str, attributes: Mapping[str, Any]) -> analytics_pb2.AnalyticsBatch:
    """Parse an SQS message into its batch, or raise :class:`PoisonMessage`."""
    schema = _string_attribute(attributes, SCHEMA_ATTRIBUTE)
    if schema != SCHEMA_NAME:
        raise PoisonMessage(
            f"message attribute {SCHEMA_ATTRIBUTE}={schema!r}, want {SCHEMA_NAME!r}"
        )
    version = _string_attribute(attributes, VERSION_ATTRIBUTE)
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
