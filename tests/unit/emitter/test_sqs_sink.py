"""Unit tests for offpath.emitter.sqs.SqsSink over a stub SQS client: packing, entries,
retries and backoff, queue URL resolution."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from google.protobuf import timestamp_pb2

from offpath.emitter import EmitterSettings, ExportResult, SqsSink
from offpath.kit.wire import attributes_size, decode_message, encoded_size
from offpath.v1 import analytics_pb2

QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/000000000000/events.fifo"

Step = dict[str, Any] | BaseException | Callable[[list[dict[str, Any]]], dict[str, Any]]


def _all_ok(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "Successful": [
            {"Id": e["Id"], "MessageId": f"m-{e['Id']}", "MD5OfMessageBody": "x"} for e in entries
        ],
        "Failed": [],
    }


def _fail(ids: set[str], *, sender_fault: bool) -> Step:
    """A response where ``ids`` failed and every other entry succeeded."""

    def respond(entries: list[dict[str, Any]]) -> dict[str, Any]:
        response = _all_ok([e for e in entries if e["Id"] not in ids])
        response["Failed"] = [
            {"Id": e["Id"], "SenderFault": sender_fault, "Code": "Boom", "Message": "no"}
            for e in entries
            if e["Id"] in ids
        ]
        return response

    return respond


class StubSqs:
    """The SQS client calls SqsSink makes, recording arguments and replaying a script of
    send_message_batch outcomes (a response, an exception, or a function of the entries);
    once the script runs out every entry succeeds."""

    def __init__(self, script: Sequence[Step] = (), *, url_script: Sequence[Step] = ()) -> None:
        self.script = list(script)
        self.url_script = list(url_script)
        self.batches: list[dict[str, Any]] = []
        self.url_requests: list[dict[str, Any]] = []
        self.closed = 0

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.batches.append(copy.deepcopy(kwargs))
        step = self.script.pop(0) if self.script else _all_ok
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(kwargs["Entries"])
        return step

    def get_queue_url(self, **kwargs: Any) -> dict[str, Any]:
        self.url_requests.append(kwargs)
        step = self.url_script.pop(0) if self.url_script else None
        if isinstance(step, BaseException):
            raise step
        return {"QueueUrl": QUEUE_URL}

    def close(self) -> None:
        self.closed += 1

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [entry for call in self.batches for entry in call["Entries"]]


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def _settings(**overrides: Any) -> EmitterSettings:
    base = EmitterSettings(
        queue_name="events.fifo",
        queue_url=QUEUE_URL,
        producer_id="producer-1",
        events_per_message=500,
        max_message_bytes=256 * 1024,
    )
    return dataclasses.replace(base, **overrides)


def _event(i: int, query_len: int = 20) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=f"0190a6f2-7a55-7cc1-9d2b-{i:012d}",
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query="q" * query_len,
        producer_id="producer-1",
        status_code=i % 3,
    )
    event.occurred_at.FromNanoseconds(1_790_000_000_000_000_000 + i)
    event.matched_skills.add(name="Go", score=0.5)
    return event


def _sink(
    stub: StubSqs,
    settings: EmitterSettings,
    time: FakeTime | None = None,
    rng: Callable[[], float] = lambda: 1.0,
) -> SqsSink:
    fake = time or FakeTime()
    client: Any = stub
    return SqsSink(
        settings, client_factory=lambda: client, sleep=fake.sleep, clock=fake.clock, rng=rng
    )


def _sent_batches(stub: StubSqs) -> list[analytics_pb2.AnalyticsBatch]:
    """Every message body sent, decoded the way the consumer will, in send order; resends
    of one message (same Id within a call) are counted once."""
    seen: dict[tuple[int, str], analytics_pb2.AnalyticsBatch] = {}
    for n, call in enumerate(stub.batches):
        for entry in call["Entries"]:
            batch = decode_message(entry["MessageBody"], entry["MessageAttributes"])
            seen.setdefault((n, batch.batch_id), batch)
    unique = {batch.batch_id: batch for batch in seen.values()}
    return list(unique.values())


def _accounted(result: ExportResult) -> int:
    return result.sent + sum(result.dropped.values())


def _message_size(entry: dict[str, Any]) -> int:
    return len(entry["MessageBody"]) + attributes_size(entry["MessageAttributes"])


class TestPacking:
    def test_events_per_message(self) -> None:
        """No message carries more than events_per_message events, and none is left short
        while more events follow."""
        stub = StubSqs()
        result = _sink(stub, _settings(events_per_message=5)).export(
            [_event(i) for i in range(23)], deadline=2_000.0
        )
        assert [len(b.events) for b in _sent_batches(stub)] == [5, 5, 5, 5, 3]
        assert result.sent == 23

    def test_max_message_bytes_per_message_and_call(self) -> None:
        """Every message (body plus attributes, as SQS counts) and every call's total stay
        within max_message_bytes, and messages are filled close to the limit."""
        limit = 4096
        rng = random.Random(7)
        events = [_event(i, rng.randint(10, 1500)) for i in range(80)]
        stub = StubSqs()
        result = _sink(stub, _settings(max_message_bytes=limit)).export(events, deadline=2_000.0)
        assert result.sent == 80
        assert len(stub.batches) > 1
        for call in stub.batches:
            assert 1 <= len(call["Entries"]) <= 10
            assert sum(_message_size(entry) for entry in call["Entries"]) <= limit
            for entry in call["Entries"]:
                assert _message_size(entry) <= limit
        batches = _sent_batches(stub)
        attrs = attributes_size(stub.entries[0]["MessageAttributes"])
        position = 0
        for batch in batches[:-1]:
            position += len(batch.events)
            nxt = events[position].ByteSize()
            grown = batch.ByteSize() + 1 + (1 if nxt < 128 else 2) + nxt
            # The next event would not have fitted (a few bytes of estimate slack allowed).
            assert encoded_size(grown) + attrs > limit - 16

    def test_at_most_ten_entries_per_call(self) -> None:
        """SendMessageBatch gets at most 10 entries; 25 one-event messages take 3 calls."""
        stub = StubSqs()
        result = _sink(stub, _settings(events_per_message=1)).export(
            [_event(i) for i in range(25)], deadline=2_000.0
        )
        assert [len(call["Entries"]) for call in stub.batches] == [10, 10, 5]
        assert result.sent == 25
        assert result.requests == 3
        for call in stub.batches:
            ids = [entry["Id"] for entry in call["Entries"]]
            assert len(set(ids)) == len(ids)

    def test_too_large_event_is_dropped_alone(self) -> None:
        """An event that cannot fit any message is counted 'too_large'; its neighbours go."""
        events = [_event(0), _event(1, query_len=5_000), _event(2)]
        stub = StubSqs()
        result = _sink(stub, _settings(max_message_bytes=4096)).export(events, deadline=2_000.0)
        assert result.dropped["too_large"] == 1
        assert result.sent == 2
        assert _accounted(result) == 3
        sent_ids = [e.event_id for b in _sent_batches(stub) for e in b.events]
        assert sent_ids == [events[0].event_id, events[2].event_id]

    def test_messages_decode_back_to_the_events(self) -> None:
        """What is sent decodes with the consumer's decoder into the same events, in order,
        each batch stamped with the producer and a unique batch id."""
        events = [_event(i, query_len=i * 7) for i in range(60)]
        stub = StubSqs()
        _sink(stub, _settings(events_per_message=7)).export(events, deadline=2_000.0)
        batches = _sent_batches(stub)
        assert [e for b in batches for e in b.events] == events
        assert {b.producer_id for b in batches} == {"producer-1"}
        assert len({b.batch_id for b in batches}) == len(batches)
        assert all(b.created_at.seconds > 0 for b in batches)

    def test_empty_export_sends_nothing(self) -> None:
        """No events, no calls."""
        stub = StubSqs()
        result = _sink(stub, _settings()).export([], deadline=2_000.0)
        assert stub.batches == []
        assert result == ExportResult()

    def test_longest_producer_id_stays_within_the_limit(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a 128-character producer id, no packed message exceeds max_message_bytes."""
        # Pin created_at to a time whose nanos take the full 5-byte varint, as the
        # overhead estimate assumes, so only the producer id length can be off.
        monkeypatch.setattr(
            timestamp_pb2.Timestamp,
            "GetCurrentTime",
            lambda self: self.FromNanoseconds(1_790_000_000_999_999_000),
        )
        limit = 4098
        settings = _settings(producer_id="p" * 128, events_per_message=1, max_message_bytes=limit)
        oversize = []
        for query_len in range(2700, 2800):
            stub = StubSqs()
            _sink(stub, settings).export([_event(0, query_len)], deadline=2_000.0)
            oversize += [_message_size(e) for e in stub.entries if _message_size(e) > limit]
        assert oversize == []


