"""Creates the SQS queue, its dead-letter queue and the DynamoDB tables,
idempotently: running it again on existing resources changes nothing (or
re-applies the same attributes).

The same code sets up the local endpoint for ``make run`` and for every test,
and can be run against AWS (``make bootstrap``, ``python -m
offpath.dev.bootstrap``), though ``deploy/aws`` is the way to own the
resources there. The table's schema is the store's
(:func:`offpath.ingest.store.create_table_request`); the queue attributes
are set-up's own, and ``deploy/aws`` mirrors them (its tests compare).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Unpack

import structlog
from botocore.exceptions import ClientError

from offpath.ingest import rollups
from offpath.ingest.settings import (
    DEFAULT_TABLE_NAME,
    rollup_table_name_from_env,
    table_name_from_env,
)
from offpath.ingest.store import (
    TABLE_KEY,
    TIME_INDEX,
    TTL_ATTRIBUTE,
    create_table_request,
    rollup_table_for,
)
from offpath.kit.aws import dynamodb_client, sqs_client
from offpath.kit.logs import configure_logging
from offpath.kit.settings import SettingsError, environ
from offpath.kit.sqs import QueueNames, is_fifo

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        CreateTableInputTypeDef,
        CreateTableOutputTypeDef,
        DescribeTableInputTypeDef,
        DescribeTableOutputTypeDef,
        DescribeTimeToLiveInputTypeDef,
        DescribeTimeToLiveOutputTypeDef,
        TableDescriptionTypeDef,
        UpdateTimeToLiveInputTypeDef,
        UpdateTimeToLiveOutputTypeDef,
    )
    from mypy_boto3_sqs.type_defs import (
        CreateQueueRequestTypeDef,
        CreateQueueResultTypeDef,
        EmptyResponseMetadataTypeDef,
        GetQueueAttributesRequestTypeDef,
        GetQueueAttributesResultTypeDef,
        GetQueueUrlRequestTypeDef,
        GetQueueUrlResultTypeDef,
        SetQueueAttributesRequestTypeDef,
    )


class SetupSqsClient(Protocol):
    """The SQS calls set-up makes (boto3's SQS client has them)."""

    def create_queue(
        self, **kwargs: Unpack[CreateQueueRequestTypeDef]
    ) -> CreateQueueResultTypeDef: ...

    def get_queue_url(
        self, **kwargs: Unpack[GetQueueUrlRequestTypeDef]
    ) -> GetQueueUrlResultTypeDef: ...

    def get_queue_attributes(
        self, **kwargs: Unpack[GetQueueAttributesRequestTypeDef]
    ) -> GetQueueAttributesResultTypeDef: ...

    def set_queue_attributes(
        self, **kwargs: Unpack[SetQueueAttributesRequestTypeDef]
    ) -> EmptyResponseMetadataTypeDef: ...


class SetupDynamoDbClient(Protocol):
    """The DynamoDB calls set-up makes (boto3's DynamoDB client has them)."""

    def create_table(
        self, **kwargs: Unpack[CreateTableInputTypeDef]
    ) -> CreateTableOutputTypeDef: ...

    def describe_table(
        self, **kwargs: Unpack[DescribeTableInputTypeDef]
    ) -> DescribeTableOutputTypeDef: ...

    def describe_time_to_live(
        self, **kwargs: Unpack[DescribeTimeToLiveInputTypeDef]
    ) -> DescribeTimeToLiveOutputTypeDef: ...

    def update_time_to_live(
        self, **kwargs: Unpack[UpdateTimeToLiveInputTypeDef]
    ) -> UpdateTimeToLiveOutputTypeDef: ...


RETENTION_SECONDS = 14 * 24 * 3600  # the SQS maximum
VISIBILITY_TIMEOUT_SECONDS = 30
MAX_RECEIVE_COUNT = 3

log = structlog.get_logger("offpath.bootstrap")


@dataclass(frozen=True, slots=True)
class ResourceNames:
    """Everything set-up creates: the queues and the two tables (the rollup
    table's name defaults to the events table's + ``-rollups``)."""

    queues: QueueNames = field(default_factory=QueueNames)
    table: str = DEFAULT_TABLE_NAME
    rollup_table: str | None = None

    @property
    def rollups(self) -> str:
        return self.rollup_table or rollup_table_for(self.table)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ResourceNames:
        return cls(
            queues=QueueNames.from_env(env),
            table=table_name_from_env(env),
            rollup_table=rollup_table_name_from_env(env),
        )


@dataclass(frozen=True, slots=True)
class Resources:
    """What bootstrap made (or found)."""

    queue_url: str
    dlq_url: str
    dlq_arn: str
    table: str
    rollup_table: str = ""


def _create_queue(sqs: SetupSqsClient, name: str, attributes: dict[Any, str]) -> str:
    if is_fifo(name):
        attributes = {**attributes, "FifoQueue": "true", "ContentBasedDeduplication": "false"}
    try:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if "QueueAlreadyExists" not in code and "QueueNameExists" not in code:
            raise
    # The queue exists with other attributes: bring them to what we want.
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    mutable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
    sqs.set_queue_attributes(QueueUrl=url, Attributes=mutable)
    return url


def create_queues(sqs: SetupSqsClient, names: QueueNames) -> tuple[str, str, str]:
    """The dead-letter queue, then the queue that redrives into it after
    ``MAX_RECEIVE_COUNT`` receives. Returns (queue_url, dlq_url, dlq_arn)."""
    retention = {"MessageRetentionPeriod": str(RETENTION_SECONDS)}
    dlq_url = _create_queue(sqs, names.dlq, dict(retention))
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = _create_queue(
        sqs,
        names.queue,
        {
            **retention,
            "VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
            ),
        },
    )
    return queue_url, dlq_url, dlq_arn


