"""Unit tests for deploy/: the CloudFormation template against what
offpath.kit.bootstrap creates, the IAM policies against what the services call,
the Dockerfile against pyproject.toml and the settings, and the Kubernetes
manifests against the settings and the container hardening they promise.

Nothing here needs Docker, kubectl or AWS: files are parsed, bootstrap runs
against recording fakes, and cfn-lint runs locally.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import pytest

# PyYAML ships no type information and types-PyYAML is not in the lock.
import yaml  # type: ignore[import-untyped]
from botocore import xform_name
from botocore.session import get_session

from offpath.emitter import settings as emitter_settings
from offpath.ingest import settings as ingest_settings
from offpath.ingest.settings import IngestSettings
from offpath.kit import aws as kit_aws
from offpath.kit import bootstrap
from offpath.kit.aws import ResourceNames
from offpath.query import settings as query_settings
from offpath.query.settings import QuerySettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "aws" / "offpath.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
LOCAL = K8S / "overlays" / "local"

# Modules whose ENV_* constants are the OFFPATH_* settings the services read.
SETTINGS_MODULES: tuple[ModuleType, ...] = (
    query_settings,
    ingest_settings,
    emitter_settings,
    kit_aws,
)
# Standard AWS SDK variables a ConfigMap may set (DESIGN.md decision 8).
AWS_VARIABLES = frozenset(
    {"AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
)


# -- loading -------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file, each a mapping."""
    with path.open(encoding="utf-8") as stream:
        docs = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return cast("list[dict[str, Any]]", docs)


@cache
def template() -> dict[str, Any]:
    (doc,) = load_docs(TEMPLATE)
    return doc


