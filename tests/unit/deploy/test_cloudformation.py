"""The CloudFormation template's resources (deploy/aws/offpath.yaml) against
the code: its queues are the ones set-up (offpath.dev.bootstrap) creates, its
table has the schema the store (offpath.ingest.store) owns, its default names
are the ones the services use, the ingest Lambda function (IngestMode=lambda)
is wired to the queue as the handler expects, and cfn-lint accepts it.

Bootstrap runs against the shared in-memory fakes (offpath.testing), typed as
boto3's clients, so nothing here needs AWS. The IAM policies are in
test_iam.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from offpath.dev import bootstrap
from offpath.dev.bootstrap import ResourceNames
from offpath.ingest import settings as ingest_settings
from offpath.ingest import store
from offpath.ingest.settings import DEFAULT_TABLE_NAME, IngestSettings
from offpath.kit.sqs import ENV_DLQ_NAME, ENV_QUEUE_NAME, QueueNames
from offpath.query.settings import QuerySettings
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeSqs

from .manifests import TEMPLATE, cfn_properties, cfn_resource, parameter_default, template


def cfn_scalar(value: Any) -> str:
    """A template scalar as the SQS attribute string bootstrap sends."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table_layout(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a CreateTable request and the template's table must agree on:
    billing, key schema, attribute definitions (in any order) and indexes."""

    def by_name(definitions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        return {d["AttributeName"]: d["AttributeType"] for d in definitions}

    return {
        "BillingMode": spec["BillingMode"],
        "KeySchema": spec["KeySchema"],
        "AttributeDefinitions": by_name(spec["AttributeDefinitions"]),
        "GlobalSecondaryIndexes": spec["GlobalSecondaryIndexes"],
    }


@pytest.fixture
def bootstrap_sqs() -> FakeSqs:
    """An in-memory SQS in which bootstrap created the queues, default names."""
    sqs = FakeSqs()
    bootstrap.create_queues(sqs, QueueNames())
    return sqs


@pytest.fixture
def bootstrap_ddb() -> FakeDynamoDb:
    """An in-memory DynamoDB in which bootstrap created the table, default name."""
    ddb = FakeDynamoDb()
    bootstrap.create_table(ddb, DEFAULT_TABLE_NAME, wait_seconds=0)
    return ddb


class TestNames:
    def test_parameter_defaults_are_the_code_defaults(self) -> None:
        """The template's default names are the ones the services and set-up use
        when no OFFPATH_* name is set."""
        queue = parameter_default(cfn_properties("Queue"), "QueueName")
        dlq = parameter_default(cfn_properties("DeadLetterQueue"), "QueueName")
        table = parameter_default(cfn_properties("Table"), "TableName")
        ingest = IngestSettings.from_env({})
        assert (ingest.queues.queue, ingest.queues.dlq, ingest.table) == (queue, dlq, table)
        assert QuerySettings.from_env({}).emitter.queue_name == queue
        setup = ResourceNames()
        assert (setup.queues.queue, setup.queues.dlq, setup.table) == (queue, dlq, table)


class TestQueues:
    @pytest.mark.parametrize(
        ("logical_id", "name_of"),
        [("Queue", "queue"), ("DeadLetterQueue", "dlq")],
    )
    def test_queue_has_exactly_bootstraps_attributes(
        self, bootstrap_sqs: FakeSqs, logical_id: str, name_of: str
    ) -> None:
        """Each queue sets the attributes bootstrap sets, to the same values, and
        nothing else beyond its name and the (AWS-default) SSE-SQS flag."""
        sent = {
            request["QueueName"]: request["Attributes"]
            for request in bootstrap_sqs.journal.of("create_queue")
        }
        names = QueueNames()
        expected = sent[getattr(names, name_of)]
        properties = cfn_properties(logical_id)
        assert set(properties) - {"QueueName", "SqsManagedSseEnabled"} == set(expected)
        for key, value in expected.items():
            if key == "RedrivePolicy":
                policy = json.loads(value)
                template_policy = properties[key]
                assert int(template_policy["maxReceiveCount"]) == int(policy["maxReceiveCount"])
                assert template_policy["deadLetterTargetArn"] == {
                    "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
                }
                assert policy["deadLetterTargetArn"] == bootstrap_sqs.queue(names.dlq).arn
            else:
                assert cfn_scalar(properties[key]) == value, key

    def test_queues_use_bootstraps_constants(self) -> None:
        """FIFO on both queues, 14-day retention, 30 s visibility and redrive
        after bootstrap.MAX_RECEIVE_COUNT receives, read from the constants."""
        queue, dlq = cfn_properties("Queue"), cfn_properties("DeadLetterQueue")
        for properties in (queue, dlq):
            assert properties["FifoQueue"] is True
            assert properties["ContentBasedDeduplication"] is False
            assert properties["MessageRetentionPeriod"] == bootstrap.RETENTION_SECONDS
        assert queue["VisibilityTimeout"] == bootstrap.VISIBILITY_TIMEOUT_SECONDS
        assert queue["RedrivePolicy"]["maxReceiveCount"] == bootstrap.MAX_RECEIVE_COUNT


class TestTable:
    def test_table_has_the_stores_layout(self) -> None:
        """Billing, key schema, attribute definitions and the time index are
        those of the store's create_table_request."""
        assert table_layout(cfn_properties("Table")) == table_layout(
            store.create_table_request(DEFAULT_TABLE_NAME)
        )

    def test_table_is_the_one_bootstrap_creates(self, bootstrap_ddb: FakeDynamoDb) -> None:
        """The layout and TTL are what bootstrap's create_table and
        update_time_to_live send to the local endpoint."""
        (created,) = bootstrap_ddb.journal.of("create_table")
        (ttl,) = bootstrap_ddb.journal.of("update_time_to_live")
        properties = cfn_properties("Table")
        assert table_layout(properties) == table_layout(created)
        assert properties["TimeToLiveSpecification"] == ttl["TimeToLiveSpecification"]

    def test_table_uses_the_stores_constants(self) -> None:
        """Key event_id, index by_time on (bucket, sk) projecting ALL, on-demand
        billing and TTL on expires_at, read from the store's constants."""
        properties = cfn_properties("Table")
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["KeySchema"] == [{"AttributeName": store.TABLE_KEY, "KeyType": "HASH"}]
        (index,) = properties["GlobalSecondaryIndexes"]
        assert index["IndexName"] == store.TIME_INDEX
        assert index["KeySchema"] == [
            {"AttributeName": store.TIME_PARTITION, "KeyType": "HASH"},
            {"AttributeName": store.TIME_SORT, "KeyType": "RANGE"},
        ]
        assert index["Projection"] == {"ProjectionType": "ALL"}
        assert properties["TimeToLiveSpecification"] == {
            "AttributeName": store.TTL_ATTRIBUTE,
            "Enabled": True,
        }

    def test_table_data_is_protected(self) -> None:
        """Point-in-time recovery and encryption are on, and deleting or replacing
        the stack keeps the table."""
        properties = cfn_properties("Table")
        assert properties["PointInTimeRecoverySpecification"] == {
            "PointInTimeRecoveryEnabled": True
        }
        assert properties["SSESpecification"]["SSEEnabled"] is True
        assert cfn_resource("Table")["DeletionPolicy"] == "Retain"
        assert cfn_resource("Table")["UpdateReplacePolicy"] == "Retain"