def _create_active(
    ddb: SetupDynamoDbClient, request: CreateTableInputTypeDef, wait_seconds: float
) -> TableDescriptionTypeDef:
    """Create a table unless it exists; wait until it is ACTIVE."""
    table = request["TableName"]
    try:
        ddb.create_table(**request)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    deadline = time.monotonic() + wait_seconds
    while True:
        description = ddb.describe_table(TableName=table)["Table"]
        if description.get("TableStatus") == "ACTIVE":
            return description
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {table} not ACTIVE after {wait_seconds:.0f}s")
        time.sleep(0.5)


def _enable_ttl(ddb: SetupDynamoDbClient, table: str, attribute: str) -> None:
    ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        ddb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
        )


def create_rollup_table(
    ddb: SetupDynamoDbClient, table: str, *, wait_seconds: float = 60.0
) -> None:
    """The rollup table (pk, sk) with TTL, on-demand billing."""
    description = _create_active(ddb, rollups.create_table_request(table), wait_seconds)
    key = [k["AttributeName"] for k in description.get("KeySchema", [])]
    if key != [rollups.ROLLUP_PARTITION, rollups.ROLLUP_SORT]:
        raise SettingsError(
            f"table {table} exists with key {key}; offpath's rollups need "
            f"[{rollups.ROLLUP_PARTITION!r}, {rollups.ROLLUP_SORT!r}]"
        )
    _enable_ttl(ddb, table, rollups.ROLLUP_TTL)


def create_table(ddb: SetupDynamoDbClient, table: str, *, wait_seconds: float = 60.0) -> None:
    """The events table with its time index and TTL, on-demand billing."""
    description = _create_active(ddb, create_table_request(table), wait_seconds)
    key = [k["AttributeName"] for k in description.get("KeySchema", [])]
    indexes = {i["IndexName"] for i in description.get("GlobalSecondaryIndexes", [])}
    if key != [TABLE_KEY] or TIME_INDEX not in indexes:
        raise SettingsError(
            f"table {table} exists with key {key} and indexes {sorted(indexes)}; "
            f"offpath needs key [{TABLE_KEY!r}] and index {TIME_INDEX!r}"
        )
    _enable_ttl(ddb, table, TTL_ATTRIBUTE)


def bootstrap(
    names: ResourceNames,
    *,
    sqs: SetupSqsClient | None = None,
    ddb: SetupDynamoDbClient | None = None,
) -> Resources:
    """Create (or confirm) every resource offpath needs."""
    sqs = sqs or sqs_client()
    ddb = ddb or dynamodb_client()
    queue_url, dlq_url, dlq_arn = create_queues(sqs, names.queues)
    create_table(ddb, names.table)
    create_rollup_table(ddb, names.rollups)
    resources = Resources(
        queue_url=queue_url,
        dlq_url=dlq_url,
        dlq_arn=dlq_arn,
        table=names.table,
        rollup_table=names.rollups,
    )
    log.info(
        "bootstrap_complete",
        queue_url=queue_url,
        dlq_url=dlq_url,
        table=names.table,
        rollup_table=names.rollups,
    )
    return resources


def main() -> None:
    """Command line: bootstrap against whatever the AWS variables point at."""
    configure_logging("bootstrap")
    try:
        bootstrap(ResourceNames.from_env(environ()))
    except SettingsError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