class TestEntries:
    @pytest.mark.parametrize(
        ("queue_name", "queue_url"),
        [("events.fifo", None), ("events.fifo", QUEUE_URL), ("ignored", QUEUE_URL)],
    )
    def test_fifo_entries_carry_group_and_dedup_ids(
        self, queue_name: str, queue_url: str | None
    ) -> None:
        """On a FIFO queue the group id is the producer id and the dedup id the batch id."""
        stub = StubSqs()
        settings = _settings(queue_name=queue_name, queue_url=queue_url, events_per_message=2)
        _sink(stub, settings).export([_event(i) for i in range(5)], deadline=2_000.0)
        assert len(stub.entries) == 3
        for entry in stub.entries:
            batch = decode_message(entry["MessageBody"], entry["MessageAttributes"])
            assert entry["MessageGroupId"] == "producer-1"
            assert entry["MessageDeduplicationId"] == batch.batch_id

    @pytest.mark.parametrize(
        ("queue_name", "queue_url"),
        [("events", None), ("events", "https://sqs.eu-west-1.amazonaws.com/0/events")],
    )
    def test_standard_entries_have_neither(self, queue_name: str, queue_url: str | None) -> None:
        """On a standard queue entries carry no group or dedup id (SQS would reject them)."""
        stub = StubSqs()
        settings = _settings(queue_name=queue_name, queue_url=queue_url)
        _sink(stub, settings).export([_event(1)], deadline=2_000.0)
        (entry,) = stub.entries
        assert "MessageGroupId" not in entry
        assert "MessageDeduplicationId" not in entry


