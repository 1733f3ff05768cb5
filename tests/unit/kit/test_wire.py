"""Unit tests for offpath.kit.wire: the SQS message codec and its size arithmetic."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from offpath.kit.wire import (
    MESSAGE_ATTRIBUTES,
    MESSAGE_ATTRIBUTES_SIZE,
    SCHEMA_ATTRIBUTE,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    VERSION_ATTRIBUTE,
    PoisonMessage,
    attributes_size,
    decode_message,
    encode_batch,
    encoded_size,
)
from offpath.v1 import analytics_pb2


def _event(
    event_id: str = "0190a6f2-7a55-7cc1-9d2b-1a2b3c4d5e6f", query: str = "does she know k8s?"
) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=query,
        model="tiny",
        token_count=42,
        status_code=3,
        producer_id="host-1",
    )
    event.occurred_at.FromNanoseconds(1_790_000_000_123_456_789)
    event.processing_time.FromNanoseconds(12_345_678)
    event.matched_skills.add(name="Kubernetes", score=0.75)
    event.attributes["region"] = "eu-west-1"
    return event


def _batch(
    *events: analytics_pb2.AnalyticsEvent, batch_id: str = "0190a6f2-0000-7000-8000-000000000001"
) -> analytics_pb2.AnalyticsBatch:
    batch = analytics_pb2.AnalyticsBatch(batch_id=batch_id, producer_id="host-1", events=events)
    batch.created_at.FromNanoseconds(1_790_000_001_000_000_000)
    return batch


def _attributes(schema: Any = SCHEMA_NAME, version: Any = SCHEMA_VERSION) -> dict[str, Any]:
    return {
        SCHEMA_ATTRIBUTE: {"DataType": "String", "StringValue": schema},
        VERSION_ATTRIBUTE: {"DataType": "String", "StringValue": version},
    }


class TestRoundTrip:
    def test_decode_returns_the_encoded_batch(self) -> None:
        """A batch encoded as a body decodes, with the standard attributes, to an equal batch."""
        batch = _batch(_event(), _event("0190a6f2-7a55-7cc1-9d2b-000000000002", query="é ✓"))
        decoded = decode_message(encode_batch(batch), MESSAGE_ATTRIBUTES)
        assert decoded == batch
        assert decoded.events[1].query == "é ✓"

    def test_body_is_ascii_base64_of_the_protobuf(self) -> None:
        """The body is plain base64 text of the binary encoding, safe for an SQS text body."""
        batch = _batch(_event())
        body = encode_batch(batch)
        assert body.isascii()
        assert base64.b64decode(body, validate=True) == batch.SerializeToString()

    def test_extra_attributes_are_ignored(self) -> None:
        """Attributes beyond schema and version (added by SQS or a DLQ hop) do not matter."""
        attributes = {**_attributes(), "other": {"DataType": "Number", "StringValue": "7"}}
        assert decode_message(encode_batch(_batch()), attributes).batch_id


class TestPoisonMessage:
    @pytest.mark.parametrize(
        ("attributes", "needle"),
        [
            ({}, SCHEMA_ATTRIBUTE),
            ({VERSION_ATTRIBUTE: _attributes()[VERSION_ATTRIBUTE]}, SCHEMA_ATTRIBUTE),
            (_attributes(schema="offpath.v1.AnalyticsEvent"), "AnalyticsEvent"),
            ({**_attributes(), SCHEMA_ATTRIBUTE: SCHEMA_NAME}, SCHEMA_ATTRIBUTE),
            ({**_attributes(), SCHEMA_ATTRIBUTE: {"DataType": "Binary"}}, SCHEMA_ATTRIBUTE),
            (_attributes(schema=None), SCHEMA_ATTRIBUTE),
        ],
        ids=["no-attributes", "no-schema", "wrong-schema", "not-a-mapping", "no-value", "none"],
    )
    def test_missing_or_wrong_schema(self, attributes: dict[str, Any], needle: str) -> None:
        """A message without the right schema attribute is poison, and the reason names it."""
        with pytest.raises(PoisonMessage) as info:
            decode_message(encode_batch(_batch()), attributes)
        assert SCHEMA_ATTRIBUTE in info.value.reason
        assert needle in info.value.reason

    @pytest.mark.parametrize("version", ["2", "1.0", "", None])
    def test_wrong_version(self, version: str | None) -> None:
        """A schema version other than the one this code reads is poison, naming the attribute."""
        with pytest.raises(PoisonMessage) as info:
            decode_message(encode_batch(_batch()), _attributes(version=version))
        assert VERSION_ATTRIBUTE in info.value.reason

    def test_missing_version(self) -> None:
        """A message with the schema but no version attribute is poison."""
        attributes = {SCHEMA_ATTRIBUTE: _attributes()[SCHEMA_ATTRIBUTE]}
        with pytest.raises(PoisonMessage, match=VERSION_ATTRIBUTE):
            decode_message(encode_batch(_batch()), attributes)

    @pytest.mark.parametrize(
        "body",
        ["not base64!", "YWJj\n", "YWJjZA", "é" + encode_batch(_batch())],
        ids=["punctuation", "newline", "bad-padding", "non-ascii"],
    )
    def test_non_base64_body(self, body: str) -> None:
        """A body that is not strict base64 is poison, with a reason that says so."""
        with pytest.raises(PoisonMessage) as info:
            decode_message(body, MESSAGE_ATTRIBUTES)
        assert "not base64" in info.value.reason

    @pytest.mark.parametrize(
        "raw",
        [b"\xff\xff\xff", b"hello world", b"\x0a\x02\xff\xfe"],
        ids=["corrupt-wire", "text", "bad-utf8-string"],
    )
    def test_bytes_that_are_not_a_batch(self, raw: bytes) -> None:
        """Valid base64 of bytes that do not parse as an AnalyticsBatch is poison."""
        with pytest.raises(PoisonMessage) as info:
            decode_message(base64.b64encode(raw).decode(), MESSAGE_ATTRIBUTES)
        assert "not an AnalyticsBatch" in info.value.reason

    @pytest.mark.parametrize(
        "batch",
        [analytics_pb2.AnalyticsBatch(), _batch(_event(), batch_id="")],
        ids=["empty", "events-without-id"],
    )
    def test_missing_batch_id(self, batch: analytics_pb2.AnalyticsBatch) -> None:
        """A batch that parses but has no batch_id is poison: it could not be deduplicated."""
        with pytest.raises(PoisonMessage, match="batch_id"):
            decode_message(encode_batch(batch), MESSAGE_ATTRIBUTES)

    def test_poison_message_is_a_value_error_carrying_its_reason(self) -> None:
        """PoisonMessage is a ValueError whose str and ``reason`` are the same text."""
        error = PoisonMessage("because")
        assert isinstance(error, ValueError)
        assert str(error) == error.reason == "because"


class TestSizes:
    @pytest.mark.parametrize("events", [0, 1, 2, 3, 17, 200])
    def test_encoded_size_matches_the_body(self, events: int) -> None:
        """encoded_size of the serialized size is exactly the length of the encoded body."""
        batch = _batch(*(_event(query="q" * i) for i in range(events)))
        assert encoded_size(batch.ByteSize()) == len(encode_batch(batch))

    @pytest.mark.parametrize("n", range(0, 13))
    def test_encoded_size_of_raw_lengths(self, n: int) -> None:
        """encoded_size agrees with base64 on every remainder mod 3, padding included."""
        assert encoded_size(n) == len(base64.b64encode(b"x" * n))

    def test_attributes_size_of_the_standard_attributes(self) -> None:
        """The standard attributes count name, data type and value bytes, as SQS counts them."""
        expected = sum(
            len(name) + len("String") + len(value)
            for name, value in [
                (SCHEMA_ATTRIBUTE, SCHEMA_NAME),
                (VERSION_ATTRIBUTE, SCHEMA_VERSION),
            ]
        )
        assert attributes_size(MESSAGE_ATTRIBUTES) == MESSAGE_ATTRIBUTES_SIZE == expected

    def test_attributes_size_counts_utf8_bytes_and_binary_values(self) -> None:
        """Non-ASCII names and values count in UTF-8 bytes, binary values by their length."""
        attributes = {
            "naïve": {"DataType": "String", "StringValue": "ü"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"},
            "n": {"DataType": "Number", "StringValue": "12"},
        }
        assert attributes_size(attributes) == (6 + 6 + 2) + (4 + 6 + 3) + (1 + 6 + 2)

    def test_attributes_size_of_nothing(self) -> None:
        """No attributes cost nothing."""
        assert attributes_size({}) == 0