def cfn_resource(logical_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = template()["Resources"][logical_id]
    return resource


def cfn_properties(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = cfn_resource(logical_id)["Properties"]
    return properties


def parameter_default(properties: Mapping[str, Any], key: str) -> str:
    """The value of a property written as ``Ref: <Parameter>``, at its default."""
    reference = properties[key]
    assert set(reference) == {"Ref"}, f"{key} should be a Ref to a parameter"
    default: str = template()["Parameters"][reference["Ref"]]["Default"]
    return default


def cfn_scalar(value: Any) -> str:
    """A template scalar as the SQS attribute string bootstrap sends."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def k8s_docs(*roots: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for root in roots:
        for path in sorted(root.glob("*.yaml")):
            if path.name == "kustomization.yaml":
                continue
            for doc in load_docs(path):
                yield path, doc


def kustomization(root: Path) -> dict[str, Any]:
    (doc,) = load_docs(root / "kustomization.yaml")
    return doc


def base_object(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for _, doc in k8s_docs(BASE) if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected one {kind} {name} in the base, found {len(matches)}"
    return matches[0]


def generated_config(*roots: Path) -> dict[str, dict[str, str]]:
    """ConfigMap name -> its literals, with later kustomizations merged over
    earlier ones (as ``behavior: merge`` does)."""
    maps: dict[str, dict[str, str]] = {}
    for root in roots:
        for generator in kustomization(root).get("configMapGenerator", []):
            values = maps.setdefault(generator["name"], {})
            for literal in generator.get("literals", []):
                key, sep, value = str(literal).partition("=")
                assert sep, f"{root}: literal {literal!r} is not KEY=VALUE"
                values[key] = value
    return maps


def env_of(deployment: Mapping[str, Any], *roots: Path) -> dict[str, str]:
    """The environment the Deployment's first container gets from its ConfigMaps."""
    maps = generated_config(*roots)
    env: dict[str, str] = {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    return env


def setting_names() -> set[str]:
    return {
        value
        for module in SETTINGS_MODULES
        for name, value in vars(module).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }


def cpu_millicores(quantity: str | int | float) -> int:
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str | int) -> int:
    text = str(quantity)
    for suffix, factor in _MEMORY_UNITS.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


# -- recording fakes for bootstrap ---------------------------------------------


class RecordingSqs:
    """The SQS calls bootstrap.create_queues makes, recorded instead of sent."""

    def __init__(self) -> None:
        self.created: dict[str, dict[str, str]] = {}

    def create_queue(self, *, QueueName: str, Attributes: dict[str, str]) -> dict[str, str]:
        self.created[QueueName] = dict(Attributes)
        return {"QueueUrl": f"https://sqs.test/000000000000/{QueueName}"}

    def get_queue_attributes(
        self, *, QueueUrl: str, AttributeNames: list[str]
    ) -> dict[str, dict[str, str]]:
        name = QueueUrl.rsplit("/", 1)[-1]
        return {"Attributes": {"QueueArn": f"arn:aws:sqs:us-east-1:000000000000:{name}"}}


class RecordingDynamoDb:
    """The DynamoDB calls bootstrap.create_table makes, recorded instead of sent."""

    def __init__(self) -> None:
        self.create_table_args: dict[str, Any] = {}
        self.ttl_args: dict[str, Any] = {}

    def create_table(self, **kwargs: Any) -> dict[str, Any]:
        self.create_table_args = kwargs
        return {}

    def describe_table(self, *, TableName: str) -> dict[str, Any]:
        args = self.create_table_args
        return {
            "Table": {
                "TableStatus": "ACTIVE",
                "KeySchema": args["KeySchema"],
                "GlobalSecondaryIndexes": args.get("GlobalSecondaryIndexes", []),
            }
        }

    def describe_time_to_live(self, *, TableName: str) -> dict[str, Any]:
        return {"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}

    def update_time_to_live(self, **kwargs: Any) -> dict[str, Any]:
        self.ttl_args = kwargs
        return {}


@pytest.fixture
def bootstrap_sqs() -> RecordingSqs:
    """What bootstrap asks SQS for, with the default names."""
    sqs = RecordingSqs()
    bootstrap.create_queues(cast("SQSClient", sqs), ResourceNames())
    return sqs


@pytest.fixture
def bootstrap_ddb() -> RecordingDynamoDb:
    """What bootstrap asks DynamoDB for, with the default table name."""
    ddb = RecordingDynamoDb()
    bootstrap.create_table(cast("DynamoDBClient", ddb), ResourceNames().table, wait_seconds=0)
    return ddb


# -- CloudFormation: the resources ----------------------------------------------


class TestCloudFormationResources:
    def test_parameter_defaults_are_the_code_defaults(self) -> None:
        """The template's default names are the ones the services use when no
        OFFPATH_* name is set."""
        names = ResourceNames()
        assert parameter_default(cfn_properties("Queue"), "QueueName") == names.queue
        assert parameter_default(cfn_properties("DeadLetterQueue"), "QueueName") == names.dlq
        assert parameter_default(cfn_properties("Table"), "TableName") == names.table

    @pytest.mark.parametrize(
        ("logical_id", "name_of"),
        [("Queue", "queue"), ("DeadLetterQueue", "dlq")],
    )
    def test_queue_has_exactly_bootstraps_attributes(
        self, bootstrap_sqs: RecordingSqs, logical_id: str, name_of: str
    ) -> None:
        """Each queue sets the attributes bootstrap sets, to the same values, and
        nothing else beyond its name and the (AWS-default) SSE-SQS flag."""
        expected = bootstrap_sqs.created[getattr(ResourceNames(), name_of)]
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

    def test_table_has_bootstraps_layout(self, bootstrap_ddb: RecordingDynamoDb) -> None:
        """Billing, key schema, attribute definitions, the time index and TTL are
        what bootstrap's create_table and update_time_to_live send."""
        sent = bootstrap_ddb.create_table_args
        properties = cfn_properties("Table")
        assert properties["BillingMode"] == sent["BillingMode"]
        assert properties["KeySchema"] == sent["KeySchema"]

        def by_name(definitions: list[dict[str, str]]) -> dict[str, str]:
            return {d["AttributeName"]: d["AttributeType"] for d in definitions}

        assert by_name(properties["AttributeDefinitions"]) == by_name(sent["AttributeDefinitions"])
        assert properties["GlobalSecondaryIndexes"] == sent["GlobalSecondaryIndexes"]
        assert (
            properties["TimeToLiveSpecification"]
            == (bootstrap_ddb.ttl_args["TimeToLiveSpecification"])
        )

    def test_table_uses_bootstraps_constants(self) -> None:
        """Key event_id, index by_time on (bucket, sk) projecting ALL, on-demand
        billing and TTL on expires_at, read from bootstrap's constants."""
        properties = cfn_properties("Table")
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["KeySchema"] == [
            {"AttributeName": bootstrap.TABLE_KEY, "KeyType": "HASH"}
        ]
        (index,) = properties["GlobalSecondaryIndexes"]
        assert index["IndexName"] == bootstrap.TIME_INDEX
        assert index["KeySchema"] == [
            {"AttributeName": bootstrap.TIME_PARTITION, "KeyType": "HASH"},
            {"AttributeName": bootstrap.TIME_SORT, "KeyType": "RANGE"},
        ]
        assert index["Projection"] == {"ProjectionType": "ALL"}
        assert properties["TimeToLiveSpecification"] == {
            "AttributeName": bootstrap.TTL_ATTRIBUTE,
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

    def test_outputs_name_the_resources(self) -> None:
        """The outputs deploy/README.md relies on exist and point at the right
        resources."""
        outputs = {name: spec["Value"] for name, spec in template()["Outputs"].items()}
        assert outputs["QueueUrl"] == {"Ref": "Queue"}
        assert outputs["DeadLetterQueueUrl"] == {"Ref": "DeadLetterQueue"}
        assert outputs["TableName"] == {"Ref": "Table"}
        assert outputs["QueryServicePolicyArn"] == {"Ref": "QueryServicePolicy"}
        assert outputs["AnalyticsIngestPolicyArn"] == {"Ref": "AnalyticsIngestPolicy"}

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


# -- CloudFormation: IAM ---------------------------------------------------------

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
        ("dynamodb:Query", f"Table/index/{bootstrap.TIME_INDEX}"),
    },
}

# Where each service's AWS calls live: its own package, the emitter for
# QueryService, and the kit minus its tools (bootstrap, the local endpoint and
# the dev stack run with administrator credentials, never inside a service).
SERVICE_SOURCES = {
    "query": ("services/query", "services/emitter", "services/kit"),
    "ingest": ("services/ingest", "services/kit"),
}
KIT_TOOLS = frozenset({"bootstrap.py", "local_aws.py", "devstack.py"})
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
def aws_operations() -> dict[str, set[str]]:
    """boto3 method name -> the IAM actions of the SQS/DynamoDB operation(s)
    it calls, from botocore's own service models."""
    session = get_session()
    operations: dict[str, set[str]] = {}
    for service in ("sqs", "dynamodb"):
        for operation in session.get_service_model(service).operation_names:
            action = f"{service}:{operation}"
            operations.setdefault(xform_name(operation), set()).add(
                BATCH_ACTIONS.get(action, action)
            )
    return operations


def called_actions(service: str) -> dict[str, set[str]]:
    """IAM actions of the AWS client methods called in a service's code, each
    with where it is called."""
    calls: dict[str, set[str]] = {}
    operations = aws_operations()
    for folder in SERVICE_SOURCES[service]:
        for path in sorted((REPO / folder).rglob("*.py")):
            if folder == "services/kit" and path.name in KIT_TOOLS:
                continue
            for match in re.finditer(r"\.([a-z_][a-z0-9_]*)\(", path.read_text("utf-8")):
                for action in operations.get(match[1], ()):
                    calls.setdefault(action, set()).add(str(path.relative_to(REPO)))
    return calls


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


# -- Dockerfile ------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args


@cache
def dockerfile_stages() -> dict[str, Stage]:
    """Stages by name, each with its instructions (continuations joined,
    comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text("utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = stages[match[2]] = Stage(name=match[2], base=match[1])
        elif current is not None:
            current.instructions.append((keyword, args))
    return stages


def env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in args.split():
            key, _, value = item.partition("=")
            pairs[key] = value
    return pairs


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text("utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[normalize(name)] = version
    return pins


def pip_installs(stage: Stage, venv: str) -> list[str]:
    """Package names installed into ``venv`` by ``pip install --constraint``."""
    for args in stage.all("RUN"):
        match = re.search(
            rf"{re.escape(venv)}/bin/pip install --constraint requirements\.lock ((?:[\w.-]+ ?)+)",
            args,
        )
        if match:
            return match[1].split()
    raise AssertionError(f"no `{venv}/bin/pip install --constraint requirements.lock` found")


def dockerignore_admits(path: str) -> bool:
    """Whether Docker's ignore rules (last match wins, a pattern matching a
    parent matches its contents) let ``path`` into the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for raw in DOCKERIGNORE.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        if pattern.startswith("**/") and "/" not in pattern[3:]:
            hit = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if hit:
            admitted = negate
    return admitted


@dataclass(frozen=True)
class Target:
    stage: str
    module: str
    env_host: str
    env_port: str
    default_port: int
    env_metrics_port: str
    default_metrics_port: int


def query_default_port() -> int:
    return QuerySettings.from_env({}).port


def ingest_default_port() -> int:
    return IngestSettings.from_env({}).port


TARGETS = [
    Target(
        "query",
        "offpath.query",
        query_settings.ENV_HOST,
        query_settings.ENV_PORT,
        query_default_port(),
        query_settings.ENV_METRICS_PORT,
        QuerySettings.from_env({}).metrics_port,
    ),
    Target(
        "ingest",
        "offpath.ingest",
        ingest_settings.ENV_HOST,
        ingest_settings.ENV_PORT,
        ingest_default_port(),
        ingest_settings.ENV_METRICS_PORT,
        IngestSettings.from_env({}).metrics_port,
    ),
]


class TestDockerfile:
    def test_runtime_dependencies_are_pyprojects(self) -> None:
        """The builder installs exactly pyproject.toml's dependencies into the
        runtime venv, each pinned by requirements.lock."""
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
        declared = {
            normalize(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0])
            for spec in pyproject["project"]["dependencies"]
        }
        installed = {
            normalize(name) for name in pip_installs(dockerfile_stages()["builder"], "/opt/venv")
        }
        assert installed == declared
        assert installed <= set(lock_pins()), installed - set(lock_pins())

    def test_codegen_tools_are_locked_and_stay_in_the_builder(self) -> None:
        """grpcio-tools and mypy-protobuf come from the lock, gen_protos.sh runs
        with them, and the runtime stage copies only the runtime venv."""
        builder = dockerfile_stages()["builder"]
        tools = {normalize(name) for name in pip_installs(builder, "/opt/codegen")}
        assert tools == {"grpcio-tools", "mypy-protobuf"}
        assert tools <= set(lock_pins())
        assert any(
            "PYTHON=/opt/codegen/bin/python" in run and "gen_protos.sh" in run
            for run in builder.all("RUN")
        )
        assert any(
            re.search(r"/opt/venv/bin/pip install --no-deps \.$", run) for run in builder.all("RUN")
        )
        assert dockerfile_stages()["runtime"].all("COPY") == ["--from=builder /opt/venv /opt/venv"]

    def test_runtime_user_is_numeric_and_not_root(self) -> None:
        """The image runs as a numeric non-root uid:gid, so Kubernetes can check
        runAsNonRoot."""
        user = dockerfile_stages()["runtime"].one("USER")
        assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user

    @pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.stage)
    def test_target_serves_its_module_on_its_port(self, target: Target) -> None:
        """Each target runs its service's module in exec form, binds all
        interfaces on the settings' default gRPC and metrics ports, exposes
        them, and stops on SIGTERM."""
        stage = dockerfile_stages()[target.stage]
        assert stage.base == "runtime"
        assert json.loads(stage.one("ENTRYPOINT")) == [
            "/opt/venv/bin/python",
            "-m",
            target.module,
        ]
        env = env_pairs(stage)
        assert env == {
            target.env_host: "0.0.0.0",
            target.env_port: str(target.default_port),
            target.env_metrics_port: str(target.default_metrics_port),
        }
        assert stage.one("EXPOSE") == f"{target.default_port} {target.default_metrics_port}"
        assert stage.one("STOPSIGNAL") == "SIGTERM"

    def test_build_context_admits_exactly_what_is_copied(self) -> None:
        """Every path the builder COPYs exists and passes the dockerignore, while
        the local venv, generated code and caches stay out of the context."""
        sources = [
            source
            for args in dockerfile_stages()["builder"].all("COPY")
            if not args.startswith("--from")
            for source in args.split()[:-1]
        ]
        assert sources
        for source in sources:
            assert (REPO / source).exists(), source
            assert dockerignore_admits(source), source
        for private in (
            ".venv/bin/python",
            "gen/python/offpath/v1/query_pb2.py",
            ".git/config",
            "build/lib/x.py",
            "offpath.egg-info/PKG-INFO",
            "services/query/offpath/query/__pycache__",
            "services/query/offpath/query/engine.pyc",
        ):
            assert not dockerignore_admits(private), private