class TestRetries:
    def test_partial_failure_resends_only_the_failed_entries(self) -> None:
        """Failed entries that are not the sender's fault are resent alone, unchanged, so the
        FIFO dedup id of each resend matches its first send."""
        stub = StubSqs([_fail({"1"}, sender_fault=False)])
        time = FakeTime()
        result = _sink(stub, _settings(events_per_message=2), time).export(
            [_event(i) for i in range(6)], deadline=time.now + 30
        )
        first, second = stub.batches
        assert [e["Id"] for e in first["Entries"]] == ["0", "1", "2"]
        assert second["Entries"] == [first["Entries"][1]]
        assert result.sent == 6
        assert (result.requests, result.retries) == (2, 1)
        assert time.sleeps == [pytest.approx(0.4)]

    def test_sender_fault_is_rejected_not_retried(self) -> None:
        """An entry SQS rejects as the sender's fault is dropped as 'rejected' at once."""
        stub = StubSqs([_fail({"0"}, sender_fault=True)])
        time = FakeTime()
        result = _sink(stub, _settings(events_per_message=2), time).export(
            [_event(i) for i in range(3)], deadline=time.now + 30
        )
        assert len(stub.batches) == 1
        assert time.sleeps == []
        assert result.dropped["rejected"] == 2
        assert result.sent == 1
        assert _accounted(result) == 3

    def test_missing_entries_are_resent(self) -> None:
        """An entry neither successful nor failed in the response is treated as unsent."""
        stub = StubSqs([lambda entries: _all_ok(entries[:1])])
        time = FakeTime()
        result = _sink(stub, _settings(events_per_message=1), time).export(
            [_event(0), _event(1)], deadline=time.now + 30
        )
        assert [e["Id"] for e in stub.batches[1]["Entries"]] == ["1"]
        assert result.sent == 2

    def test_connection_errors_give_up_at_the_deadline(self) -> None:
        """A client that cannot connect is retried with capped exponential backoff until the
        next wait would pass the deadline; then the events are 'send_failed'."""
        error = EndpointConnectionError(endpoint_url="https://sqs.example")
        stub = StubSqs([error] * 100)
        time = FakeTime()
        result = _sink(stub, _settings(events_per_message=3), time).export(
            [_event(i) for i in range(7)], deadline=time.now + 30
        )
        assert time.sleeps == pytest.approx([0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])
        assert len(stub.batches) == 9
        assert result.dropped["send_failed"] == 7
        assert result.sent == 0
        assert (result.requests, result.retries) == (9, 8)
        assert time.now <= 1_000.0 + 30

    def test_backoff_is_full_jitter(self) -> None:
        """Each wait is the random fraction times the capped exponential step."""
        stub = StubSqs([EndpointConnectionError(endpoint_url="x")] * 3)
        time = FakeTime()
        fractions = itertools.cycle([0.25, 0.0, 0.5])
        result = _sink(stub, _settings(), time, rng=lambda: next(fractions)).export(
            [_event(0)], deadline=time.now + 30
        )
        assert time.sleeps == pytest.approx([0.25 * 0.4, 0.0, 0.5 * 1.6])
        assert result.sent == 1
        assert result.retries == 3

    def test_client_error_is_retried(self) -> None:
        """A whole-call ClientError (throttling left over by botocore) is retried."""
        throttled = ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "SendMessageBatch"
        )
        stub = StubSqs([throttled])
        time = FakeTime()
        result = _sink(stub, _settings(), time).export([_event(0)], deadline=time.now + 30)
        assert result.sent == 1
        assert len(stub.batches) == 2
        assert stub.batches[0] == stub.batches[1]

    def test_past_deadline_tries_once(self) -> None:
        """With no time left, one attempt is made and a failure is not waited out."""
        stub = StubSqs([EndpointConnectionError(endpoint_url="x")])
        time = FakeTime()
        result = _sink(stub, _settings(), time).export([_event(0)], deadline=time.now)
        assert len(stub.batches) == 1
        assert time.sleeps == []
        assert result.dropped["send_failed"] == 1


