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
scaler reads the queue depth), not our code's.
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
from offpath.ingest import rollups, store
from offpath.ingest.consumer import SqsConsumeClient
from offpath.ingest.settings import DEFAULT_TABLE_NAME
from offpath.ingest.store import EventStore, EventTableClient, rollup_table_for
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
}

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
    calls: dict[str, set[str]] = {}
    operations = aws_operations()
    for source in SERVICE_SOURCES[service]:
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
        QueueDepthPolicy's GetQueueAttributes, which no service role has."""
        objects = render_base_with("keda")
        (scaled,) = [doc for doc in objects if doc["kind"] == "ScaledObject"]
        assert [trigger["type"] for trigger in scaled["spec"]["triggers"]] == ["aws-sqs-queue"]
        (auth,) = [doc for doc in objects if doc["kind"] == "TriggerAuthentication"]
        assert auth["spec"]["podIdentity"].get("identityOwner", "keda") == "keda"
        for service in CODE_POLICIES:
            # The operators' tool reads the DLQ's ARN and depth, never the queue's.
            assert ("sqs:GetQueueAttributes", "Queue") not in granted(service)
