"""`offpath dlq`: see what was dead-lettered and why, and send it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from offpath.client.dlq import REDRIVEN_BY_SQS, DeadLetterQueue
from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.dev.stack import DevStack
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest.consumer import Consumer, Queues
from offpath.ingest.store import EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, QueueNames
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
    moved = list(dlq.redrive())
    assert len(moved) == 1
    assert moved[0].reason == REDRIVEN_BY_SQS
    assert moved[0].events == 1
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
