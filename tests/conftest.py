"""Shared fixtures: the local AWS endpoint (a moto server in its own process,
on a free port) and fresh, uniquely named resources for each test.

Integration and end-to-end tests talk HTTP to that endpoint; nothing here
patches boto3. Each test gets its own queue, DLQ and table, so state never
leaks between tests and queues stay small (moto's SQS slows as they grow).

Every test is marked by its folder (``unit``, ``integration`` or ``e2e``), so
``make unit``, ``make integration`` and ``make e2e`` select by marker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offpath.dev.bootstrap import ResourceNames, Resources, bootstrap
from offpath.dev.stack import DevStack
from offpath.kit.sqs import QueueNames

_KINDS = ("unit", "integration", "e2e")
_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the kind its folder says (tests/<kind>/...)."""
    for item in items:
        kind = item.path.relative_to(_TESTS).parts[0]
        if kind not in _KINDS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(_KINDS)}}}/")
        item.add_marker(kind)


@pytest.fixture(scope="session")
def local_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A moto server on 127.0.0.1:<free port>, with this process's AWS
    variables pointing at it for the whole session."""
    stack = DevStack(aws_port=0, log_dir=tmp_path_factory.mktemp("local-aws-logs"))
    stack.start(("local-aws",))
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]:
            mp.delenv(key)
        for key, value in stack.aws_env().items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        yield stack
    stack.stop()


def unique_names(prefix: str = "t") -> ResourceNames:
    tag = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return ResourceNames(queues=QueueNames(queue=f"{tag}.fifo", dlq=f"{tag}-dlq.fifo"), table=tag)


@pytest.fixture
def resources(local_aws: DevStack) -> Resources:
    """A fresh queue, DLQ and table for one test."""
    return bootstrap(unique_names())


@pytest.fixture
def names(resources: Resources) -> ResourceNames:
    queue = resources.queue_url.rsplit("/", 1)[-1]
    dlq = resources.dlq_url.rsplit("/", 1)[-1]
    return ResourceNames(queues=QueueNames(queue=queue, dlq=dlq), table=resources.table)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
