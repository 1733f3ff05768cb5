"""The template's IAM policies (QueryServicePolicy, AnalyticsIngestPolicy,
DlqOperatorPolicy, QueueDepthPolicy) against what their users call, both
ways: every call is granted, and every grant is called. No wildcards,
exactly the expected (action, resource) grants, found three ways for our own
code: a scan of its source for client method calls, the client Protocols it
is type-checked against (offpath.emitter.sqs.SqsSendClient for QueryService;
offpath.ingest.consumer.SqsConsumeClient and offpath.ingest.store.
EventTableClient for AnalyticsIngest; offpath.client.dlq.DlqClient for the
operators' DLQ tool), and for the resources, the calls the store and the DLQ
tool make on the shared in-memory fakes. Methods map to IAM actions through
botocore's own service models. QueueDepthPolicy is KEDA's (its aws-sqs-queue
scaler reads the queue depth), not our code's. IngestLambdaPolicy (IngestMode=
lambda) is both: the grants of Lambda itself (the event source mapping's
poller on the queue, the runtime's log lines) and exactly the calls the
handler makes, checked against its module's source, its SQS client Protocol
(offpath.ingest.lambda_handler.SqsDeadLetterClient) and a run of the
handler over every path on the fakes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from botocore import xform_name
from botocore.session import get_session

from offpath.client.dlq import DeadLetterQueue, DlqClient
from offpath.emitter.sqs import SqsSendClient
from offpath.ingest import lambda_handler, rollups, store
from offpath.ingest.consumer import SqsConsumeClient
from offpath.ingest.settings import DEFAULT_TABLE_NAME, IngestSettings
from offpath.ingest.store import EventStore, EventTableClient, rollup_table_for
from offpath.kit import aws
from offpath.kit.sqs import MESSAGE_ATTRIBUTES, QueueNames, encode_batch
from offpath.testing.calls import CallJournal
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.testing.sqs import FakeSqs
from offpath.v1 import analytics_pb2

from .manifests import REPO, cfn_properties, render_base_with

POLICIES = {
    "query": "QueryServicePolicy",
    "ingest": "AnalyticsIngestPolicy",
    "operator": "DlqOperatorPolicy",
    "autoscaler": "QueueDepthPolicy",
    "lambda": "IngestLambdaPolicy",
}
# The policies whose user is code of ours (the autoscaler is KEDA).
CODE_POLICIES = ("ingest", "operator", "query")

# (action, resource) pairs each user needs: exactly these, no more.
# Resources are logical ids, or "<id>/index/<name>" for an index ARN.
EXPECTED_GRANTS = {
    "query": {
        ("sqs:GetQueueUrl", "Queue"),
        ("sqs:SendMessage", "Queue"),
    },
    "ingest": {
        ("sqs:GetQueueUrl", "Queue"),
        ("sqs:ReceiveMessage", "Queue"),
        ("sqs:DeleteMessage", "Queue"),
        # Extends a long batch's visibility, delays a failed one, hands back.
        ("sqs:ChangeMessageVisibility", "Queue"),
        ("sqs:GetQueueUrl", "DeadLetterQueue"),
        ("sqs:SendMessage", "DeadLetterQueue"),
        ("dynamodb:PutItem", "Table"),
        ("dynamodb:GetItem", "Table"),
        ("dynamodb:Query", f"Table/index/{store.TIME_INDEX}"),
        ("dynamodb:UpdateItem", "RollupTable"),
        ("dynamodb:GetItem", "RollupTable"),
        ("dynamodb:Query", "RollupTable"),
    },
    # StartMessageMoveTask runs with the caller's permissions: receive,
    # delete and attributes on the DLQ, send on the events queue.
    "operator": {
        ("sqs:GetQueueUrl", "DeadLetterQueue"),
        ("sqs:GetQueueAttributes", "DeadLetterQueue"),
        ("sqs:ReceiveMessage", "DeadLetterQueue"),
        ("sqs:ChangeMessageVisibility", "DeadLetterQueue"),
        ("sqs:DeleteMessage", "DeadLetterQueue"),
        ("sqs:StartMessageMoveTask", "DeadLetterQueue"),
        ("sqs:ListMessageMoveTasks", "DeadLetterQueue"),
        ("sqs:GetQueueUrl", "Queue"),
        ("sqs:SendMessage", "Queue"),
    },
    # KEDA's aws-sqs-queue scaler: GetQueueAttributes (the approximate
    # message counts) on the queue it scales on, and nothing else.
    "autoscaler": {
        ("sqs:GetQueueAttributes", "Queue"),
    },
    # Lambda's own (LAMBDA_SERVICE_GRANTS) and the handler's: the DLQ's
    # look-up and sends, event puts, rollup transactions and query-text reads.
    "lambda": {
        ("sqs:ReceiveMessage", "Queue"),
        ("sqs:DeleteMessage", "Queue"),
        ("sqs:GetQueueAttributes", "Queue"),
        ("logs:CreateLogStream", "IngestLambdaLogGroup"),
        ("logs:PutLogEvents", "IngestLambdaLogGroup"),
        ("sqs:GetQueueUrl", "DeadLetterQueue"),
        ("sqs:SendMessage", "DeadLetterQueue"),
        ("dynamodb:PutItem", "Table"),
        ("dynamodb:UpdateItem", "RollupTable"),
        ("dynamodb:GetItem", "RollupTable"),
    },
}
# What Lambda does under the function's role, not the handler: the event
# source mapping receives, deletes and reads the queue's attributes (AWS's
# AWSLambdaSQSQueueExecutionRole, no more), and the runtime writes the logs.
LAMBDA_SERVICE_GRANTS = {
    ("sqs:ReceiveMessage", "Queue"),
    ("sqs:DeleteMessage", "Queue"),
    ("sqs:GetQueueAttributes", "Queue"),
    ("logs:CreateLogStream", "IngestLambdaLogGroup"),
    ("logs:PutLogEvents", "IngestLambdaLogGroup"),
}
# The handler's own module: its other AWS calls are the store's writes (the
# store module also holds the read API's, which the function never makes),
# checked by running it on the fakes instead.
LAMBDA_SOURCES = ("services/ingest/offpath/ingest/lambda_handler.py", "services/kit")

# Where each user's AWS calls live: QueryService's own package, the emitter
# and the kit; AnalyticsIngest's package and the kit; the DLQ tool's module
# and the kit (the rest of the client package is gRPC, whose method names,
# e.g. query(), are not AWS calls). Set-up and the local endpoint (which run
# with administrator credentials, never inside a service) are in tools/,
# outside these paths.
SERVICE_SOURCES = {
    "query": ("services/query", "services/emitter", "services/kit"),
    "ingest": ("services/ingest", "services/kit"),
    "operator": ("clients/python/offpath/client/dlq.py", "services/kit"),
}

# The AWS client Protocols each user's code calls through, with the AWS
# service whose operations their methods are.
CLIENT_PROTOCOLS: dict[str, tuple[tuple[type[object], str], ...]] = {
    "query": ((SqsSendClient, "sqs"),),
    "ingest": ((SqsConsumeClient, "sqs"), (EventTableClient, "dynamodb")),
    "operator": ((DlqClient, "sqs"),),
}
# boto3 client methods that send no request (close() releases the connections).
NOT_OPERATIONS = frozenset({"close"})

# IAM authorises a batch call by its single-message action.
BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    # No IAM action of its own: each action inside is authorised, and the
    # store's rollup transactions hold Update actions only.
    "dynamodb:TransactWriteItems": "dynamodb:UpdateItem",
}
# The stack's default names -> logical ids, to read a fake's journal.
QUEUE_IDS = {QueueNames().queue: "Queue", QueueNames().dlq: "DeadLetterQueue"}
TABLE_IDS = {DEFAULT_TABLE_NAME: "Table", rollup_table_for(DEFAULT_TABLE_NAME): "RollupTable"}


def policy_statements(service: str) -> list[dict[str, Any]]:
    properties = cfn_properties(POLICIES[service])
    statements: list[dict[str, Any]] = properties["PolicyDocument"]["Statement"]
    return statements


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resource_id(resource: Any) -> str:
    """A policy resource as a logical id (``Fn::GetAtt: [X, Arn]``) or
    ``X/index/name`` (``Fn::Sub: ${X.Arn}/index/name``)."""
    if isinstance(resource, dict) and set(resource) == {"Fn::GetAtt"}:
        logical_id, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn"
        return str(logical_id)
    if isinstance(resource, dict) and set(resource) == {"Fn::Sub"}:
        match = re.fullmatch(r"\$\{(\w+)\.Arn\}(/index/[\w.-]+)", resource["Fn::Sub"])
        assert match, f"unexpected resource {resource}"
        return match[1] + match[2]
    raise AssertionError(f"resource {resource!r} is not an ARN of this template's resources")


def granted(service: str) -> set[tuple[str, str]]:
    return {
        (action, resource_id(resource))
        for statement in policy_statements(service)
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


@cache
def service_operations(aws_service: str) -> dict[str, str]:
    """boto3 method name -> the IAM action of the operation it calls, for one
    AWS service, from botocore's own service model."""
    operations: dict[str, str] = {}
    for operation in get_session().get_service_model(aws_service).operation_names:
        action = f"{aws_service}:{operation}"
        operations[xform_name(operation)] = BATCH_ACTIONS.get(action, action)
    return operations