# -- Kubernetes -------------------------------------------------------------------

SERVICES: dict[str, tuple[str, type[QuerySettings] | type[IngestSettings]]] = {
    "query": ("offpath-query", QuerySettings),
    "ingest": ("offpath-ingest", IngestSettings),
}


def containers_with_images() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every complete container (one that names its image) in base and overlay
    manifests and patches, with its pod spec."""
    for path, doc in k8s_docs(BASE, LOCAL):
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if "image" in container:
                label = f"{path.relative_to(K8S)}:{doc['metadata']['name']}/{container['name']}"
                yield label, container, pod


def deployment(service: str) -> dict[str, Any]:
    return base_object("Deployment", SERVICES[service][0])


def main_container(service: str) -> dict[str, Any]:
    container: dict[str, Any] = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    return container


class TestKustomize:
    def test_every_yaml_under_deploy_parses(self) -> None:
        """Each YAML file in deploy/ is valid YAML whose documents are mappings,
        and each Kubernetes object has apiVersion, kind and a name."""
        paths = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
        assert len(paths) >= 10
        for path in paths:
            for doc in load_docs(path):
                if path.is_relative_to(K8S) and path.name != "kustomization.yaml":
                    assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                    assert doc["metadata"].get("name"), path

    @pytest.mark.parametrize("root", [BASE, LOCAL], ids=["base", "local"])
    def test_kustomization_references_exist(self, root: Path) -> None:
        """Every resource and patch a kustomization names is there, and every
        manifest in its folder is listed (none silently left out)."""
        spec = kustomization(root)
        listed = set()
        for entry in spec.get("resources", []):
            target = (root / entry).resolve()
            assert target.exists(), entry
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), entry
            listed.add(target)
        for patch in spec.get("patches", []):
            target = (root / patch["path"]).resolve()
            assert target.exists(), patch
            listed.add(target)
        on_disk = {p.resolve() for p in root.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert on_disk <= listed, on_disk - listed

    def test_overlay_patches_existing_containers(self) -> None:
        """The local overlay's patches name base Deployments and, where they
        change a container, one the base defines."""
        for patch in kustomization(LOCAL).get("patches", []):
            for doc in load_docs(LOCAL / patch["path"]):
                base = base_object(doc["kind"], doc["metadata"]["name"])
                base_names = {c["name"] for c in base["spec"]["template"]["spec"]["containers"]}
                for container in doc["spec"]["template"]["spec"].get("containers", []):
                    assert container["name"] in base_names, container["name"]

    def test_overlay_merges_into_existing_configmaps_in_the_base_namespace(self) -> None:
        """Each `behavior: merge` generator of the overlay names a base
        ConfigMap and the base's namespace, where kustomize looks for it."""
        namespace = kustomization(BASE)["namespace"]
        assert kustomization(LOCAL)["namespace"] == namespace
        base_maps = generated_config(BASE)
        merges = [
            g for g in kustomization(LOCAL)["configMapGenerator"] if g.get("behavior") == "merge"
        ]
        assert merges
        for generator in merges:
            assert generator["name"] in base_maps, generator["name"]
            assert generator.get("namespace") == namespace, generator["name"]

    def test_local_overlay_points_at_an_in_namespace_endpoint(self) -> None:
        """The local overlay's AWS_ENDPOINT_URL names a Service (and port) the
        overlay itself defines."""
        common = generated_config(BASE, LOCAL)["offpath-common"]
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", common["AWS_ENDPOINT_URL"])
        assert match, common["AWS_ENDPOINT_URL"]
        services = [
            doc
            for _, doc in k8s_docs(LOCAL)
            if doc["kind"] == "Service" and doc["metadata"]["name"] == match[1]
        ]
        assert services, f"no Service {match[1]} in the local overlay"
        assert int(match[2]) in {port["port"] for port in services[0]["spec"]["ports"]}
        assert "AWS_ENDPOINT_URL" not in generated_config(BASE)["offpath-common"]


