"""Unit tests for offpath.kit.sqs: queue names and look-up, FIFO fields, the message
codec and its size arithmetic, and dead-letter messages."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from botocore.exceptions import ClientError

from offpath.kit.settings import SettingsError
from offpath.kit.sqs import (
    DEAD_LETTER_GROUP,
    DEFAULT_QUEUE_NAME,
    ENV_DLQ_NAME,
    ENV_QUEUE_NAME,
    MAX_REASON_CHARS,
    MESSAGE_ATTRIBUTES,
    MESSAGE_ATTRIBUTES_SIZE,
    REASON_ATTRIBUTE,
    SCHEMA_ATTRIBUTE,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SOURCE_ID_ATTRIBUTE,
    VERSION_ATTRIBUTE,
    PoisonMessage,
    QueueNames,
    attributes_size,
    dead_letter_message,
    decode_message,
    default_dlq_name,
    encode_batch,
    encoded_size,
    fifo_fields,
    is_fifo,
    queue_name_from_env,
    queue_url,
    string_attribute,
    without_dead_letter_attributes,
)
from offpath.testing.sqs import FakeSqs
from offpath.v1 import analytics_pb2

FIFO_DLQ_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/events-dlq.fifo"
STANDARD_DLQ_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/events-dlq"


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


class TestQueueNames:
    def test_defaults_are_the_fifo_pair(self) -> None:
        """With nothing set, the queue is the default FIFO queue and the DLQ its FIFO twin."""
        names = QueueNames.from_env({})
        assert names == QueueNames()
        assert names == QueueNames(queue=DEFAULT_QUEUE_NAME, dlq="offpath-events-dlq.fifo")

    @pytest.mark.parametrize(
        ("queue", "dlq"),
        [("events", "events-dlq"), ("events.fifo", "events-dlq.fifo"), ("a.b", "a.b-dlq")],
    )
    def test_dlq_name_is_derived_from_the_queue(self, queue: str, dlq: str) -> None:
        """Setting the queue alone is enough: the DLQ gets its name with -dlq before .fifo."""
        assert QueueNames.from_env({ENV_QUEUE_NAME: queue}) == QueueNames(queue=queue, dlq=dlq)
        assert default_dlq_name(queue) == dlq

    def test_a_blank_dlq_name_is_derived_too(self) -> None:
        """A DLQ variable set to blank counts as unset."""
        names = QueueNames.from_env({ENV_QUEUE_NAME: "events", ENV_DLQ_NAME: "  "})
        assert names.dlq == "events-dlq"

    def test_explicit_names_are_used_as_given(self) -> None:
        """Each name comes from its own variable when set, whitespace stripped."""
        names = QueueNames.from_env({ENV_QUEUE_NAME: " q ", ENV_DLQ_NAME: "elsewhere"})
        assert names == QueueNames(queue="q", dlq="elsewhere")

    @pytest.mark.parametrize(
        "env",
        [
            {ENV_QUEUE_NAME: "events", ENV_DLQ_NAME: "events-dlq.fifo"},
            {ENV_QUEUE_NAME: "events.fifo", ENV_DLQ_NAME: "events-dlq"},
            {ENV_DLQ_NAME: "events-dlq"},
        ],
        ids=["standard-queue-fifo-dlq", "fifo-queue-standard-dlq", "default-queue-standard-dlq"],
    )
    def test_fifo_mismatch_names_both_variables(self, env: dict[str, str]) -> None:
        """A FIFO queue with a standard DLQ (or the reverse) fails, naming both variables."""
        with pytest.raises(SettingsError) as info:
            QueueNames.from_env(env)
        assert ENV_QUEUE_NAME in str(info.value)
        assert ENV_DLQ_NAME in str(info.value)

    def test_queue_name_from_env(self) -> None:
        """The producer's one name: the variable's value, or the default FIFO queue."""
        assert queue_name_from_env({}) == DEFAULT_QUEUE_NAME
        assert queue_name_from_env({ENV_QUEUE_NAME: "events"}) == "events"

    @pytest.mark.parametrize(
        ("name", "fifo"),
        [
            ("events.fifo", True),
            ("https://sqs.eu-west-1.amazonaws.com/0/events.fifo", True),
            ("events", False),
            ("events.fifo-dlq", False),
            ("fifo", False),
        ],
    )
    def test_is_fifo(self, name: str, fifo: bool) -> None:
        """A queue is FIFO when its name (or URL) ends in .fifo, and only then."""
        assert is_fifo(name) is fifo


class TestQueueUrl:
    def test_configured_url_makes_no_call(self) -> None:
        """A configured URL is returned as is, without asking SQS."""
        sqs = FakeSqs()
        assert queue_url(sqs, "events", "https://configured/events") == "https://configured/events"
        assert sqs.journal.calls == []

    @pytest.mark.parametrize("configured", [None, ""])
    def test_otherwise_looked_up_by_name(self, configured: str | None) -> None:
        """Without a configured URL (unset or empty) the URL is SQS's answer for the name."""
        sqs = FakeSqs()
        url = sqs.add_queue("events")
        sqs.add_queue("other")
        assert queue_url(sqs, "events", configured) == url
        assert sqs.journal.of("get_queue_url") == [{"QueueName": "events"}]

    def test_lookup_errors_propagate(self) -> None:
        """A queue that does not exist raises SQS's error to the caller."""
        with pytest.raises(ClientError, match="NonExistentQueue"):
            queue_url(FakeSqs(), "missing")