@cache
def aws_operations() -> dict[str, set[str]]:
    """boto3 method name -> the IAM actions of the SQS/DynamoDB operation(s)
    it calls (a name both services have maps to both)."""
    operations: dict[str, set[str]] = {}
    for aws_service in ("sqs", "dynamodb"):
        for method, action in service_operations(aws_service).items():
            operations.setdefault(method, set()).add(action)
    return operations


def called_actions(service: str) -> dict[str, set[str]]:
    """IAM actions of the AWS client methods called in a service's code, each
    with where it is called."""
    return called_in(SERVICE_SOURCES[service])


def called_in(sources: tuple[str, ...]) -> dict[str, set[str]]:
    """IAM actions of the AWS client methods called in these files and
    folders, each with where it is called."""
    calls: dict[str, set[str]] = {}
    operations = aws_operations()
    for source in sources:
        root = REPO / source
        paths: list[Path] = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in paths:
            for match in re.finditer(r"\.([a-z_][a-z0-9_]*)\(", path.read_text("utf-8")):
                for action in operations.get(match[1], ()):
                    calls.setdefault(action, set()).add(str(path.relative_to(REPO)))
    return calls


def protocol_actions(service: str) -> dict[str, str]:
    """``Protocol.method`` -> its IAM action, for every method of the user's
    client Protocols (close() aside)."""
    methods: dict[str, str] = {}
    for protocol, aws_service in CLIENT_PROTOCOLS[service]:
        operations = service_operations(aws_service)
        for method in sorted(protocol_methods(protocol) - NOT_OPERATIONS):
            where = f"{protocol.__name__}.{method}"
            assert method in operations, f"{where} is not an operation of {aws_service}"
            methods[where] = operations[method]
    return methods