# Everything IngestMode=lambda adds, and nothing else depends on.
LAMBDA_RESOURCES = (
    "IngestLambdaLogGroup",
    "IngestLambdaPolicy",
    "IngestLambdaRole",
    "IngestLambda",
    "IngestEventSourceMapping",
)


class TestIngestLambda:
    def test_only_lambda_mode_creates_it(self) -> None:
        """IngestMode defaults to pod; the function, its role, policy, log group
        and mapping (and its output) exist only under IngestByLambda, and the
        mode needs the image parameter (a template rule)."""
        doc = template()
        mode = doc["Parameters"]["IngestMode"]
        assert (mode["Default"], mode["AllowedValues"]) == ("pod", ["pod", "lambda"])
        assert doc["Conditions"]["IngestByLambda"] == {
            "Fn::Equals": [{"Ref": "IngestMode"}, "lambda"]
        }
        conditioned = {name for name, spec in doc["Resources"].items() if spec.get("Condition")}
        assert conditioned == set(LAMBDA_RESOURCES)
        assert all(cfn_resource(n)["Condition"] == "IngestByLambda" for n in LAMBDA_RESOURCES)
        assert doc["Outputs"]["IngestLambdaName"]["Condition"] == "IngestByLambda"
        rule = doc["Rules"]["LambdaNeedsItsImage"]
        assert rule["RuleCondition"] == doc["Conditions"]["IngestByLambda"]
        (assertion,) = rule["Assertions"]
        assert assertion["Assert"] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": "IngestLambdaImageUri"}, ""]}]
        }

    def test_mapping_feeds_the_queue_in_batches_with_item_failures(self) -> None:
        """The event source mapping reads the events queue in batches of 10 (a
        FIFO queue's most) and reads batchItemFailures back, which the handler
        returns."""
        mapping = cfn_properties("IngestEventSourceMapping")
        assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["Queue", "Arn"]}
        assert mapping["FunctionName"] == {"Ref": "IngestLambda"}
        assert mapping["BatchSize"] == 10
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]

    def test_function_fits_the_queue_and_reads_the_stacks_names(self) -> None:
        """The function is the image parameter's, times out within the queue's
        visibility timeout (Lambda requires it), and gets the stack's queue, DLQ
        and table names in the variables the handler's settings read."""
        function = cfn_properties("IngestLambda")
        assert function["PackageType"] == "Image"
        assert function["Code"] == {"ImageUri": {"Ref": "IngestLambdaImageUri"}}
        assert "ImageConfig" not in function  # the image's CMD names the handler
        assert function["Timeout"] <= bootstrap.VISIBILITY_TIMEOUT_SECONDS
        assert function["Environment"]["Variables"] == {
            ENV_QUEUE_NAME: {"Fn::GetAtt": ["Queue", "QueueName"]},
            ENV_DLQ_NAME: {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]},
            ingest_settings.ENV_TABLE_NAME: {"Ref": "Table"},
            ingest_settings.ENV_ROLLUP_TABLE_NAME: {"Ref": "RollupTable"},
        }

    def test_logs_go_to_the_stacks_log_group(self) -> None:
        """The log group is the one Lambda writes to for the function's name,
        with a retention, so the role needs no logs:CreateLogGroup."""
        name = cfn_properties("IngestLambda")["FunctionName"]
        group = cfn_properties("IngestLambdaLogGroup")
        assert name == {"Fn::Sub": "${AWS::StackName}-ingest"}
        assert group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${AWS::StackName}-ingest"}
        assert group["RetentionInDays"] > 0