class TestFifoFields:
    @pytest.mark.parametrize("queue", ["events.fifo", FIFO_DLQ_URL])
    def test_fifo_queue_gets_group_and_dedup(self, queue: str) -> None:
        """On a FIFO queue (by name or URL) both fields are set from the ids given."""
        assert fifo_fields(queue, group_id="producer-1", dedup_id="batch-1") == {
            "MessageGroupId": "producer-1",
            "MessageDeduplicationId": "batch-1",
        }

    @pytest.mark.parametrize("queue", ["events", STANDARD_DLQ_URL])
    def test_standard_queue_gets_neither(self, queue: str) -> None:
        """On a standard queue there are no FIFO fields (SQS would reject them)."""
        assert fifo_fields(queue, group_id="producer-1", dedup_id="batch-1") == {}

    def test_ids_are_cut_to_128_characters(self) -> None:
        """Ids longer than SQS's 128-character limit are truncated, not rejected."""
        fields = fifo_fields("q.fifo", group_id="g" * 200, dedup_id="d" * 129)
        assert fields == {"MessageGroupId": "g" * 128, "MessageDeduplicationId": "d" * 128}


class TestStringAttribute:
    def test_string_value(self) -> None:
        """A String attribute's value is returned."""
        assert string_attribute(_attributes(), SCHEMA_ATTRIBUTE) == SCHEMA_NAME

    @pytest.mark.parametrize(
        "attributes",
        [
            {},
            {"a": "not a mapping"},
            {"a": {"DataType": "Binary", "BinaryValue": b"x"}},
            {"a": {"DataType": "Number", "StringValue": 7}},
        ],
        ids=["absent", "not-a-mapping", "binary", "not-text"],
    )
    def test_none_when_absent_or_not_text(self, attributes: dict[str, Any]) -> None:
        """Anything but a text StringValue reads as None, never raises."""
        assert string_attribute(attributes, "a") is None


def _dead_lettered(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "body": "Ym9keQ==",
        "attributes": MESSAGE_ATTRIBUTES,
        "reason": "body is not an AnalyticsBatch",
        "source_id": "message-1",
    }
    arguments.update(overrides)
    dlq_url = arguments.pop("dlq_url", STANDARD_DLQ_URL)
    return dead_letter_message(dlq_url, **arguments)


