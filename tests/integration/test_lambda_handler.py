"""The Lambda handler (offpath.ingest.lambda_handler) against the local endpoint:
synthetic SQS events built as Lambda's event source mapping builds them, from
messages the emitter sent and boto3 received over the wire; the handler made
from OFFPATH_* settings with real clients, as on a cold start."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Any

from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.emitter import EmitterSettings, SqsSink
from offpath.ingest import lambda_handler, rollups
from offpath.ingest.decode import MAX_TIMESTAMP_SECONDS
from offpath.ingest.settings import ENV_ROLLUP_TABLE_NAME, ENV_TABLE_NAME, IngestSettings
from offpath.ingest.store import TABLE_KEY, EventStore
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.ids import new_id
from offpath.kit.sqs import (
    ENV_DLQ_NAME,
    ENV_QUEUE_NAME,
    MESSAGE_ATTRIBUTES,
    REASON_ATTRIBUTE,
    SOURCE_ID_ATTRIBUTE,
    encode_batch,
)
from offpath.v1 import analytics_pb2

_NS = 1_000_000_000
# Changes on every write of an event (a redelivery rewrites it); nothing else does.
_INGESTED_AT = "ingested_at"


def _events(n: int) -> list[analytics_pb2.AnalyticsEvent]:
    now = time.time_ns()
    events = []
    for i in range(n):
        event = analytics_pb2.AnalyticsEvent(
            event_id=new_id(),
            service="offpath.v1.QueryService",
            method="/offpath.v1.QueryService/Query",
            query=["What about Kubernetes?", "Python"][i % 2],
            model="template-v1",
            token_count=7 + i,
            status_code=3 if i % 5 == 0 else 0,
            producer_id="it",
        )
        event.occurred_at.FromNanoseconds(now - i * _NS)
        event.processing_time.FromNanoseconds((i + 1) * 1_000_000)
        event.matched_skills.add(name="Kubernetes", score=0.5)
        events.append(event)
    return events


def _send(names: ResourceNames, events: list[analytics_pb2.AnalyticsEvent]) -> None:
    settings = EmitterSettings(
        queue_name=names.queues.queue, producer_id="it", events_per_message=10
    )
    result = SqsSink(settings).export(events, deadline=time.monotonic() + 10)
    assert result.sent == len(events)


def _send_poison(resources: Resources) -> None:
    sqs_client().send_message(
        QueueUrl=resources.queue_url,
        MessageBody="this is not base64!",
        MessageAttributes=MESSAGE_ATTRIBUTES,
        MessageGroupId="poison",
        MessageDeduplicationId="poison-1",
    )


def _receive(resources: Resources) -> list[Any]:
    """Every message on the queue, received as Lambda's poller receives them
    (all attributes, system ones too) and left in flight."""
    messages: list[Any] = []
    sqs = sqs_client()
    while True:
        got = sqs.receive_message(
            QueueUrl=resources.queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
            VisibilityTimeout=300,
        ).get("Messages", [])
        if not got:
            return messages
        messages.extend(got)


def _lambda_record(message: Mapping[str, Any], queue_arn: str) -> dict[str, Any]:
    """A received message as a record of Lambda's SQS event."""
    attributes: dict[str, Any] = {}
    for name, attribute in message.get("MessageAttributes", {}).items():
        value: dict[str, Any] = {
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": attribute["DataType"],
        }
        if "StringValue" in attribute:
            value["stringValue"] = attribute["StringValue"]
        else:
            value["binaryValue"] = base64.b64encode(attribute["BinaryValue"]).decode()
        attributes[name] = value
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


