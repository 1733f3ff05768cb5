"""The template's IAM policies (QueryServicePolicy, AnalyticsIngestPolicy)
against what each service calls: no wildcards, exactly the expected grants,
and every AWS call the service can make is granted, found two ways: a scan of
its source for client method calls, and the client Protocols its code is
type-checked against (offpath.emitter.sqs.SqsSendClient for QueryService;
offpath.ingest.consumer.SqsConsumeClient and offpath.ingest.store.
EventTableClient for AnalyticsIngest). Methods map to IAM actions through
botocore's own service models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
from botocore import xform_name
from botocore.session import get_session

from offpath.emitter.sqs import SqsSendClient
from offpath.ingest import store
from offpath.ingest.consumer import SqsConsumeClient
from offpath.ingest.store import EventTableClient

from .manifests import REPO, cfn_properties

POLICIES = {"query": "QueryServicePolicy", "ingest": "AnalyticsIngestPolicy"}

# (action, resource) pairs each service needs: exactly these, no more.
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
        ("sqs:ChangeMessageVisibility", "Queue"),
        ("sqs:GetQueueUrl", "DeadLetterQueue"),
        ("sqs:SendMessage", "DeadLetterQueue"),
        ("dynamodb:BatchWriteItem", "Table"),
        ("dynamodb:PutItem", "Table"),
        ("dynamodb:GetItem", "Table"),
        ("dynamodb:Query", "Table"),
        ("dynamodb:Query", f"Table/index/{store.TIME_INDEX}"),
    },
}

# Where each service's AWS calls live: its own package, the emitter for
# QueryService, and the kit. Set-up and the local endpoint (which run with
# administrator credentials, never inside a service) are in tools/, outside
# these folders.
SERVICE_SOURCES = {
    "query": ("services/query", "services/emitter", "services/kit"),
    "ingest": ("services/ingest", "services/kit"),
}

# The AWS client Protocols each service's code calls through, with the AWS
# service whose operations their methods are.
CLIENT_PROTOCOLS: dict[str, tuple[tuple[type[object], str], ...]] = {
    "query": ((SqsSendClient, "sqs"),),
    "ingest": ((SqsConsumeClient, "sqs"), (EventTableClient, "dynamodb")),
}
# boto3 client methods that send no request (close() releases the connections).
NOT_OPERATIONS = frozenset({"close"})

# IAM authorises a batch call by its single-message action.
BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


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
    for folder in SERVICE_SOURCES[service]:
        for path in sorted((REPO / folder).rglob("*.py")):
            for match in re.finditer(r"\.([a-z_][a-z0-9_]*)\(", path.read_text("utf-8")):
                for action in operations.get(match[1], ()):
                    calls.setdefault(action, set()).add(str(path.relative_to(REPO)))
    return calls


def protocol_methods(protocol: type[object]) -> set[str]:
    """The public methods a client Protocol declares, its base Protocols' too."""
    return {
        name
        for klass in protocol.__mro__
        for name, value in vars(klass).items()
        if callable(value) and not name.startswith("_")
    }


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
    def test_grants_exactly_what_the_service_needs(self, service: str) -> None:
        """The policy's (action, resource) pairs are exactly the service's list:
        a missing one breaks the service, an extra one is privilege it does not
        use."""
        assert granted(service) == EXPECTED_GRANTS[service]

    @pytest.mark.parametrize("service", sorted(POLICIES))
    def test_service_code_calls_only_granted_actions(self, service: str) -> None:
        """Every SQS/DynamoDB client method the service's code calls maps to an
        action its policy grants, so a new AWS call cannot ship without its IAM."""
        calls = called_actions(service)
        assert calls, f"found no AWS calls in {SERVICE_SOURCES[service]}: is the scan broken?"
        allowed = {action for action, _ in granted(service)}
        missing = {
            action: sorted(where) for action, where in calls.items() if action not in allowed
        }
        assert not missing, f"{POLICIES[service]} lacks {missing}"

    @pytest.mark.parametrize("service", sorted(POLICIES))
    def test_client_protocols_call_only_granted_actions(self, service: str) -> None:
        """Every method of the service's AWS client Protocols (all mypy lets its
        code call on a client) is an SQS/DynamoDB operation whose IAM action the
        policy grants."""
        allowed = {action for action, _ in granted(service)}
        assert not NOT_OPERATIONS & set(aws_operations()), "close became an AWS operation"
        methods: dict[str, str] = {}
        for protocol, aws_service in CLIENT_PROTOCOLS[service]:
            operations = service_operations(aws_service)
            for method in sorted(protocol_methods(protocol) - NOT_OPERATIONS):
                where = f"{protocol.__name__}.{method}"
                assert method in operations, f"{where} is not an operation of {aws_service}"
                methods[where] = operations[method]
        # Both services look their queue up by name (offpath.kit.sqs.QueueUrlClient).
        assert any(where.endswith(".get_queue_url") for where in methods), sorted(methods)
        missing = {where: action for where, action in methods.items() if action not in allowed}
        assert not missing, f"{POLICIES[service]} lacks {missing}"