class TestDeadLetters:
    def test_without_dead_letter_attributes(self) -> None:
        """A dead-lettering's own attributes are removed, the others kept, the input untouched."""
        attributes = {
            **_attributes(),
            REASON_ATTRIBUTE: {"DataType": "String", "StringValue": "old reason"},
            SOURCE_ID_ATTRIBUTE: {"DataType": "String", "StringValue": "m-0"},
        }
        assert without_dead_letter_attributes(attributes) == _attributes()
        assert REASON_ATTRIBUTE in attributes

    def test_standard_dlq_message(self) -> None:
        """The request sends the body to the DLQ with its attributes, the reason and the
        source id, and no FIFO fields."""
        request = _dead_lettered()
        assert request == {
            "QueueUrl": STANDARD_DLQ_URL,
            "MessageBody": "Ym9keQ==",
            "MessageAttributes": {
                **MESSAGE_ATTRIBUTES,
                REASON_ATTRIBUTE: {
                    "DataType": "String",
                    "StringValue": "body is not an AnalyticsBatch",
                },
                SOURCE_ID_ATTRIBUTE: {"DataType": "String", "StringValue": "message-1"},
            },
        }

    def test_fifo_dlq_message_is_grouped_and_deduplicated_by_source(self) -> None:
        """On a FIFO DLQ every dead letter goes to one group, de-duplicated by its source id."""
        request = _dead_lettered(dlq_url=FIFO_DLQ_URL)
        assert request["MessageGroupId"] == DEAD_LETTER_GROUP
        assert request["MessageDeduplicationId"] == "message-1"

    def test_dead_lettering_twice_keeps_one_copy(self) -> None:
        """Sent twice to a FIFO DLQ (same source id), the request is accepted both times and
        the DLQ holds one message."""
        sqs = FakeSqs()
        dlq = sqs.add_queue("events-dlq.fifo", FifoQueue="true")
        for _ in range(2):
            sqs.send_message(**_dead_lettered(dlq_url=dlq))
        (message,) = sqs.queue(dlq).messages
        assert string_attribute(message.attributes, REASON_ATTRIBUTE) == (
            "body is not an AnalyticsBatch"
        )

    def test_a_second_dead_lettering_replaces_the_first_reason(self) -> None:
        """A message that was dead-lettered before carries only the new reason and source."""
        attributes = {
            **MESSAGE_ATTRIBUTES,
            REASON_ATTRIBUTE: {"DataType": "String", "StringValue": "old reason"},
            SOURCE_ID_ATTRIBUTE: {"DataType": "String", "StringValue": "m-0"},
        }
        kept = _dead_lettered(attributes=attributes, reason="new reason")["MessageAttributes"]
        assert string_attribute(kept, REASON_ATTRIBUTE) == "new reason"
        assert string_attribute(kept, SOURCE_ID_ATTRIBUTE) == "message-1"
        assert len(kept) == len(MESSAGE_ATTRIBUTES) + 2

    def test_at_most_eight_attributes_are_kept(self) -> None:
        """With more attributes than SQS allows beside ours, the first eight are kept, so the
        message has at most ten."""
        attributes = {f"a{i:02d}": {"DataType": "String", "StringValue": str(i)} for i in range(12)}
        kept = _dead_lettered(attributes=attributes)["MessageAttributes"]
        assert len(kept) == 10
        assert [name for name in kept if name.startswith("a")] == [f"a{i:02d}" for i in range(8)]
        assert REASON_ATTRIBUTE in kept
        assert SOURCE_ID_ATTRIBUTE in kept

    def test_long_reason_is_cut(self) -> None:
        """A reason longer than MAX_REASON_CHARS is truncated to it."""
        kept = _dead_lettered(reason="x" * 5000)["MessageAttributes"]
        assert MAX_REASON_CHARS == 1000
        assert string_attribute(kept, REASON_ATTRIBUTE) == "x" * MAX_REASON_CHARS

    def test_empty_body_is_replaced(self) -> None:
        """An empty body (which SQS refuses) is sent as a placeholder text."""
        assert _dead_lettered(body="")["MessageBody"] == "(empty body)"