def journal_grants(
    journal: CallJournal, aws_service: str, fake: FakeSqs | None
) -> set[tuple[str, str]]:
    """The (action, resource) pairs a fake's journal shows were called."""
    operations = service_operations(aws_service)
    pairs = set()
    for call in journal.calls:
        action = operations[call.operation]
        request = call.request
        if aws_service == "sqs":
            assert fake is not None
            if "SourceArn" in request:
                # Move tasks name their queue by ARN (arn:aws:sqs:region:account:name).
                name = request["SourceArn"].rsplit(":", 1)[-1]
            else:
                name = request.get("QueueName") or fake.queue(request["QueueUrl"]).name
            resource = QUEUE_IDS[name]
        else:
            # A transaction names its tables in each of its actions.
            if "TransactItems" in request:
                for item in request["TransactItems"]:
                    ((kind, body),) = item.items()
                    assert kind == "Update", request
                    pairs.add((action, TABLE_IDS[body["TableName"]]))
                continue
            index = request.get("IndexName")
            table = TABLE_IDS[request["TableName"]]
            resource = f"{table}/index/{index}" if index else table
        pairs.add((action, resource))
    return pairs


def protocol_methods(protocol: type[object]) -> set[str]:
    """The public methods a client Protocol declares, its base Protocols' too."""
    return {
        name
        for klass in protocol.__mro__
        for name, value in vars(klass).items()
        if callable(value) and not name.startswith("_")
    }