class TestTemplate:
    def test_outputs_name_the_resources(self) -> None:
        """The outputs deploy/README.md relies on exist and point at the right
        resources."""
        outputs = {name: spec["Value"] for name, spec in template()["Outputs"].items()}
        assert outputs["QueueUrl"] == {"Ref": "Queue"}
        assert outputs["DeadLetterQueueUrl"] == {"Ref": "DeadLetterQueue"}
        assert outputs["TableName"] == {"Ref": "Table"}
        assert outputs["QueryServicePolicyArn"] == {"Ref": "QueryServicePolicy"}
        assert outputs["AnalyticsIngestPolicyArn"] == {"Ref": "AnalyticsIngestPolicy"}
        assert outputs["QueueDepthPolicyArn"] == {"Ref": "QueueDepthPolicy"}
        assert outputs["DlqOperatorPolicyArn"] == {"Ref": "DlqOperatorPolicy"}

    def test_cfn_lint_passes(self) -> None:
        """cfn-lint (the version the lock pins) finds no error, warning or
        informational finding in the template."""
        cfn_lint = Path(sys.executable).parent / "cfn-lint"
        assert cfn_lint.exists(), f"cfn-lint is not installed next to {sys.executable}"
        result = subprocess.run(
            [str(cfn_lint), "--include-checks", "I", "--", str(TEMPLATE)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
