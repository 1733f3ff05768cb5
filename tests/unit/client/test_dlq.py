"""The DLQ tool on the in-memory SQS: looking leaves messages in place, show
decodes one, and a redrive pass moves each distinct message at most once,
through SQS's move task or, where refused, one by one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from offpath.client.dlq import (
    MOVE_TASK,
    RECEIVE_SEND_DELETE,
    REDRIVEN_BY_SQS,
    DeadLetterQueue,
)
from offpath.kit.sqs import (
    MESSAGE_ATTRIBUTES,
    REASON_ATTRIBUTE,
    QueueNames,
    dead_letter_message,
    encode_batch,
)
from offpath.testing.calls import client_error
from offpath.testing.sqs import FakeSqs
from offpath.v1 import analytics_pb2

NAMES = QueueNames(queue="events.fifo", dlq="events-dlq.fifo")


@pytest.fixture
def sqs() -> FakeSqs:
    """The two queues, the DLQ as the queue's redrive target (as deployed)."""
    fake = FakeSqs()
    dlq_url = fake.add_queue(NAMES.dlq, FifoQueue="true")
    policy = json.dumps({"deadLetterTargetArn": fake.queue(dlq_url).arn, "maxReceiveCount": 3})
    fake.add_queue(NAMES.queue, FifoQueue="true", RedrivePolicy=policy)
    return fake


def _batch(batch_id: str, *event_ids: str) -> analytics_pb2.AnalyticsBatch:
    return analytics_pb2.AnalyticsBatch(
        batch_id=batch_id,
        producer_id="p-1",
        events=[analytics_pb2.AnalyticsEvent(event_id=e, query="q") for e in event_ids],
    )


def _dead_letter(sqs: FakeSqs, body: str, *, reason: str, source_id: str) -> None:
    """As AnalyticsIngest dead-letters a message."""
    request = dead_letter_message(
        sqs.queue(NAMES.dlq).url,
        body=body,
        attributes=MESSAGE_ATTRIBUTES,
        reason=reason,
        source_id=source_id,
    )
    sqs.send_message(**request)


def _good_batches(sqs: FakeSqs, count: int) -> None:
    """``count`` decodable batches, each dead-lettered with a reason."""
    for n in range(count):
        _dead_letter(sqs, encode_batch(_batch(f"b-{n}", f"e-{n}")), reason="r", source_id=f"{n}")


def _tool(sqs: FakeSqs) -> DeadLetterQueue:
    return DeadLetterQueue.from_names(NAMES, sqs)


def _to_queue(sqs: FakeSqs) -> list[dict[str, Any]]:
    url = sqs.queue(NAMES.queue).url
    return [r for r in sqs.journal.of("send_message") if r["QueueUrl"] == url]


class TestLooking:
    def test_peek_leaves_messages_visible_and_counts_the_receive(self, sqs: FakeSqs) -> None:
        """peek shows each message with its reason, leaves it visible, and SQS
        counts the look as a receive (the count the list's note warns about)."""
        _dead_letter(sqs, "not base64!", reason="body is not base64", source_id="m-1")
        dlq = _tool(sqs)
        (first,) = dlq.peek()
        assert first.reason == "body is not base64"
        assert first.source_message_id == "m-1"
        (again,) = dlq.peek()
        assert again.receive_count == first.receive_count + 1
        state = dlq.state()
        assert (state.visible, state.in_flight, state.redrive_policy) == (1, 0, None)

    def test_show_decodes_one_message_and_leaves_all_in_place(self, sqs: FakeSqs) -> None:
        """show finds a message by id behind another, decodes its batch, and
        both are visible again afterwards; an unknown id gives None."""
        _dead_letter(sqs, "junk", reason="body is not base64", source_id="m-1")
        _dead_letter(sqs, encode_batch(_batch("b-2", "e-1")), reason="invalid", source_id="m-2")
        dlq = _tool(sqs)
        wanted = dlq.peek()[1].message_id
        shown = dlq.show(wanted)
        assert shown is not None
        assert shown.batch is not None
        assert shown.batch.batch_id == "b-2"
        assert shown.letter.reason == "invalid"
        assert dlq.show("no-such-id") is None
        assert dlq.state().visible == 2