def dlq_tool_on_a_fake() -> FakeSqs:
    """A fake SQS with the stack's two queues (the DLQ as the queue's redrive
    target), on which the DLQ tool looked both up, listed the DLQ, showed a
    message, redrove one message itself and the rest with SQS's move task:
    every path of offpath.client.dlq. Its journal holds only the tool's calls."""
    sqs = FakeSqs()
    names = QueueNames()
    dlq_url = sqs.add_queue(names.dlq, FifoQueue="true")
    policy = json.dumps({"deadLetterTargetArn": sqs.queue(dlq_url).arn, "maxReceiveCount": 3})
    sqs.add_queue(names.queue, FifoQueue="true", RedrivePolicy=policy)
    for number in range(3):
        batch = analytics_pb2.AnalyticsBatch(batch_id=f"b-{number}")
        sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=encode_batch(batch),
            MessageAttributes=MESSAGE_ATTRIBUTES,
            MessageGroupId=f"producer-{number}",
            MessageDeduplicationId=f"d-{number}",
        )
    sqs.journal.calls.clear()
    dlq = DeadLetterQueue.from_names(names, sqs)
    letters = dlq.peek()
    assert len(letters) == 3
    assert dlq.show(letters[0].message_id) is not None
    assert dlq.redrive(limit=1).moved == 1
    assert dlq.redrive().moved == 2
    return sqs


def store_on_a_fake() -> FakeDynamoDb:
    """A fake DynamoDB with the stack's tables, on which the store wrote an
    event (a query, so the query-text read runs too) with its rollups, read
    it back, listed a time range and summarised it: every read and write of
    offpath.ingest.store. Its journal holds only the store's calls."""
    ddb = FakeDynamoDb()
    ddb.create_table(**store.create_table_request(DEFAULT_TABLE_NAME))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(DEFAULT_TABLE_NAME)))
    ddb.journal.calls.clear()
    events = EventStore(ddb, DEFAULT_TABLE_NAME)
    event = analytics_pb2.AnalyticsEvent(
        event_id="0190a8d0-0000-7000-8000-000000000001", service="s", method="/s/M", query="q"
    )
    day_ns = 1_800_000_000 * 10**9
    event.occurred_at.FromNanoseconds(day_ns)
    assert events.write([("b-1", [event])], ingested_ns=day_ns) == 1
    assert events.get(event.event_id) is not None
    page, _ = events.list(day_ns - 10**9, day_ns + 10**9, page_size=10)
    assert len(page) == 1
    assert events.summary(day_ns - 10**9, day_ns + 10**9).event_count == 1
    return ddb


def lambda_on_fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeSqs, FakeDynamoDb]:
    """Fakes with the stack's queues and tables, on which the Lambda handler,
    made as on a cold start from default settings, handled a record with a
    query (puts, the query-text read, rollups), one with an invalid event
    beside a valid one, and a poison one: every path of
    offpath.ingest.lambda_handler. Their journals hold only the handler's calls."""
    sqs = FakeSqs()
    names = QueueNames()
    sqs.add_queue(names.queue, FifoQueue="true")
    sqs.add_queue(names.dlq, FifoQueue="true")
    ddb = FakeDynamoDb()
    ddb.create_table(**store.create_table_request(DEFAULT_TABLE_NAME))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(DEFAULT_TABLE_NAME)))
    ddb.journal.calls.clear()
    monkeypatch.setattr(aws, "sqs_client", lambda *_args: sqs)
    monkeypatch.setattr(aws, "dynamodb_client", lambda *_args: ddb)
    handler = lambda_handler.from_settings(IngestSettings.from_env({}))

    def record(n: int, body: str) -> dict[str, Any]:
        attributes = {
            name: {"stringValue": value["StringValue"], "dataType": value["DataType"]}
            for name, value in MESSAGE_ATTRIBUTES.items()
        }
        return {
            "messageId": f"m-{n}",
            "body": body,
            "attributes": {"MessageGroupId": "g"},
            "messageAttributes": attributes,
        }

    event = analytics_pb2.AnalyticsEvent(
        event_id="0190a8d0-0000-7000-8000-000000000001", service="s", method="/s/M", query="q"
    )
    event.occurred_at.FromNanoseconds(1_800_000_000 * 10**9)
    invalid = analytics_pb2.AnalyticsEvent(event_id="not-a-uuid")
    records = [
        record(1, encode_batch(analytics_pb2.AnalyticsBatch(batch_id="b-1", events=[event]))),
        record(
            2, encode_batch(analytics_pb2.AnalyticsBatch(batch_id="b-2", events=[event, invalid]))
        ),
        record(3, "not base64"),
    ]
    assert handler.handle({"Records": records}) == {"batchItemFailures": []}
    assert len(sqs.queue(names.dlq).messages) == 2
    return sqs, ddb


