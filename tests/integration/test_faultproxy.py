"""The fault proxy between real boto3 clients and the local endpoint: what
botocore makes of each injected fault."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker

from offpath.dev.bootstrap import Resources
from offpath.dev.faultproxy import BATCH_FAILURE_CODE, FaultProxy, Faults, ProxyControl
from offpath.dev.stack import DevStack
from offpath.kit.ids import new_id


@pytest.fixture
def proxy(local_aws: DevStack) -> Iterator[FaultProxy]:
    with FaultProxy(local_aws.host, local_aws.port("local-aws")) as running:
        yield running


def _client(service: str, proxy: FaultProxy, **config: Any) -> Any:
    """A client through the proxy that does not retry, so each call shows
    what one answer was."""
    client: Any = boto3.client(
        service,  # type: ignore[call-overload]
        region_name=os.environ["AWS_REGION"],
        endpoint_url=proxy.url,
        config=Config(**{"retries": {"mode": "standard", "total_max_attempts": 1}, **config}),
    )
    return client


def _entries(n: int) -> list[dict[str, Any]]:
    return [
        {
            "Id": str(i),
            "MessageBody": f"body {i}",
            "MessageGroupId": "g",
            "MessageDeduplicationId": new_id(),
        }
        for i in range(n)
    ]


def _queue_depth(url: str) -> int:
    sqs = boto3.client("sqs", region_name=os.environ["AWS_REGION"])
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def test_forwards_unchanged_without_faults(proxy: FaultProxy, resources: Resources) -> None:
    sqs = _client("sqs", proxy)
    response = sqs.send_message_batch(QueueUrl=resources.queue_url, Entries=_entries(3))
    assert len(response["Successful"]) == 3
    assert response.get("Failed", []) == []
    ddb = _client("dynamodb", proxy)
    assert resources.table in ddb.list_tables()["TableNames"]
    assert proxy.stats.forwarded == 2


def test_stripped_batch_entries_are_failed_and_never_enqueued(
    proxy: FaultProxy, resources: Resources
) -> None:
    proxy.set(batch_fail_rate=1.0)
    sqs = _client("sqs", proxy)
    response = sqs.send_message_batch(QueueUrl=resources.queue_url, Entries=_entries(4))
    assert response.get("Successful", []) == []
    assert sorted(f["Id"] for f in response["Failed"]) == ["0", "1", "2", "3"]
    assert all(not f["SenderFault"] and f["Code"] == BATCH_FAILURE_CODE for f in response["Failed"])
    assert _queue_depth(resources.queue_url) == 0


def test_part_of_a_batch_failed_enqueues_the_rest_only(
    proxy: FaultProxy, resources: Resources
) -> None:
    proxy.set(batch_fail_rate=0.5)
    sqs = _client("sqs", proxy)
    response = sqs.send_message_batch(QueueUrl=resources.queue_url, Entries=_entries(10))
    ok = {e["Id"] for e in response.get("Successful", [])}
    failed = {e["Id"] for e in response.get("Failed", [])}
    assert len(failed) == 5
    assert ok | failed == {str(i) for i in range(10)}
    assert not ok & failed
    assert _queue_depth(resources.queue_url) == len(ok)


@pytest.mark.parametrize("service", ["sqs", "dynamodb"])
def test_throttling_is_throttling_to_botocore(
    proxy: FaultProxy, resources: Resources, service: str
) -> None:
    proxy.set(throttle_rate=1.0)
    client = _client(service, proxy)
    call: Callable[[], object] = (
        (lambda: client.send_message_batch(QueueUrl=resources.queue_url, Entries=_entries(1)))
        if service == "sqs"
        else (lambda: client.describe_table(TableName=resources.table))
    )
    with pytest.raises(ClientError) as caught:
        call()
    context = RetryContext(attempt_number=1, parsed_response=caught.value.response)
    assert ThrottledRetryableChecker().is_retryable(context)
    assert proxy.stats.faults["throttled"] == 1


def test_throttled_calls_are_retried_by_botocore(proxy: FaultProxy, resources: Resources) -> None:
    proxy.set(throttle_rate=1.0)
    sqs = _client("sqs", proxy, retries={"mode": "standard", "total_max_attempts": 3})
    with pytest.raises(ClientError):
        sqs.get_queue_url(QueueName=resources.queue_url.rsplit("/", 1)[1])
    assert proxy.stats.faults["throttled"] == 3


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors(proxy: FaultProxy, resources: Resources, status: int) -> None:
    proxy.set(error_rate=1.0, error_status=status)
    ddb = _client("dynamodb", proxy)
    with pytest.raises(ClientError) as caught:
        ddb.describe_table(TableName=resources.table)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_cancelled_transactions(proxy: FaultProxy, resources: Resources) -> None:
    proxy.set(txn_cancel_rate=1.0)
    ddb = _client("dynamodb", proxy)
    item = {"event_id": {"S": new_id()}}
    with pytest.raises(ClientError) as caught:
        ddb.transact_write_items(
            TransactItems=[{"Put": {"TableName": resources.table, "Item": item}}]
        )
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = caught.value.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["ThrottlingError"]
    assert "Item" not in ddb.get_item(TableName=resources.table, Key=item)


def test_refused_and_blackholed_then_back(proxy: FaultProxy, resources: Resources) -> None:
    ddb = _client("dynamodb", proxy, read_timeout=0.5, connect_timeout=0.5)
    proxy.set(refuse=True)
    # Reset at accept: before or after botocore counts the connection as made.
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        ddb.describe_table(TableName=resources.table)
    proxy.set(blackhole=True)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        ddb.describe_table(TableName=resources.table)
    assert time.monotonic() - started >= 0.5
    proxy.set()
    assert ddb.describe_table(TableName=resources.table)["Table"]["TableName"] == resources.table


def test_only_the_named_actions(proxy: FaultProxy, resources: Resources) -> None:
    proxy.set(Faults(throttle_rate=1.0, actions=frozenset({"PutItem"})))
    ddb = _client("dynamodb", proxy)
    assert ddb.describe_table(TableName=resources.table)["Table"]
    with pytest.raises(ClientError):
        ddb.put_item(TableName=resources.table, Item={"event_id": {"S": new_id()}})


def test_delay(proxy: FaultProxy, resources: Resources) -> None:
    ddb = _client("dynamodb", proxy)
    ddb.describe_table(TableName=resources.table)  # connection and client set up
    proxy.set(delay_s=0.3)
    started = time.monotonic()
    ddb.describe_table(TableName=resources.table)
    assert time.monotonic() - started >= 0.3


def test_command_line_control_port(local_aws: DevStack) -> None:
    """The CLI proxy switches faults through its control port."""
    child = local_aws.spawn(
        "faultproxy-cli",
        "offpath.dev.faultproxy",
        {},
        args=(
            "--upstream",
            f"{local_aws.host}:{local_aws.port('local-aws')}",
            "--control-port",
            "0",
        ),
    )
    try:
        from offpath.kit.logs import parse_line

        control = next(
            int(record["control_port"])
            for line in child.tail
            if (record := parse_line(line)) is not None and record["event"] == "server_started"
        )
        assert child.port is not None
        remote = ProxyControl(child.port, control)
        remote.set(throttle_rate=1.0)
        assert remote.snapshot()["faults"]["throttle_rate"] == 1.0
        ddb = boto3.client(
            "dynamodb",
            region_name=os.environ["AWS_REGION"],
            endpoint_url=f"http://127.0.0.1:{child.port}",
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        with pytest.raises(ClientError) as caught:
            ddb.list_tables()
        assert caught.value.response["Error"]["Code"] == "ThrottlingException"
        assert remote.snapshot()["stats"]["injected"] == {"throttled": 1}
        remote.reset_stats()
        assert remote.snapshot()["stats"]["requests"] == 0
        bad = urllib.request.Request(
            f"http://127.0.0.1:{control}/faults", data=b'{"nope": 1}', method="PUT"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=5)
        assert refused.value.code == 400
        refused.value.close()
    finally:
        local_aws.stop_child("faultproxy-cli")
