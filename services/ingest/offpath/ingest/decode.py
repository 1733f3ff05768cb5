"""From an SQS message to what the store can take: one verdict per message.

:func:`decode` turns a message's body and attributes into either a
:class:`Decoded` batch, its events split into those the store takes and
those it never can (each with why), or a :class:`Poison` verdict with the
reason the whole message goes to the dead-letter queue. It never raises:
whatever the bytes, the consumer and the Lambda handler get an answer on the
first receive, so nothing undecodable comes back three times or holds up its
FIFO group meanwhile.

The whole message is poison when it is not ours or not a batch at all:

- its ``offpath-schema`` / ``offpath-schema-version`` attributes are not
  ``offpath.v1.AnalyticsBatch`` / ``1``;
- the body is not base64, or its bytes are not a protobuf message;
- it parses, but is some other message: protobuf parses nearly anything, so
  a field of the batch's own number that did not parse as that field (a
  wire type the batch never uses there: ``QueryRequest.top_k`` read as
  ``producer_id``, ``HealthCheckResponse.status`` read as ``batch_id``) is
  taken as proof of a foreign message. Fields of numbers the schema does not
  have are *kept* (a newer producer's additions; the store keeps them in the
  payload);
- it has no ``batch_id`` (the key its events are claimed under), or one
  longer than :data:`MAX_BATCH_ID_CHARS`, or no events at all;
- none of its events can be stored: the message goes as it came (original
  body and attributes), the reason ("invalid events: ...") listing each
  event's problem as for the invalid events split off a good batch.

Otherwise the events the store cannot take are split off (:func:`event_problem`
says why, see :data:`MAX_ITEM_BYTES` and the checks there) and the others are
written. Every check is a pure function of the message, never of the clock,
so a redelivered message splits the same way: its valid events are written
again under the same batch id (the store's claims and rollup markers make
that count once) and its invalid events go to the DLQ as one letter with a
de-duplication id stable across redeliveries. What the checks guard against
is exactly what the store's write path would raise on or DynamoDB would
refuse: ``Timestamp.ToNanoseconds`` and ``datetime`` outside 1970-9999,
numbers DynamoDB cannot hold, items over 400 KB, rollup sort keys over
1024 bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from offpath.ingest import rollups
from offpath.kit.ids import is_uuid
from offpath.kit.sqs import (
    SCHEMA_ATTRIBUTE,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    VERSION_ATTRIBUTE,
    string_attribute,
)
from offpath.v1 import analytics_pb2

# google.protobuf.Timestamp's valid range ends at 9999-12-31T23:59:59Z (and
# Timestamp.ToNanoseconds raises past it); the store's day partitions and
# ISO times need 1970 or later.
MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799
# google.protobuf.Duration's valid range: +-10,000 years.
MAX_DURATION_SECONDS: Final = 315_576_000_000
_MAX_NANOS: Final = 999_999_999
# DynamoDB's item size limit. An event's item holds its payload and most of
# its fields again as attributes; :func:`item_bytes_bound` is an upper bound
# of the item the store makes, so an event that passes always fits.
MAX_ITEM_BYTES: Final = 400 * 1024
# A rollup item's sort key (HH:MM#service#method#kind) within DynamoDB's
# 1024 bytes for a sort key.
MAX_SORT_KEY_BYTES: Final = 1024
# Skills per event: the query engine returns at most 20; each distinct skill
# becomes a counter of its rollup item, so an event cannot grow one past
# DynamoDB's item limit.
MAX_SKILLS: Final = 100
# A skill's score is a similarity; the store writes it as a fixed-point
# number, which this bound keeps well inside DynamoDB's 38 digits.
MAX_SCORE: Final = 1e9
# The batch id names the message's claims and rollup markers (partition key
# m#<batch id>); FIFO de-duplication ids are at most 128 characters too.
MAX_BATCH_ID_CHARS: Final = 128
# Reasons name at most this many events' problems (the DLQ attribute holds
# 1000 characters).
_REASON_EVENTS: Final = 5
_ITEM_OVERHEAD_BYTES: Final = 2048
_PER_ENTRY_BYTES: Final = 40
_WIRE_TYPES: Final = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group", 5: "32-bit"}


@dataclass(frozen=True, slots=True)
class Poison:
    """The whole message goes to the DLQ: ``reason`` says why, ``kind`` is a
    short label for counting (``schema``, ``undecodable``, ``foreign``,
    ``empty``, ``no_valid_events``)."""

    reason: str
    kind: str
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decoded:
    """A batch with at least one storable event: ``valid`` are written,
    ``invalid`` (event, why) are dead-lettered as a batch of their own."""

    batch: analytics_pb2.AnalyticsBatch
    valid: list[analytics_pb2.AnalyticsEvent]
    invalid: list[tuple[analytics_pb2.AnalyticsEvent, str]] = field(default_factory=list)


def decode(body: str, attributes: Mapping[str, Any]) -> Decoded | Poison:
    """The verdict on one SQS message (see the module's docstring); never raises."""
    schema = string_attribute(attributes, SCHEMA_ATTRIBUTE)
    if schema != SCHEMA_NAME:
        return Poison(
            f"message attribute {SCHEMA_ATTRIBUTE}={_short(schema)}, want {SCHEMA_NAME!r}",
            "schema",
        )
    version = string_attribute(attributes, VERSION_ATTRIBUTE)
    if version != SCHEMA_VERSION:
        return Poison(
            f"message attribute {VERSION_ATTRIBUTE}={_short(version)}, want {SCHEMA_VERSION!r}",
            "schema",
        )
    try:
        raw = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        return Poison(f"body is not base64: {exc}", "undecodable")
    batch = analytics_pb2.AnalyticsBatch()
    try:
        batch.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        return Poison(f"body is not an AnalyticsBatch: {exc}", "undecodable")
    foreign = _foreign_field(batch, ("created_at", batch.created_at))
    if foreign is not None:
        return Poison(f"body is not an AnalyticsBatch: {foreign}", "foreign")
    if not batch.batch_id:
        return Poison("batch has no batch_id", "foreign")
    if len(batch.batch_id) > MAX_BATCH_ID_CHARS:
        return Poison(
            f"batch_id is {len(batch.batch_id)} characters; at most {MAX_BATCH_ID_CHARS}",
            "foreign",
        )
    if not batch.events:
        return Poison("batch has no events", "empty")
    valid, invalid = split_events(batch.events)
    if not valid:
        return Poison(
            # The same words as the letter of a good batch's invalid events.
            "invalid events: " + problems(invalid),
            "no_valid_events",
            tuple(_event_label(event) for event, _ in invalid),
        )
    return Decoded(batch, valid, invalid)


def split_events(
    events: Iterable[analytics_pb2.AnalyticsEvent],
) -> tuple[list[analytics_pb2.AnalyticsEvent], list[tuple[analytics_pb2.AnalyticsEvent, str]]]:
    """Events the store takes, and those it never can, each with why."""
    valid: list[analytics_pb2.AnalyticsEvent] = []
    invalid: list[tuple[analytics_pb2.AnalyticsEvent, str]] = []
    for event in events:
        problem = event_problem(event)
        if problem is None:
            valid.append(event)
        else:
            invalid.append((event, problem))
    return valid, invalid


def problems(invalid: Sequence[tuple[analytics_pb2.AnalyticsEvent, str]]) -> str:
    """The problems of ``invalid`` events as one reason (the first few, then a count)."""
    shown = "; ".join(problem for _, problem in invalid[:_REASON_EVENTS])
    more = len(invalid) - _REASON_EVENTS
    return f"{shown}; and {more} more" if more > 0 else shown


def event_problem(event: analytics_pb2.AnalyticsEvent) -> str | None:
    """Why the store can never take ``event`` (a short reason naming the
    event by its id, never its query text), or None when it can."""
    if not is_uuid(event.event_id):
        return f"event_id {event.event_id[:64]!r} is not a UUID"
    name = f"event {event.event_id}"
    foreign = _foreign_field(
        event,
        ("occurred_at", event.occurred_at),
        ("processing_time", event.processing_time),
        *((f"matched_skills[{i}]", skill) for i, skill in enumerate(event.matched_skills)),
    )
    if foreign is not None:
        return f"{name} is not an AnalyticsEvent: {foreign}"
    problem = (
        _time_problem(event.occurred_at, event.HasField("occurred_at"))
        or _duration_problem(event.processing_time)
        or _number_problem(event)
        or _size_problem(event)
    )
    return None if problem is None else f"{name}: {problem}"


def item_bytes_bound(event: analytics_pb2.AnalyticsEvent) -> int:
    """At least the size DynamoDB counts for the store's item of ``event``:
    the payload (the event's encoding) plus its fields again as attributes,
    which take no more than the encoding does, plus a fixed allowance for
    the attribute names, keys, times and numbers, and per skill and
    attribute entry for their map and list framing."""
    entries = len(event.matched_skills) + len(event.attributes)
    return 2 * event.ByteSize() + _ITEM_OVERHEAD_BYTES + _PER_ENTRY_BYTES * entries


def _time_problem(stamp: Any, present: bool) -> str | None:
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return "has no occurred_at"
    if not 0 <= stamp.nanos <= _MAX_NANOS:
        return f"occurred_at nanos {stamp.nanos} is outside 0..{_MAX_NANOS}"
    if stamp.seconds <= 0:
        return f"occurred_at {stamp.seconds} s is before 1970-01-01T00:00:01Z"
    if stamp.seconds > MAX_TIMESTAMP_SECONDS:
        return f"occurred_at {stamp.seconds} s is after 9999-12-31T23:59:59Z"
    return None


def _duration_problem(duration: Any) -> str | None:
    seconds, nanos = duration.seconds, duration.nanos
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) > _MAX_NANOS:
        return f"processing_time {seconds} s {nanos} ns is outside a Duration's range"
    if seconds < 0 or nanos < 0:
        return f"processing_time {seconds} s {nanos} ns is negative"
    return None