class TestIamPolicies:
    @pytest.mark.parametrize("service", sorted(POLICIES))
    def test_no_wildcards(self, service: str) -> None:
        """No action or resource of the policy contains a '*', and every
        statement allows (no Deny/NotAction/NotResource tricks)."""
        for statement in policy_statements(service):
            assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, statement
            assert statement["Effect"] == "Allow"
            for text in strings_in([statement["Action"], statement["Resource"]]):
                assert "*" not in text, f"{POLICIES[service]}: wildcard in {text!r}"

    @pytest.mark.parametrize("service", sorted(POLICIES))
    def test_grants_exactly_what_the_user_needs(self, service: str) -> None:
        """The policy's (action, resource) pairs are exactly the user's list:
        a missing one breaks it, an extra one is privilege it does not use."""
        assert granted(service) == EXPECTED_GRANTS[service]


class TestGrantsAreCalled:
    """Both ways for the policies our own code uses: calls are granted, and
    grants are called."""

    @pytest.mark.parametrize("service", CODE_POLICIES)
    def test_code_calls_only_granted_actions(self, service: str) -> None:
        """Every SQS/DynamoDB client method the user's code calls maps to an
        action its policy grants, so a new AWS call cannot ship without its IAM."""
        calls = called_actions(service)
        assert calls, f"found no AWS calls in {SERVICE_SOURCES[service]}: is the scan broken?"
        allowed = {action for action, _ in granted(service)}
        missing = {
            action: sorted(where) for action, where in calls.items() if action not in allowed
        }
        assert not missing, f"{POLICIES[service]} lacks {missing}"

    @pytest.mark.parametrize("service", CODE_POLICIES)
    def test_every_granted_action_is_called(self, service: str) -> None:
        """Every action the policy grants is the action of a client method the
        user's code calls: a grant nothing calls fails."""
        calls = called_actions(service)
        unused = {action for action, _ in granted(service)} - set(calls)
        assert not unused, f"{POLICIES[service]} grants {sorted(unused)}, never called"

    @pytest.mark.parametrize("service", CODE_POLICIES)
    def test_client_protocols_are_exactly_the_granted_actions(self, service: str) -> None:
        """The methods of the user's AWS client Protocols (all mypy lets its
        code call on a client) map to exactly the actions the policy grants:
        none ungranted, none granted without a method."""
        assert not NOT_OPERATIONS & set(aws_operations()), "close became an AWS operation"
        methods = protocol_actions(service)
        # Every user looks its queues up by name (offpath.kit.sqs.QueueUrlClient).
        assert any(where.endswith(".get_queue_url") for where in methods), sorted(methods)
        allowed = {action for action, _ in granted(service)}
        missing = {where: action for where, action in methods.items() if action not in allowed}
        assert not missing, f"{POLICIES[service]} lacks {missing}"
        unused = allowed - set(methods.values())
        assert not unused, f"{POLICIES[service]} grants {sorted(unused)}, in no Protocol"

    def test_dlq_tool_calls_exactly_its_grants_on_each_queue(self) -> None:
        """Listing, showing and redriving the DLQ on the fake calls exactly the
        operator policy's (action, queue) pairs: attributes, receive,
        visibility, delete and move tasks on the DLQ, send on the events
        queue, look-ups on both."""
        sqs = dlq_tool_on_a_fake()
        assert journal_grants(sqs.journal, "sqs", sqs) == granted("operator")

    def test_store_calls_exactly_its_table_grants(self) -> None:
        """Writing, reading, listing and summarising on the fake calls exactly
        AnalyticsIngest's DynamoDB (action, resource) pairs: item calls on the
        table, Query only on the time index."""
        ddb = store_on_a_fake()
        table_grants = {pair for pair in granted("ingest") if pair[0].startswith("dynamodb:")}
        assert journal_grants(ddb.journal, "dynamodb", None) == table_grants

    def test_queue_depth_policy_is_for_the_keda_trigger(self) -> None:
        """The keda component scales on the queue with the aws-sqs-queue
        scaler under the KEDA operator's identity: the only caller of
        QueueDepthPolicy's GetQueueAttributes, which no service's own code
        is granted (the Lambda role's is its event source mapping's)."""
        objects = render_base_with("keda")
        (scaled,) = [doc for doc in objects if doc["kind"] == "ScaledObject"]
        assert [trigger["type"] for trigger in scaled["spec"]["triggers"]] == ["aws-sqs-queue"]
        (auth,) = [doc for doc in objects if doc["kind"] == "TriggerAuthentication"]
        assert auth["spec"]["podIdentity"].get("identityOwner", "keda") == "keda"
        for service in CODE_POLICIES:
            # The operators' tool reads the DLQ's ARN and depth, never the queue's.
            assert ("sqs:GetQueueAttributes", "Queue") not in granted(service)