class TestConfigMaps:
    def test_offpath_keys_are_real_settings(self) -> None:
        """Every OFFPATH_* key in a generated ConfigMap (base or overlay) is an
        ENV_* constant of a settings module; other keys are standard AWS variables."""
        known = setting_names()
        for root in (BASE, LOCAL):
            for name, values in generated_config(root).items():
                for key in values:
                    if key.startswith("OFFPATH_"):
                        assert key in known, f"{root.name}/{name}: {key} is not a setting"
                    else:
                        assert key in AWS_VARIABLES, f"{root.name}/{name}: unexpected {key}"

    @pytest.mark.parametrize("overlay", [(BASE,), (BASE, LOCAL)], ids=["base", "local"])
    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_values_are_accepted_by_the_service(
        self, service: str, overlay: tuple[Path, ...]
    ) -> None:
        """The environment each Deployment gets parses into its settings object
        without error (a bad value would crash-loop the pod)."""
        env = env_of(deployment(service), *overlay)
        settings_class = SERVICES[service][1]
        settings_class.from_env(env)
        assert env["AWS_REGION"]

    def test_resource_names_match_the_stack(self) -> None:
        """The queue, DLQ and table names the pods use are the stack's defaults."""
        env = generated_config(BASE)["offpath-common"]
        names = ResourceNames.from_env(env)
        assert names.queue == parameter_default(cfn_properties("Queue"), "QueueName")
        assert names.dlq == parameter_default(cfn_properties("DeadLetterQueue"), "QueueName")
        assert names.table == parameter_default(cfn_properties("Table"), "TableName")

    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_deployment_reads_existing_configmaps(self, service: str) -> None:
        """Each envFrom names a ConfigMap the kustomization generates."""
        maps = generated_config(BASE)
        for source in main_container(service)["envFrom"]:
            assert source["configMapRef"]["name"] in maps


