"""AnalyticsIngest's read API behind a bearer token, as a process on a free port
over the local AWS endpoint: UNAUTHENTICATED without the token (the Python
client, buf curl, the CLI), served with it, health and reflection open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offpath.client import OffpathClient
from offpath.client.settings import ClientSettings
from offpath.dev.bootstrap import ResourceNames, bootstrap
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log
from offpath.kit.sqs import QueueNames
from offpath.testing.waits import wait_until

TOKEN_OLD = "e2e-old-token-0123456789abcdef"
TOKEN_NEW = "e2e-new-token-fedcba9876543210"
UNKNOWN_ID = "0190a6f2-7a55-7cc1-9d2b-00000000ffff"


@dataclass
class Running:
    target: str
    log: Path


@pytest.fixture(scope="module")
def ingest(local_aws: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """AnalyticsIngest (read API only) on a table of its own, its tokens from a
    file as a Kubernetes Secret would give them: old and new during a rotation.
    Nothing here writes, so one process serves every test of the module."""
    tmp_path = tmp_path_factory.mktemp("read-auth")
    table = f"auth-{uuid.uuid4().hex[:12]}"
    bootstrap(
        ResourceNames(
            queues=QueueNames(queue=f"{table}.fifo", dlq=f"{table}-dlq.fifo"), table=table
        )
    )
    tokens = tmp_path / "read-tokens"
    tokens.write_text(f"# rotation in progress\n{TOKEN_NEW}\n{TOKEN_OLD}\n", "utf-8")
    stack = DevStack(log_dir=tmp_path)
    try:
        stack.spawn(
            "ingest",
            "offpath.ingest",
            {
                "OFFPATH_INGEST_HOST": "127.0.0.1",
                "OFFPATH_INGEST_PORT": "0",
                "OFFPATH_INGEST_METRICS_PORT": "0",
                "OFFPATH_INGEST_POLLERS": "0",
                "OFFPATH_DDB_TABLE": table,
                "OFFPATH_INGEST_READ_TOKENS_FILE": str(tokens),
                "OFFPATH_SHUTDOWN_GRACE_S": "1",
            },
        )
        yield Running(f"127.0.0.1:{stack.port('ingest')}", tmp_path / "ingest.log")
    finally:
        stack.stop()


def _refusals(ingest: Running) -> int:
    return sum(r["event"] == "rpc_unauthenticated" for r in read_log(ingest.log))


def _client(target: str, token: str | None) -> OffpathClient:
    return OffpathClient(
        settings=ClientSettings(ingest_target=target, token=token, timeout_s=5, max_attempts=1)
    )


def test_reads_need_the_token(ingest: Running) -> None:
    """Without a token, or with a wrong one, every read answers UNAUTHENTICATED; with
    either configured token each is served (GetEvent of an unknown id: NOT_FOUND,
    from the store, past the check). Each refusal logs one line, without the token."""
    before = _refusals(ingest)
    for token in (None, "not-the-token-0123456789"):
        with _client(ingest.target, token) as client:
            for read in (
                lambda: client.get_event(UNKNOWN_ID),
                lambda: list(client.list_events()),
                client.summary,
            ):
                with pytest.raises(grpc.RpcError) as caught:
                    read()
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
    for token in (TOKEN_OLD, TOKEN_NEW):
        with _client(ingest.target, token) as client:
            assert client.summary().event_count == 0
            assert list(client.list_events()) == []
            with pytest.raises(grpc.RpcError) as caught:
                client.get_event(UNKNOWN_ID)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Each line is written before its refusal is sent; the log file is a copy
    # made by a pump thread, a moment behind.
    wait_until(lambda: _refusals(ingest) - before == 6, timeout=10)
    assert TOKEN_OLD not in ingest.log.read_text("utf-8")
    assert "not-the-token" not in ingest.log.read_text("utf-8")


def test_health_is_open(ingest: Running) -> None:
    """Health/Check needs no token (probes carry none)."""
    with grpc.insecure_channel(ingest.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="offpath.v1.AnalyticsIngest"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _buf() -> str:
    path = os.environ.get("OFFPATH_BUF")
    if not path or not os.path.exists(path):
        pytest.skip("buf CLI not installed (make test installs it and sets OFFPATH_BUF)")
    return path


def test_buf_curl_with_and_without_the_token(ingest: Running) -> None:
    """buf curl finds GetSummary by reflection without a token (reflection is open),
    is refused UNAUTHENTICATED without one and served with `-H 'Authorization: Bearer'`."""
    base = [_buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    url = f"http://{ingest.target}/offpath.v1.AnalyticsIngest/GetSummary"

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args, url], capture_output=True, text=True, timeout=60, check=False
        )

    refused = curl()
    assert refused.returncode != 0
    assert "unauthenticated" in refused.stderr.lower()
    served = curl("-H", f"Authorization: Bearer {TOKEN_OLD}")
    assert served.returncode == 0, served.stderr
    # Proto3 JSON leaves zero counts out: an empty table's summary is an object.
    assert isinstance(json.loads(served.stdout), dict)


def test_cli_needs_the_token(ingest: Running, tmp_path: Path) -> None:
    """`offpath summary` without a token: one line saying UNAUTHENTICATED and how to
    give the token; with --token-file it answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFPATH_CLIENT_")}
    base = [sys.executable, "-m", "offpath.client", "summary", "--ingest-target", ingest.target]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("offpath: UNAUTHENTICATED: ")
    assert "--token-file" in line
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_NEW + "\n", "utf-8")
    served = subprocess.run(
        [*base, "--token-file", str(token_file), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout)["eventCount"] == "0"
