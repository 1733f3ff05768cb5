"""Unit tests for offpath.emitter.sqs.SqsSink over the shared FakeSqs: packing, entries,
retries and backoff, queue URL resolution, warm-up and the client's life."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from google.protobuf import timestamp_pb2

from offpath.emitter import EmitterSettings, ExportResult, SqsSendClient, SqsSink
from offpath.emitter.sink import CallLatencies
from offpath.kit.sqs import attributes_size, decode_message, encoded_size
from offpath.testing.calls import client_error
from offpath.testing.sqs import FakeSqs
from offpath.v1 import analytics_pb2

FIFO_QUEUE = "events.fifo"
STANDARD_QUEUE = "events"


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


def _sqs(**attributes: str) -> tuple[FakeSqs, str]:
    """A FakeSqs holding the FIFO queue (with ``attributes``), and that queue's URL; its
    journal starts empty (add_queue is set-up, not a call)."""
    sqs = FakeSqs()
    url = sqs.add_queue(FIFO_QUEUE, FifoQueue="true", **attributes)
    return sqs, url


def _settings(url: str | None, **overrides: Any) -> EmitterSettings:
    base = EmitterSettings(
        queue_name=FIFO_QUEUE,
        queue_url=url,
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
    sqs: FakeSqs,
    settings: EmitterSettings,
    time: FakeTime | None = None,
    rng: Callable[[], float] = lambda: 1.0,
) -> SqsSink:
    fake = time or FakeTime()
    return SqsSink(
        settings, client_factory=lambda: sqs, sleep=fake.sleep, clock=fake.clock, rng=rng
    )


def _calls(sqs: FakeSqs) -> list[dict[str, Any]]:
    return sqs.journal.of("send_message_batch")


def _entries(sqs: FakeSqs) -> list[dict[str, Any]]:
    return [entry for call in _calls(sqs) for entry in call["Entries"]]


def _queued_batches(sqs: FakeSqs, queue: str) -> list[analytics_pb2.AnalyticsBatch]:
    """Every message the queue holds, decoded the way the consumer will, oldest first."""
    return [decode_message(m.body, m.attributes) for m in sqs.queue(queue).messages]


def _accounted(result: ExportResult) -> int:
    return result.sent + sum(result.dropped.values())


def _message_size(entry: Mapping[str, Any]) -> int:
    return len(entry["MessageBody"]) + attributes_size(entry["MessageAttributes"])


def _answer(
    successful: Callable[[str], bool], *, sender_fault: bool = False
) -> Callable[[Mapping[str, Any]], Any]:
    """An injected SendMessageBatch answer: the entries whose Id ``successful`` accepts
    succeed, the others are listed as failed (the sender's fault or not)."""

    def respond(request: Mapping[str, Any]) -> Any:
        entries = request["Entries"]
        return {
            "Successful": [
                {"Id": e["Id"], "MessageId": f"m-{e['Id']}", "MD5OfMessageBody": "x"}
                for e in entries
                if successful(e["Id"])
            ],
            "Failed": [
                {"Id": e["Id"], "SenderFault": sender_fault, "Code": "Boom", "Message": "no"}
                for e in entries
                if not successful(e["Id"])
            ],
        }

    return respond


class TestPacking:
    def test_events_per_message(self) -> None:
        """No message carries more than events_per_message events, and none is left short
        while more events follow."""
        sqs, url = _sqs()
        result = _sink(sqs, _settings(url, events_per_message=5)).export(
            [_event(i) for i in range(23)], deadline=2_000.0
        )
        assert [len(b.events) for b in _queued_batches(sqs, url)] == [5, 5, 5, 5, 3]
        assert result.sent == 23

    def test_max_message_bytes_per_message_and_call(self) -> None:
        """Every message (body plus attributes, as SQS counts) and every call's total stay
        within max_message_bytes, and messages are filled close to the limit."""
        limit = 4096
        rng = random.Random(7)
        events = [_event(i, rng.randint(10, 1500)) for i in range(80)]
        sqs, url = _sqs(MaximumMessageSize=str(limit))
        result = _sink(sqs, _settings(url, max_message_bytes=limit)).export(
            events, deadline=2_000.0
        )
        assert result.sent == 80
        assert len(_calls(sqs)) > 1
        for call in _calls(sqs):
            assert 1 <= len(call["Entries"]) <= 10
            assert sum(_message_size(entry) for entry in call["Entries"]) <= limit
            for entry in call["Entries"]:
                assert _message_size(entry) <= limit
        batches = _queued_batches(sqs, url)
        attrs = attributes_size(_entries(sqs)[0]["MessageAttributes"])
        position = 0
        for batch in batches[:-1]:
            position += len(batch.events)
            nxt = events[position].ByteSize()
            grown = batch.ByteSize() + 1 + (1 if nxt < 128 else 2) + nxt
            # The next event would not have fitted (a few bytes of estimate slack allowed).
            assert encoded_size(grown) + attrs > limit - 16

    def test_at_most_ten_entries_per_call(self) -> None:
        """SendMessageBatch gets at most 10 entries; 25 one-event messages take 3 calls."""
        sqs, url = _sqs()
        result = _sink(sqs, _settings(url, events_per_message=1)).export(
            [_event(i) for i in range(25)], deadline=2_000.0
        )
        assert [len(call["Entries"]) for call in _calls(sqs)] == [10, 10, 5]
        assert result.sent == 25
        assert result.requests == 3
        assert len(sqs.queue(url).messages) == 25
        for call in _calls(sqs):
            ids = [entry["Id"] for entry in call["Entries"]]
            assert len(set(ids)) == len(ids)

    def test_too_large_event_is_dropped_alone(self) -> None:
        """An event that cannot fit any message is counted 'too_large'; its neighbours go."""
        events = [_event(0), _event(1, query_len=5_000), _event(2)]
        sqs, url = _sqs()
        result = _sink(sqs, _settings(url, max_message_bytes=4096)).export(events, deadline=2_000.0)
        assert result.dropped["too_large"] == 1
        assert result.sent == 2
        assert _accounted(result) == 3
        sent_ids = [e.event_id for b in _queued_batches(sqs, url) for e in b.events]
        assert sent_ids == [events[0].event_id, events[2].event_id]

    def test_messages_decode_back_to_the_events(self) -> None:
        """What is sent decodes with the consumer's decoder into the same events, in order,
        each batch stamped with the producer and a unique batch id."""
        events = [_event(i, query_len=i * 7) for i in range(60)]
        sqs, url = _sqs()
        _sink(sqs, _settings(url, events_per_message=7)).export(events, deadline=2_000.0)
        batches = _queued_batches(sqs, url)
        assert [e for b in batches for e in b.events] == events
        assert {b.producer_id for b in batches} == {"producer-1"}
        assert len({b.batch_id for b in batches}) == len(batches)
        assert all(b.created_at.seconds > 0 for b in batches)

    def test_empty_export_sends_nothing(self) -> None:
        """No events, no calls (not even the client's creation)."""
        sqs, url = _sqs()
        result = _sink(sqs, _settings(url)).export([], deadline=2_000.0)
        assert sqs.journal.calls == []
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
        sqs, url = _sqs()
        settings = _settings(
            url, producer_id="p" * 128, events_per_message=1, max_message_bytes=limit
        )
        for query_len in range(2700, 2800):
            _sink(sqs, settings).export([_event(0, query_len)], deadline=2_000.0)
        sizes = [_message_size(entry) for entry in _entries(sqs)]
        assert sizes  # the shortest queries fit; the rest are too large for any message
        assert max(sizes) > limit - 16  # the range reaches the limit ...
        assert [size for size in sizes if size > limit] == []  # ... and never passes it


class TestEntries:
    @pytest.mark.parametrize("configured_url", [False, True])
    def test_fifo_entries_carry_group_and_dedup_ids(self, configured_url: bool) -> None:
        """On a FIFO queue (looked up by name or configured by URL) the group id is the
        producer id and the dedup id the batch id."""
        sqs, url = _sqs()
        settings = _settings(url if configured_url else None, events_per_message=2)
        _sink(sqs, settings).export([_event(i) for i in range(5)], deadline=2_000.0)
        assert len(_entries(sqs)) == 3
        for entry in _entries(sqs):
            batch = decode_message(entry["MessageBody"], entry["MessageAttributes"])
            assert entry["MessageGroupId"] == "producer-1"
            assert entry["MessageDeduplicationId"] == batch.batch_id
        assert len(sqs.queue(url).messages) == 3

    def test_a_configured_fifo_url_decides_over_the_name(self) -> None:
        """A configured URL ending in .fifo gets FIFO fields even if the name says otherwise."""
        sqs, url = _sqs()
        _sink(sqs, _settings(url, queue_name="ignored")).export([_event(0)], deadline=2_000.0)
        (entry,) = _entries(sqs)
        assert entry["MessageGroupId"] == "producer-1"
        assert len(sqs.queue(url).messages) == 1

    @pytest.mark.parametrize("configured_url", [False, True])
    def test_standard_entries_have_neither(self, configured_url: bool) -> None:
        """On a standard queue entries carry no group or dedup id (SQS would reject them)."""
        sqs = FakeSqs()
        url = sqs.add_queue(STANDARD_QUEUE)
        settings = _settings(url if configured_url else None, queue_name=STANDARD_QUEUE)
        result = _sink(sqs, settings).export([_event(1)], deadline=2_000.0)
        (entry,) = _entries(sqs)
        assert "MessageGroupId" not in entry
        assert "MessageDeduplicationId" not in entry
        assert result.sent == 1
        assert len(sqs.queue(url).messages) == 1


class TestRetries:
    def test_partial_failure_resends_only_the_failed_entries(self) -> None:
        """Failed entries that are not the sender's fault are resent alone, unchanged, so the
        FIFO dedup id of each resend matches its first send."""
        sqs, url = _sqs()
        sqs.journal.inject("send_message_batch", _answer(lambda entry_id: entry_id != "1"))
        time = FakeTime()
        result = _sink(sqs, _settings(url, events_per_message=2), time).export(
            [_event(i) for i in range(6)], deadline=time.now + 30
        )
        first, second = _calls(sqs)
        assert [e["Id"] for e in first["Entries"]] == ["0", "1", "2"]
        assert second["Entries"] == [first["Entries"][1]]
        assert result.sent == 6
        assert (result.requests, result.retries) == (2, 1)
        assert time.sleeps == [pytest.approx(0.4)]

    def test_sender_fault_is_rejected_not_retried(self) -> None:
        """An entry SQS rejects as the sender's fault is dropped as 'rejected' at once."""
        sqs, url = _sqs()
        sqs.journal.inject(
            "send_message_batch", _answer(lambda entry_id: entry_id != "0", sender_fault=True)
        )
        time = FakeTime()
        result = _sink(sqs, _settings(url, events_per_message=2), time).export(
            [_event(i) for i in range(3)], deadline=time.now + 30
        )
        assert len(_calls(sqs)) == 1
        assert time.sleeps == []
        assert result.dropped["rejected"] == 2
        assert result.sent == 1
        assert _accounted(result) == 3

    def test_missing_entries_are_resent(self) -> None:
        """An entry neither successful nor failed in the response is treated as unsent."""
        sqs, url = _sqs()
        sqs.journal.inject(
            "send_message_batch",
            lambda request: {
                "Successful": [
                    {"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "x"}
                    for e in request["Entries"][:1]
                ],
                "Failed": [],
            },
        )
        time = FakeTime()
        result = _sink(sqs, _settings(url, events_per_message=1), time).export(
            [_event(0), _event(1)], deadline=time.now + 30
        )
        assert [e["Id"] for e in _calls(sqs)[1]["Entries"]] == ["1"]
        assert result.sent == 2
        assert result.retries == 1

    def test_connection_errors_give_up_at_the_deadline(self) -> None:
        """A client that cannot connect is retried with capped exponential backoff until the
        next wait would pass the deadline; then the events are 'send_failed'."""
        sqs, url = _sqs()
        error = EndpointConnectionError(endpoint_url="https://sqs.example")
        sqs.journal.inject("send_message_batch", *([error] * 100))
        time = FakeTime()
        result = _sink(sqs, _settings(url, events_per_message=3), time).export(
            [_event(i) for i in range(7)], deadline=time.now + 30
        )
        assert time.sleeps == pytest.approx([0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])
        assert len(_calls(sqs)) == 9
        assert result.dropped["send_failed"] == 7
        assert result.sent == 0
        assert (result.requests, result.retries) == (9, 8)
        assert time.now <= 1_000.0 + 30
        assert sqs.queue(url).messages == []

    def test_backoff_is_full_jitter(self) -> None:
        """Each wait is the random fraction times the capped exponential step."""
        sqs, url = _sqs()
        sqs.journal.inject("send_message_batch", *([EndpointConnectionError(endpoint_url="x")] * 3))
        time = FakeTime()
        fractions = itertools.cycle([0.25, 0.0, 0.5])
        result = _sink(sqs, _settings(url), time, rng=lambda: next(fractions)).export(
            [_event(0)], deadline=time.now + 30
        )
        assert time.sleeps == pytest.approx([0.25 * 0.4, 0.0, 0.5 * 1.6])
        assert result.sent == 1
        assert result.retries == 3

    def test_client_error_is_retried(self) -> None:
        """A whole-call ClientError (throttling left over by botocore) is retried with the
        same request."""
        sqs, url = _sqs()
        sqs.journal.inject(
            "send_message_batch",
            client_error("ThrottlingException", "slow down", "SendMessageBatch"),
        )
        time = FakeTime()
        result = _sink(sqs, _settings(url), time).export([_event(0)], deadline=time.now + 30)
        assert result.sent == 1
        first, second = _calls(sqs)
        assert first == second
        assert len(sqs.queue(url).messages) == 1

    def test_past_deadline_tries_once(self) -> None:
        """With no time left, one attempt is made and a failure is not waited out."""
        sqs, url = _sqs()
        sqs.journal.inject("send_message_batch", EndpointConnectionError(endpoint_url="x"))
        time = FakeTime()
        result = _sink(sqs, _settings(url), time).export([_event(0)], deadline=time.now)
        assert len(_calls(sqs)) == 1
        assert time.sleeps == []
        assert result.dropped["send_failed"] == 1


class TestQueueUrl:
    def test_resolved_once_and_cached(self) -> None:
        """Without a configured URL, get_queue_url is called once and reused by every send."""
        sqs, url = _sqs()
        sink = _sink(sqs, _settings(None, events_per_message=1))
        sink.export([_event(i) for i in range(12)], deadline=2_000.0)
        sink.export([_event(99)], deadline=2_000.0)
        assert sqs.journal.of("get_queue_url") == [{"QueueName": FIFO_QUEUE}]
        assert len(_calls(sqs)) == 3
        assert {call["QueueUrl"] for call in _calls(sqs)} == {url}
        assert sqs.journal.operations[0] == "get_queue_url"

    def test_configured_url_skips_the_lookup(self) -> None:
        """A configured queue URL is used as is."""
        sqs, url = _sqs()
        _sink(sqs, _settings(url)).export([_event(0)], deadline=2_000.0)
        assert sqs.journal.of("get_queue_url") == []
        assert _calls(sqs)[0]["QueueUrl"] == url

    def test_failed_lookup_is_retried(self) -> None:
        """A failing get_queue_url counts as a failed attempt and is retried with backoff."""
        sqs, url = _sqs()
        sqs.journal.inject(
            "get_queue_url",
            client_error("AWS.SimpleQueueService.NonExistentQueue", "no such queue", "GetQueueUrl"),
        )
        time = FakeTime()
        result = _sink(sqs, _settings(None), time).export([_event(0)], deadline=time.now + 30)
        assert len(sqs.journal.of("get_queue_url")) == 2
        assert result.sent == 1
        assert result.retries == 1
        assert len(time.sleeps) == 1
        assert len(sqs.queue(url).messages) == 1


class TestPrepare:
    def test_prepare_makes_the_client_and_looks_the_queue_up_once(self) -> None:
        """prepare builds the client and resolves the URL; exports then reuse both."""
        sqs, url = _sqs()
        made: list[FakeSqs] = []

        def factory() -> SqsSendClient:
            made.append(sqs)
            return sqs

        sink = SqsSink(_settings(None), client_factory=factory, sleep=FakeTime().sleep)
        sink.prepare()
        assert len(made) == 1
        assert sqs.journal.operations == ["get_queue_url"]
        sink.export([_event(0)], deadline=float("inf"))
        assert len(made) == 1
        assert sqs.journal.operations == ["get_queue_url", "send_message_batch"]
        assert _calls(sqs)[0]["QueueUrl"] == url

    def test_prepare_with_a_configured_url_calls_nothing(self) -> None:
        """With the URL configured, prepare only builds the client: no SQS call."""
        sqs, url = _sqs()
        sink = _sink(sqs, _settings(url))
        sink.prepare()
        assert sqs.journal.calls == []
        sink.export([_event(0)], deadline=2_000.0)
        assert sqs.journal.operations == ["send_message_batch"]

    def test_failed_prepare_raises_and_export_looks_up_again(self) -> None:
        """A look-up that fails in prepare raises to the caller; the next export looks the
        queue up again and sends."""
        sqs, url = _sqs()
        sqs.journal.inject(
            "get_queue_url",
            client_error("AccessDenied", "not allowed", "GetQueueUrl", status=403),
        )
        sink = _sink(sqs, _settings(None))
        with pytest.raises(Exception, match="AccessDenied"):
            sink.prepare()
        result = sink.export([_event(0)], deadline=2_000.0)
        assert result.sent == 1
        assert sqs.journal.operations == ["get_queue_url", "get_queue_url", "send_message_batch"]
        assert len(sqs.queue(url).messages) == 1


class TestClient:
    def test_client_is_made_lazily_once_and_closed(self) -> None:
        """The client is built on first send, reused, and closed by close (twice is safe)."""
        sqs, url = _sqs()
        made = 0

        def factory() -> SqsSendClient:
            nonlocal made
            made += 1
            return sqs

        sink = SqsSink(_settings(url), client_factory=factory, sleep=FakeTime().sleep)
        assert made == 0
        sink.export([_event(0)], deadline=float("inf"))
        sink.export([_event(1)], deadline=float("inf"))
        assert made == 1
        sink.close()
        sink.close()
        assert sqs.closed == 1
        assert sqs.journal.operations[-1] == "close"

    def test_close_without_a_client_makes_none(self) -> None:
        """Closing a sink that never sent neither builds nor closes a client."""
        sqs, url = _sqs()
        made = 0

        def factory() -> SqsSendClient:
            nonlocal made
            made += 1
            return sqs

        SqsSink(_settings(url), client_factory=factory).close()
        assert made == 0
        assert sqs.closed == 0


class TestCallLatencies:
    def test_each_call_lands_in_the_first_bucket_it_fits(self) -> None:
        """4 ms and exactly 5 ms go in the 5 ms bucket, 7 ms in the 10 ms one, 60 s in
        +Inf; the sum is theirs."""
        latencies = CallLatencies()
        for ms in (4, 5, 7, 60_000):
            latencies.observe(ms * 1_000_000)
        assert latencies.counts[0] == 2
        assert latencies.counts[1] == 1
        assert latencies.counts[-1] == 1
        assert sum(latencies.counts) == 4
        assert latencies.sum_ns == (4 + 5 + 7 + 60_000) * 1_000_000

    def test_reports_round_trip_and_malformed_ones_are_empty(self) -> None:
        """A sender's report gives back the same counts; a malformed one gives an empty
        histogram rather than an error in the serving process."""
        latencies = CallLatencies()
        latencies.observe(3_000_000)
        again = CallLatencies.from_dict(latencies.as_dict())
        assert again == latencies
        for bad in (None, {"counts": [1, 2], "sum_ns": 3}, {"counts": "x"}, [1]):
            assert CallLatencies.from_dict(bad) == CallLatencies()