def _lambda_event(resources: Resources, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    arn = sqs_client().get_queue_attributes(
        QueueUrl=resources.queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    return {"Records": [_lambda_record(m, arn) for m in messages]}


def _handler(
    names: ResourceNames, resources: Resources, *, table: str = ""
) -> lambda_handler.SqsBatchHandler:
    """A handler made as on a cold start, from the test's OFFPATH_* names."""
    settings = IngestSettings.from_env(
        {
            ENV_QUEUE_NAME: names.queues.queue,
            ENV_DLQ_NAME: names.queues.dlq,
            ENV_TABLE_NAME: table or resources.table,
            ENV_ROLLUP_TABLE_NAME: resources.rollup_table,
        }
    )
    return lambda_handler.from_settings(settings)


def _scan(table: str) -> list[dict[str, Any]]:
    ddb = dynamodb_client()
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _rollups(resources: Resources) -> dict[tuple[str, str], dict[str, Any]]:
    """Every rollup item (markers left out), by key."""
    return {
        (item[rollups.ROLLUP_PARTITION]["S"], item[rollups.ROLLUP_SORT]["S"]): item
        for item in _scan(resources.rollup_table)
        if item[rollups.ROLLUP_PARTITION]["S"].startswith("r#")
    }


def _stored(resources: Resources) -> dict[str, dict[str, Any]]:
    """Every stored event item by id, without the time it was written."""
    return {
        item[TABLE_KEY]["S"]: {k: v for k, v in item.items() if k != _INGESTED_AT}
        for item in _scan(resources.table)
    }


def _dead(resources: Resources) -> list[Any]:
    got: list[Any] = (
        sqs_client()
        .receive_message(
            QueueUrl=resources.dlq_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=0,
        )
        .get("Messages", [])
    )
    return got


def test_event_handled_twice_changes_no_rollup_or_event(
    resources: Resources, names: ResourceNames
) -> None:
    """A synthetic SQS event of three emitted messages and a poison one, handled
    twice (Lambda's retry, or a redelivery): the first call writes every event,
    counts each once and dead-letters the poison message with its reason; the
    second leaves the rollups, the stored events and the DLQ as they were."""
    events = _events(25)
    _send(names, events)
    _send_poison(resources)
    messages = _receive(resources)
    assert len(messages) == 4
    event = _lambda_event(resources, messages)
    assert {r["attributes"]["MessageGroupId"] for r in event["Records"]} == {"it", "poison"}

    handler = _handler(names, resources)
    assert handler.handle(event) == {"batchItemFailures": []}
    rollups_once, stored_once = _rollups(resources), _stored(resources)
    assert set(stored_once) == {e.event_id for e in events}
    store = EventStore(dynamodb_client(), resources.table, rollup_table=resources.rollup_table)
    now = time.time_ns()
    summary = store.summary(now - 2 * 3600 * _NS, now + _NS)
    assert summary.event_count == 25
    assert summary.error_count == 5
    assert dict(summary.top_skills)["Kubernetes"] == 25

    assert handler.handle(event) == {"batchItemFailures": []}
    assert _rollups(resources) == rollups_once
    assert _stored(resources) == stored_once
    (dead,) = _dead(resources)
    assert dead["Body"] == "this is not base64!"
    assert "not base64" in dead["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]
    poison = next(m for m in messages if m["Body"] == "this is not base64!")
    assert dead["MessageAttributes"][SOURCE_ID_ATTRIBUTE]["StringValue"] == poison["MessageId"]


def test_unwritable_records_are_reported_for_retry(
    resources: Resources, names: ResourceNames
) -> None:
    """With the events table missing, every record carrying events is in
    batchItemFailures (those of one FIFO group from the first failure on),
    and the poison record is still dead-lettered and not reported."""
    _send(names, _events(20))
    _send_poison(resources)
    messages = _receive(resources)
    handler = _handler(names, resources, table=f"missing-{new_id()}")
    response = handler.handle(_lambda_event(resources, messages))
    failed = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert failed == [m["MessageId"] for m in messages if m["Body"] != "this is not base64!"]
    assert len(failed) == 2
    assert len(_dead(resources)) == 1


def test_year_10000_is_dead_lettered_and_the_good_records_land(
    resources: Resources, names: ResourceNames
) -> None:
    """A message whose only event is dated in year 10000, between good ones of the
    same FIFO group: dead-lettered with its reason on this first receive and not
    reported (so its group goes on), and the good events are stored."""
    good = _events(3)
    _send(names, good[:1])
    bad = _events(1)[0]
    bad.occurred_at.seconds = MAX_TIMESTAMP_SECONDS + 1
    batch = analytics_pb2.AnalyticsBatch(batch_id=new_id(), producer_id="it", events=[bad])
    sqs_client().send_message(
        QueueUrl=resources.queue_url,
        MessageBody=encode_batch(batch),
        MessageAttributes=MESSAGE_ATTRIBUTES,
        MessageGroupId="it",
        MessageDeduplicationId=batch.batch_id,
    )
    _send(names, good[1:])
    messages = _receive(resources)
    assert len(messages) == 3
    handler = _handler(names, resources)
    assert handler.handle(_lambda_event(resources, messages)) == {"batchItemFailures": []}
    assert set(_stored(resources)) == {e.event_id for e in good}
    (dead,) = _dead(resources)
    assert "after 9999-12-31" in dead["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"]
    assert dead["Body"] == encode_batch(batch)