class TestLambdaGrants:
    """IngestLambdaPolicy both ways: Lambda's own grants, and the handler's
    calls granted and called."""

    def test_handler_calls_exactly_its_grants(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every path of the handler on the fakes calls exactly the policy's
        (action, resource) pairs beside Lambda's own: the DLQ's look-up and
        sends, puts on the events table, updates and reads of the rollups."""
        sqs, ddb = lambda_on_fakes(monkeypatch)
        called = journal_grants(sqs.journal, "sqs", sqs) | journal_grants(
            ddb.journal, "dynamodb", None
        )
        assert called == granted("lambda") - LAMBDA_SERVICE_GRANTS

    def test_handler_source_calls_only_granted_actions(self) -> None:
        """Every SQS/DynamoDB client method the handler's module and the kit
        call maps to an action the policy grants."""
        calls = called_in(LAMBDA_SOURCES)
        assert "sqs:SendMessage" in calls, "found no send in the handler: is the scan broken?"
        allowed = {action for action, _ in granted("lambda")}
        missing = {
            action: sorted(where) for action, where in calls.items() if action not in allowed
        }
        assert not missing, f"IngestLambdaPolicy lacks {missing}"

    def test_sqs_protocol_is_exactly_the_dead_letter_grants(self) -> None:
        """The handler's SQS client Protocol (all mypy lets it call) maps to
        exactly the policy's SQS actions on the DLQ."""
        methods = {
            service_operations("sqs")[method]
            for method in protocol_methods(lambda_handler.SqsDeadLetterClient) - NOT_OPERATIONS
        }
        dlq = {action for action, resource in granted("lambda") if resource == "DeadLetterQueue"}
        assert methods == dlq

    def test_service_grants_are_lambdas_own(self) -> None:
        """On the queue the role allows only what the event source mapping
        does, and the handler never calls those (Lambda deletes, not it)."""
        on_queue = {pair for pair in granted("lambda") if pair[1] == "Queue"}
        assert on_queue == {pair for pair in LAMBDA_SERVICE_GRANTS if pair[1] == "Queue"}
        calls = called_in(LAMBDA_SOURCES)
        assert not {action for action, _ in on_queue} & set(calls)

    def test_role_holds_the_policy_only_and_only_lambda_assumes_it(self) -> None:
        """The execution role's one policy is IngestLambdaPolicy (no inline or
        AWS-managed extras), and its trust policy admits the Lambda service only."""
        role = cfn_properties("IngestLambdaRole")
        assert role["ManagedPolicyArns"] == [{"Ref": "IngestLambdaPolicy"}]
        assert "Policies" not in role
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust == {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
        function = cfn_properties("IngestLambda")
        assert function["Role"] == {"Fn::GetAtt": ["IngestLambdaRole", "Arn"]}