def _number_problem(event: analytics_pb2.AnalyticsEvent) -> str | None:
    if event.token_count < 0:
        return f"token_count {event.token_count} is negative"
    if event.status_code < 0:
        return f"status_code {event.status_code} is not a gRPC status code"
    if len(event.matched_skills) > MAX_SKILLS:
        return f"{len(event.matched_skills)} matched_skills; at most {MAX_SKILLS}"
    for index, skill in enumerate(event.matched_skills):
        if not math.isfinite(skill.score) or abs(skill.score) > MAX_SCORE:
            return f"matched_skills[{index}] score {skill.score!r} is not a finite similarity"
    if "" in event.attributes:
        return "attributes has an empty key (DynamoDB map keys are names of 1 byte or more)"
    return None


def _size_problem(event: analytics_pb2.AnalyticsEvent) -> str | None:
    bound = item_bytes_bound(event)
    if bound > MAX_ITEM_BYTES:
        return (
            f"{event.ByteSize()} bytes encoded; its item (up to {bound} bytes) would pass "
            f"DynamoDB's {MAX_ITEM_BYTES}-byte item limit"
        )
    if len(event.service) + len(event.method) > MAX_SORT_KEY_BYTES:
        # Too long whatever the escaping; such series are not worth caching.
        size = len(event.service.encode()) + len(event.method.encode())
    else:
        size = _rollup_sort_key_bytes(event.service, event.method)
    if size > MAX_SORT_KEY_BYTES:
        return (
            f"service and method take {size} bytes or more in a rollup sort key; "
            f"DynamoDB allows {MAX_SORT_KEY_BYTES}"
        )
    return None


