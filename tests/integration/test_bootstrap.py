"""Bootstrap against the local endpoint over HTTP."""

from __future__ import annotations

import json

from offpath.dev.bootstrap import (
    MAX_RECEIVE_COUNT,
    RETENTION_SECONDS,
    ResourceNames,
    Resources,
    bootstrap,
)
from offpath.ingest.store import TIME_INDEX, TTL_ATTRIBUTE
from offpath.kit.aws import dynamodb_client, sqs_client


def test_creates_fifo_queue_with_redrive_to_fifo_dlq(resources: Resources) -> None:
    """The queue is FIFO, keeps 14 days, and redrives to the FIFO DLQ after 3 receives."""
    sqs = sqs_client()
    attrs = sqs.get_queue_attributes(QueueUrl=resources.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    assert attrs["FifoQueue"] == "true"
    assert attrs["MessageRetentionPeriod"] == str(RETENTION_SECONDS)
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == resources.dlq_arn
    assert int(redrive["maxReceiveCount"]) == MAX_RECEIVE_COUNT
    dlq = sqs.get_queue_attributes(QueueUrl=resources.dlq_url, AttributeNames=["All"])["Attributes"]
    assert dlq["FifoQueue"] == "true"
    assert dlq["MessageRetentionPeriod"] == str(RETENTION_SECONDS)


def test_creates_table_with_time_index_and_ttl(resources: Resources) -> None:
    """The table is keyed by event_id, has the by_time index, and TTL on expires_at."""
    ddb = dynamodb_client()
    table = ddb.describe_table(TableName=resources.table)["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["event_id"]
    assert [i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])] == [TIME_INDEX]
    ttl = ddb.describe_time_to_live(TableName=resources.table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == TTL_ATTRIBUTE


def test_running_twice_changes_nothing(resources: Resources, names: ResourceNames) -> None:
    """A second bootstrap on existing resources succeeds and returns the same resources."""
    again = bootstrap(names)
    assert again == resources
