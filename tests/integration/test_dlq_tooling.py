"""`offpath dlq`: see what was dead-lettered and why, and send it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, cast

from offpath.client.dlq import RECEIVE_SEND_DELETE, REDRIVEN_BY_SQS, DeadLetterQueue, DlqClient
from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.dev.stack import DevStack
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.store import EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, QueueNames, encode_batch
from offpath.v1 import analytics_pb2


def _poison(resources: Resources, body: str, dedup: str) -> None:
    sqs_client().send_message(
        QueueUrl=resources.queue_url,
        MessageBody=body,
        MessageAttributes=MESSAGE_ATTRIBUTES,
        MessageGroupId="it",
        MessageDeduplicationId=dedup,
    )


def _consume(resources: Resources) -> Consumer:
    queues = Queues(QueueNames(), queue_url=resources.queue_url, dlq_url=resources.dlq_url)
    consumer = Consumer(
        sqs_client(), EventStore(dynamodb_client(), resources.table), queues, wait_seconds=0
    )
    assert consumer.resolve(threading.Event())
    while consumer.poll_once():
        pass
    return consumer


def test_peek_shows_reasons_and_leaves_messages(resources: Resources) -> None:
    """peek lists dead-lettered messages with the consumer's reason, and a second
    peek sees the same messages (nothing was removed)."""
    _poison(resources, "not base64!", "p1")
    _poison(resources, "YWJj", "p2")  # base64 of b"abc": not an AnalyticsBatch
    _consume(resources)
    dlq = DeadLetterQueue(sqs_client(), dlq_url=resources.dlq_url, queue_url=resources.queue_url)
    first = dlq.peek(10)
    assert len(first) == 2
    assert any("base64" in letter.reason for letter in first)
    assert any("AnalyticsBatch" in letter.reason for letter in first)
    assert all(letter.events is None for letter in first)
    again = dlq.peek(10)
    assert {letter.message_id for letter in again} == {letter.message_id for letter in first}


def test_redrive_moves_messages_back_and_they_are_ingested(
    resources: Resources, names: ResourceNames
) -> None:
    """A good batch that SQS dead-lettered (no reason attribute) is sent back by
    redrive, leaves the DLQ, and is then written by the consumer."""
    event = analytics_pb2.AnalyticsEvent(event_id=new_id(), query="redriven", producer_id="it")
    event.occurred_at.GetCurrentTime()
    # Put a good batch straight into the DLQ, as SQS's redrive policy would.
    dlq_settings = EmitterSettings(queue_name=names.queues.dlq, producer_id="it")
    sent = SqsSink(dlq_settings).export([event], deadline=time.monotonic() + 10)
    assert sent.sent == 1
    dlq = DeadLetterQueue(sqs_client(), dlq_url=resources.dlq_url, queue_url=resources.queue_url)
    report = dlq.redrive()
    # moto has no StartMessageMoveTask: the pass falls back and says why.
    assert report.method == RECEIVE_SEND_DELETE
    assert report.fallback_reason is not None
    (moved,) = report.letters
    assert moved.reason == REDRIVEN_BY_SQS
    assert moved.events == 1
    assert dlq.peek(10) == []
    _consume(resources)
    stored = EventStore(dynamodb_client(), resources.table).get(event.event_id)
    assert stored is not None
    assert stored.event.query == "redriven"


def test_cli_lists_the_dlq(resources: Resources, names: ResourceNames) -> None:
    """`offpath dlq list` prints each message's reason under a header and a count;
    with `--output json`, one document with the same message."""
    _poison(resources, "garbage!", "p3")
    _consume(resources)
    env = {
        **os.environ,
        "OFFPATH_SQS_QUEUE_NAME": names.queues.queue,
        "OFFPATH_SQS_DLQ_NAME": names.queues.dlq,
    }

    def offpath(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offpath.client", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = offpath("dlq", "list")
    assert done.returncode == 0, done.stderr
    header, row, *_ = done.stdout.splitlines()
    assert header.split() == ["SENT_AT", "MESSAGE_ID", "EVENTS", "BYTES", "RECEIVES", "REASON"]
    assert "undecodable" in row
    assert "body is not base64" in row
    assert "1 message(s) shown" in done.stdout
    # Looking is receiving, and the list says so.
    assert "each listing adds 1 to RECEIVES" in done.stdout
    assert "no redrive policy" in done.stdout
    as_json = offpath("dlq", "list", "--output", "json")
    assert as_json.returncode == 0, as_json.stderr
    (message,) = json.loads(as_json.stdout)["messages"]
    assert message["reason"].startswith("body is not base64")
    assert message["events"] is None


def test_cli_exits_3_for_a_queue_that_does_not_exist(local_aws: DevStack) -> None:
    """`offpath dlq list` naming a queue SQS does not have exits 3 (not found)."""
    env = {**os.environ, "OFFPATH_SQS_QUEUE_NAME": f"missing-{new_id()}.fifo"}
    done = subprocess.run(
        [sys.executable, "-m", "offpath.client", "dlq", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("offpath: SQS:")


def _offpath_cli(names: ResourceNames, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OFFPATH_SQS_QUEUE_NAME": names.queues.queue,
        "OFFPATH_SQS_DLQ_NAME": names.queues.dlq,
    }
    return subprocess.run(
        [sys.executable, "-m", "offpath.client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_shows_one_message_decoded(resources: Resources, names: ResourceNames) -> None:
    """`offpath dlq show ID` prints the message's reason and decoded batch (its
    invalid event), in a table and as JSON; an unknown id exits 3."""
    bad = analytics_pb2.AnalyticsEvent(event_id="not-a-uuid", query="bad", producer_id="it")
    batch = analytics_pb2.AnalyticsBatch(batch_id=new_id(), producer_id="it", events=[bad])
    _poison(resources, encode_batch(batch), "p-show")
    _consume(resources)
    (letter,) = DeadLetterQueue(
        sqs_client(), dlq_url=resources.dlq_url, queue_url=resources.queue_url
    ).peek(10)
    table = _offpath_cli(names, "dlq", "show", letter.message_id)
    assert table.returncode == 0, table.stderr
    assert "invalid events" in table.stdout
    assert "event not-a-uuid" in table.stdout
    as_json = _offpath_cli(names, "dlq", "show", letter.message_id, "--output", "json")
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert shown["reason"].startswith("invalid events")
    assert shown["batch"]["events"][0]["eventId"] == "not-a-uuid"
    assert shown["receiveCount"] >= 1
    missing = _offpath_cli(names, "dlq", "show", new_id())
    assert missing.returncode == 3, missing.stderr


class _ConsumerAfterSend:
    """A DLQ tool's SQS client (boto3's, over the wire) after whose every send
    to the events queue the consumer polls once: a poison message is
    dead-lettered again before the pass's next receive, every time."""

    def __init__(self, consumer: Consumer, queue_url: str) -> None:
        self._sqs = sqs_client()
        self._consumer = consumer
        self._queue_url = queue_url

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def send_message(self, **kwargs: Any) -> Any:
        response = self._sqs.send_message(**kwargs)
        if kwargs["QueueUrl"] == self._queue_url:
            while self._consumer.poll_once():
                pass
        return response