def _foreign_field(message: Message, *parts: tuple[str, Message]) -> str | None:
    """A field of one of ``message``'s own numbers that did not parse as that
    field (so the bytes are some other message), described; None when every
    unknown field has a number the schema does not use. ``parts`` are its
    sub-messages to check too, by name."""
    known = message.DESCRIPTOR.fields_by_number
    unknowns = UnknownFieldSet(message)
    for index in range(len(unknowns)):
        unknown = unknowns[index]
        if unknown.field_number in known:
            wire = _WIRE_TYPES.get(unknown.wire_type, str(unknown.wire_type))
            return (
                f"field {unknown.field_number} ({known[unknown.field_number].name}) "
                f"does not parse as {message.DESCRIPTOR.name}'s field (wire type {wire})"
            )
    for name, part in parts:
        inner = _foreign_field(part)
        if inner is not None:
            return f"{name}: {inner}"
    return None


@functools.lru_cache(maxsize=1024)
def _rollup_sort_key_bytes(service: str, method: str) -> int:
    """Bytes of the longest rollup sort key of a series (its query items'):
    events of a series share it, so it is worked out once per series."""
    _, sort_key = rollups.rollup_key(
        0, service, method, f"{rollups.QUERIES}{rollups.QUERY_SHARDS - 1}"
    )
    return len(sort_key.encode())


def _event_label(event: analytics_pb2.AnalyticsEvent) -> str:
    return event.event_id if is_uuid(event.event_id) else repr(event.event_id[:64])


def _short(value: str | None) -> str:
    return repr(value if value is None else value[:64])