class TestDeployments:
    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_grpc_probes_on_the_serving_port(self, service: str) -> None:
        """Liveness and readiness are Kubernetes grpc probes of the overall
        health (service "") on the port the service listens on; the metrics
        port is declared beside it."""
        settings = SERVICES[service][1].from_env(env_of(deployment(service), BASE))
        container = main_container(service)
        grpc_port, metrics_port = container["ports"]
        assert grpc_port == {"name": "grpc", "containerPort": settings.port, "protocol": "TCP"}
        assert metrics_port == {
            "name": "metrics",
            "containerPort": settings.metrics_port,
            "protocol": "TCP",
        }
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": settings.port, "service": ""}, probe

    def test_query_drains_inside_the_termination_grace_period(self) -> None:
        """Server grace plus emitter drain fit in terminationGracePeriodSeconds,
        and liveness cannot kill the pod before that shutdown ends."""
        settings = QuerySettings.from_env(env_of(deployment("query"), BASE))
        shutdown_s = settings.grace_s + settings.emitter.drain_timeout_s
        pod = deployment("query")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 30
        assert shutdown_s <= pod["terminationGracePeriodSeconds"]
        liveness = main_container("query")["livenessProbe"]
        assert liveness["periodSeconds"] * (liveness["failureThreshold"] - 1) >= shutdown_s

    def test_ingest_stops_inside_the_termination_grace_period(self) -> None:
        """Server grace plus the consumer's join (also the grace) fit in
        terminationGracePeriodSeconds."""
        settings = IngestSettings.from_env(env_of(deployment("ingest"), BASE))
        pod = deployment("ingest")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == 30
        assert 2 * settings.grace_s <= pod["terminationGracePeriodSeconds"]

    def test_every_container_is_locked_down(self) -> None:
        """Every container runs non-root with a read-only root filesystem, no
        privilege escalation, no capabilities and RuntimeDefault seccomp."""
        labels = []
        for label, container, pod in containers_with_images():
            labels.append(label)
            ctx = container.get("securityContext", {})
            pod_ctx = pod.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, label
            assert ctx.get("readOnlyRootFilesystem") is True, label
            assert ctx.get("allowPrivilegeEscalation") is False, label
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], label
            seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", label
        assert len(labels) >= 5, labels

    def test_every_container_has_requests_and_limits(self) -> None:
        """Every container requests and limits CPU and memory, requests no more
        than its limits, and gets exactly its memory request as limit."""
        for label, container, _ in containers_with_images():
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            assert {"cpu", "memory"} <= set(requests), label
            assert {"cpu", "memory"} <= set(limits), label
            assert cpu_millicores(requests["cpu"]) <= cpu_millicores(limits["cpu"]), label
            assert memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"]), label

    def test_query_gets_one_whole_core(self) -> None:
        """QueryService requests and limits exactly one CPU, and memory request
        equals limit: Guaranteed QoS, eligible for an exclusive core."""
        resources = main_container("query")["resources"]
        assert cpu_millicores(resources["requests"]["cpu"]) == 1000
        assert cpu_millicores(resources["limits"]["cpu"]) == 1000
        assert memory_bytes(resources["requests"]["memory"]) == memory_bytes(
            resources["limits"]["memory"]
        )

    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_pod_runs_as_the_image_user_with_a_writable_tmp(self, service: str) -> None:
        """The pod's uid/gid are the image's USER, and /tmp is an emptyDir (the
        only writable path)."""
        pod = deployment(service)["spec"]["template"]["spec"]
        uid, gid = dockerfile_stages()["runtime"].one("USER").split(":")
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid)
        mounts = {m["mountPath"]: m["name"] for m in main_container(service)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]

    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_service_account_is_annotated_for_irsa(self, service: str) -> None:
        """Each Deployment runs under its own ServiceAccount, which carries the
        IRSA role annotation (a placeholder to fill in)."""
        name = deployment(service)["spec"]["template"]["spec"]["serviceAccountName"]
        account = base_object("ServiceAccount", name)
        role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(rf"arn:aws:iam::\w+:role/{name}", role), role

    @pytest.mark.parametrize("service", sorted(SERVICES))
    def test_service_selects_the_pods_and_their_grpc_port(self, service: str) -> None:
        """The Service's selector matches the pod labels and its port targets
        the pods' named grpc port."""
        name = SERVICES[service][0]
        spec = base_object("Service", name)["spec"]
        labels = deployment(service)["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"].items() <= labels.items()
        (port,) = spec["ports"]
        container_port = main_container(service)["ports"][0]
        assert port["targetPort"] == container_port["name"]
        assert port["port"] == container_port["containerPort"]

    def test_query_has_a_disruption_budget(self) -> None:
        """A PodDisruptionBudget covers the QueryService pods and lets at most one
        go at a time."""
        spec = base_object("PodDisruptionBudget", "offpath-query")["spec"]
        labels = deployment("query")["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert spec["maxUnavailable"] == 1