def test_an_unfixed_poison_message_is_moved_once(resources: Resources) -> None:
    """One poison message whose cause is not fixed, dead-lettered again right
    after each send: a pass with --limit 10 moves it once, leaves its copy in
    the DLQ and reports that; the old loop moved it until the limit."""
    _poison(resources, "still not base64!", "p-loop")
    consumer = _consume(resources)
    sqs = _ConsumerAfterSend(consumer, resources.queue_url)
    dlq = DeadLetterQueue(
        cast(DlqClient, sqs), dlq_url=resources.dlq_url, queue_url=resources.queue_url
    )
    report = dlq.redrive(limit=10)
    assert (report.moved, report.came_back) == (1, 1)
    (left,) = dlq.peek(10)
    assert "base64" in left.reason
    _drain(resources)


def test_cli_redrive_of_an_unfixed_poison_message_reports_1_moved(
    resources: Resources, names: ResourceNames
) -> None:
    """With the consumer running, `offpath dlq redrive` of one poison message
    whose cause was not fixed reports 1 moved (the issue's Done-when), with
    --limit 10 in a table and without a limit as JSON."""
    _poison(resources, "never base64!", "p-cli")
    consumer = _consume(resources)
    stop = threading.Event()

    def keep_consuming() -> None:
        while not stop.is_set():
            consumer.poll_once()

    worker = threading.Thread(target=keep_consuming, daemon=True)
    worker.start()
    try:
        table = _offpath_cli(names, "dlq", "redrive", "--limit", "10")
        assert table.returncode == 0, table.stderr
        assert "moved 1 distinct message(s)" in table.stdout
        # Again without --limit: SQS's move task is tried first (moto refuses
        # it), and the pass ends after one move all the same.
        as_json = _offpath_cli(names, "dlq", "redrive", "--output", "json")
        assert as_json.returncode == 0, as_json.stderr
        report = json.loads(as_json.stdout)
        assert report["movedCount"] == 1
        assert report["method"] == RECEIVE_SEND_DELETE
        assert report["fallbackReason"]
    finally:
        stop.set()
        worker.join(timeout=30)
    _drain(resources)


def _drain(resources: Resources) -> None:
    """Empty both queues (moto's SQS slows as queues grow)."""
    sqs = sqs_client()
    for url in (resources.queue_url, resources.dlq_url):
        sqs.purge_queue(QueueUrl=url)