class TestRedrive:
    def test_move_task_moves_what_was_there(self, sqs: FakeSqs) -> None:
        """Without --limit, SQS's move task moves the messages to the queue and
        the report gives its count; nothing is received by the tool."""
        _good_batches(sqs, 3)
        report = _tool(sqs).redrive()
        assert (report.method, report.moved, report.at_start) == (MOVE_TASK, 3, 3)
        assert report.task is not None
        assert report.task.status == "COMPLETED"
        assert sqs.journal.of("receive_message") == []
        assert len(sqs.bodies(NAMES.queue)) == 3
        assert sqs.bodies(NAMES.dlq) == []

    def test_refused_move_task_falls_back_and_says_why(self, sqs: FakeSqs) -> None:
        """An endpoint that refuses StartMessageMoveTask gets receive-send-delete,
        each message sent once, and the report names the refusal."""
        sqs.journal.inject(
            "start_message_move_task",
            client_error("500", "<html>Internal Server Error</html>", "StartMessageMoveTask"),
        )
        _good_batches(sqs, 2)
        report = _tool(sqs).redrive()
        assert (report.method, report.moved) == (RECEIVE_SEND_DELETE, 2)
        assert report.fallback_reason is not None
        assert report.fallback_reason.startswith("500")
        assert len(_to_queue(sqs)) == 2
        assert sqs.bodies(NAMES.dlq) == []
        # The dead-letter attributes stay behind; the schema goes with the body.
        for request in _to_queue(sqs):
            assert REASON_ATTRIBUTE not in request["MessageAttributes"]

    @pytest.mark.parametrize("reason", ["whole message", "invalid events"])
    def test_an_unfixed_poison_message_moves_once(self, sqs: FakeSqs, reason: str) -> None:
        """A message dead-lettered again as soon as it is sent back (whole, or
        its invalid events re-batched under a new batch id) is moved once and
        its copy left in the DLQ, where the old loop moved it until --limit."""
        body = encode_batch(_batch("b-1", "e-1", "e-2"))
        _dead_letter(sqs, body, reason=reason, source_id="m-0")
        copies = iter(range(1, 100))

        def consumer_dead_letters_it(request: Mapping[str, Any]) -> None:
            if request["QueueUrl"] != sqs.queue(NAMES.queue).url:
                return
            n = next(copies)
            again = (
                body
                if reason == "whole message"
                else encode_batch(_batch(f"new-{n}", "e-2", "e-1"))
            )
            _dead_letter(sqs, again, reason=reason, source_id=f"m-{n}")

        sqs.journal.inject("send_message", *[consumer_dead_letters_it] * 10)
        report = _tool(sqs).redrive(limit=10)
        assert (report.moved, report.came_back, report.over_limit) == (1, 1, 0)
        assert len(_to_queue(sqs)) == 1
        assert len(sqs.bodies(NAMES.dlq)) == 1
        assert _tool(sqs).state().visible == 1  # the copy is visible again for the next run

    def test_limit_leaves_the_rest_visible(self, sqs: FakeSqs) -> None:
        """--limit 2 of 5 moves two distinct messages and leaves three in the
        DLQ, visible again."""
        _good_batches(sqs, 5)
        report = _tool(sqs).redrive(limit=2)
        assert report.moved == 2
        assert len(report.letters) == 2
        assert _tool(sqs).state().visible == 3

    def test_messages_sqs_moved_carry_no_reason(self, sqs: FakeSqs) -> None:
        """A message SQS moved after maxReceiveCount receives is reported as such."""
        queue_url = sqs.queue(NAMES.queue).url
        sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=encode_batch(_batch("b-1", "e-1")),
            MessageAttributes=MESSAGE_ATTRIBUTES,
            MessageGroupId="p-1",
            MessageDeduplicationId="d-1",
        )
        for _ in range(4):  # the 4th receive finds it past maxReceiveCount
            sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=0)
        report = _tool(sqs).redrive(move_task=False)
        assert [letter.reason for letter in report.letters] == [REDRIVEN_BY_SQS]

    def test_a_task_still_running_is_reported_as_running(self, sqs: FakeSqs) -> None:
        """When SQS's task has not finished within the wait, the report says it
        is running with its handle and SQS's counts so far."""
        running = {"Status": "RUNNING", "TaskHandle": "h-1", "ApproximateNumberOfMessagesMoved": 1}
        sqs.journal.inject(
            "start_message_move_task", lambda _: {"TaskHandle": "h-1", "ResponseMetadata": {}}
        )
        sqs.journal.inject("list_message_move_tasks", *[lambda _: {"Results": [running]}] * 3)
        now = [0.0]
        dlq = DeadLetterQueue(
            sqs,
            dlq_url=sqs.queue(NAMES.dlq).url,
            queue_url=sqs.queue(NAMES.queue).url,
            sleep=lambda s: now.__setitem__(0, now[0] + s),
            clock=lambda: now[0],
        )
        report = dlq.redrive(wait_s=2)
        assert report.task is not None
        assert (report.task.status, report.task.handle, report.moved) == ("RUNNING", "h-1", 1)
        assert len(sqs.journal.of("list_message_move_tasks")) == 3
