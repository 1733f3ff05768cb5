"""What a debugging engineer relies on: reflection, health, buf curl, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from offpath.dev.stack import DevStack
from offpath.kit.logs import parse_line
from offpath.testing.waits import wait_until

EXPECTED = {
    "query": "offpath.v1.QueryService",
    "ingest": "offpath.v1.AnalyticsIngest",
}
COMMON = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def _buf() -> str:
    path = os.environ.get("OFFPATH_BUF")
    if not path or not os.path.exists(path):
        pytest.skip("buf CLI not installed (make test installs it and sets OFFPATH_BUF)")
    return path


@pytest.mark.parametrize("name", ["query", "ingest"])
def test_reflection_lists_service_health_and_reflection(stack: DevStack, name: str) -> None:
    """Server reflection lists the offpath service, health and reflection itself."""
    with grpc.insecure_channel(f"{stack.host}:{stack.port(name)}") as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert services == {EXPECTED[name], *COMMON}


@pytest.mark.parametrize("name", ["query", "ingest"])
def test_health_reports_serving(stack: DevStack, name: str) -> None:
    """The standard health service answers SERVING, overall and for the named service."""
    with grpc.insecure_channel(f"{stack.host}:{stack.port(name)}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", EXPECTED[name]):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _buf_curl(*args: str) -> str:
    """``buf curl`` over plaintext HTTP/2 (as the README types it); its stdout."""
    return subprocess.run(
        [_buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
@pytest.mark.parametrize("name", ["query", "ingest"])
def test_buf_curl_lists_services(stack: DevStack, name: str, protocol: str) -> None:
    """`buf curl --list-services` sees every service by reflection, over v1 (what grpcurl
    >= 1.9 tries first) and over v1alpha."""
    out = _buf_curl(
        "--reflect-protocol", protocol, "--list-services", f"http://{stack.host}:{stack.port(name)}"
    )
    assert set(out.split()) == {EXPECTED[name], *COMMON}


@pytest.mark.parametrize("name", ["query", "ingest"])
def test_buf_curl_health_list(stack: DevStack, name: str) -> None:
    """`buf curl` calls Health/List with its schema from v1 reflection; the answer names the
    server as a whole and the offpath service, both SERVING."""
    out = _buf_curl(
        "--reflect-protocol",
        "grpc-v1",
        f"http://{stack.host}:{stack.port(name)}/grpc.health.v1.Health/List",
    )
    statuses = {service: reply["status"] for service, reply in json.loads(out)["statuses"].items()}
    assert statuses == {"": "SERVING", EXPECTED[name]: "SERVING"}


@pytest.mark.parametrize("name", ["query", "ingest"])
def test_expected_errors_log_no_error(stack: DevStack, name: str) -> None:
    """Health/List logs nothing and a request that does not decode logs one warning line
    with no traceback: the service's log shows no ERROR for either."""
    child = stack.children[name]
    with grpc.insecure_channel(f"{stack.host}:{stack.port(name)}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.List(health_pb2.HealthListRequest(), timeout=5)
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as raised:
            check(b"\xff\xff\xff", timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def undecodable() -> list[dict[str, Any]]:
        records = (parse_line(line) for line in list(child.tail))
        return [r for r in records if r is not None and r["event"] == "rpc_request_undecodable"]

    # Logged before the status is sent, so on its way once the call has failed; List's
    # line, had there been one, came before it.
    wait_until(lambda: bool(undecodable()), timeout=10)
    (record,) = undecodable()
    assert record["level"] == "warning"
    assert record["method"] == "/grpc.health.v1.Health/Check"
    assert "exception" not in record
    lines = [parse_line(line) for line in list(child.tail)]
    assert [r for r in lines if r is not None and r["level"] == "error"] == []


def test_buf_curl_query_then_get_event(stack: DevStack) -> None:
    """The README's buf curl commands: Query answers with an eventId, GetEvent returns it."""
    buf = _buf()
    base = [buf, "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    answer = json.loads(
        subprocess.run(
            [
                *base,
                "-d",
                '{"query":"kubernetes"}',
                f"http://{stack.query_target}/offpath.v1.QueryService/Query",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert answer["matchedSkills"][0]["name"] == "Kubernetes"
    event_id = answer["eventId"]
    request = json.dumps({"eventId": event_id})
    url = f"http://{stack.ingest_target}/offpath.v1.AnalyticsIngest/GetEvent"
    for _ in range(50):
        done = subprocess.run(
            [*base, "-d", request, url], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0:
            break
        assert "not_found" in done.stderr.lower()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"]["eventId"] == event_id


def test_cli_query_then_event(stack: DevStack) -> None:
    """`offpath query` prints the answer and event id; `offpath event --wait` prints
    it as JSON."""
    env = {
        **os.environ,
        "OFFPATH_QUERY_TARGET": stack.query_target,
        "OFFPATH_INGEST_TARGET": stack.ingest_target,
    }
    cli = [sys.executable, "-m", "offpath.client"]
    out = subprocess.run(
        [*cli, "query", "k8s"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "Kubernetes" in out
    event_id = out.strip().splitlines()[-1].split()[1]
    shown = subprocess.run(
        [*cli, "event", event_id, "--wait", "5", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(shown)["event"]["eventId"] == event_id


def test_cli_reports_server_errors_plainly(stack: DevStack) -> None:
    """A bad request prints the status and message, exits 2 (invalid input), and
    shows no traceback."""
    env = {**os.environ, "OFFPATH_QUERY_TARGET": stack.query_target}
    done = subprocess.run(
        [sys.executable, "-m", "offpath.client", "query", ""],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("offpath: INVALID_ARGUMENT: query must not be empty")
    assert "Traceback" not in done.stderr