class TestQueueUrl:
    def test_resolved_once_and_cached(self) -> None:
        """Without a configured URL, get_queue_url is called once and reused by every send."""
        stub = StubSqs()
        sink = _sink(stub, _settings(queue_url=None, events_per_message=1))
        sink.export([_event(i) for i in range(12)], deadline=2_000.0)
        sink.export([_event(99)], deadline=2_000.0)
        assert stub.url_requests == [{"QueueName": "events.fifo"}]
        assert len(stub.batches) == 3
        assert {call["QueueUrl"] for call in stub.batches} == {QUEUE_URL}

    def test_configured_url_skips_the_lookup(self) -> None:
        """A configured queue URL is used as is."""
        stub = StubSqs()
        _sink(stub, _settings()).export([_event(0)], deadline=2_000.0)
        assert stub.url_requests == []
        assert stub.batches[0]["QueueUrl"] == QUEUE_URL

    def test_failed_lookup_is_retried(self) -> None:
        """A failing get_queue_url counts as a failed attempt and is retried with backoff."""
        missing = ClientError(
            {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "no"}},
            "GetQueueUrl",
        )
        stub = StubSqs(url_script=[missing])
        time = FakeTime()
        result = _sink(stub, _settings(queue_url=None), time).export(
            [_event(0)], deadline=time.now + 30
        )
        assert len(stub.url_requests) == 2
        assert result.sent == 1
        assert len(time.sleeps) == 1


class TestClient:
    def test_client_is_made_lazily_once_and_closed(self) -> None:
        """The client is built on first send, reused, and closed by close (twice is safe)."""
        stub = StubSqs()
        made = 0

        def factory() -> Any:
            nonlocal made
            made += 1
            return stub

        sink = SqsSink(_settings(), client_factory=factory, sleep=FakeTime().sleep)
        assert made == 0
        sink.export([_event(0)], deadline=float("inf"))
        sink.export([_event(1)], deadline=float("inf"))
        assert made == 1
        sink.close()
        sink.close()
        assert stub.closed == 1
