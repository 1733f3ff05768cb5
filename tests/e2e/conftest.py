"""The whole system as separate processes on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offpath.client import OffpathClient
from offpath.dev.stack import DevStack

# Short long-polls keep shutdown quick; everything else runs at its defaults,
# so the freshness the tests see is the freshness users get.
STACK_ENV = {"OFFPATH_INGEST_WAIT_S": "1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Local AWS, AnalyticsIngest and QueryService, each its own process."""
    with DevStack(
        aws_port=0,
        query_port=0,
        ingest_port=0,
        env=STACK_ENV,
        log_dir=tmp_path_factory.mktemp("stack-logs"),
    ) as running:
        yield running


@pytest.fixture
def client(stack: DevStack) -> Iterator[OffpathClient]:
    with OffpathClient(stack.query_target, stack.ingest_target) as c:
        yield c
