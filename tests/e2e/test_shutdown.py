"""SIGTERM on QueryService under way: answered queries still reach DynamoDB."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from offpath.client import OffpathClient
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log
from offpath.v1 import query_pb2, query_pb2_grpc


def test_sigterm_drains_the_emitter(tmp_path: Path) -> None:
    """Events of queries answered just before SIGTERM are sent during shutdown (a
    long linger makes sure they were still buffered) and all become readable."""
    with (
        DevStack(
            aws_port=0,
            query_port=0,
            ingest_port=0,
            env={"OFFPATH_INGEST_WAIT_S": "1", "OFFPATH_EMIT_LINGER_MS": "60000"},
            log_dir=tmp_path,
        ) as stack,
        OffpathClient(stack.query_target, stack.ingest_target) as client,
    ):
        ids = [client.query(f"terraform {i}").event_id for i in range(40)]
        assert stack.stop_child("query") == 0
        for event_id in ids:
            client.wait_for_event(event_id, timeout=10)
        (stopped,) = [
            r for r in read_log(tmp_path / "query.log") if r["event"] == "emitter_stopped"
        ]
        assert stopped["sent"] == 40
        assert stopped["dropped"] == {}


QUEUED_CALLS = 400


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_every_queued_call(tmp_path: Path, workers: int) -> None:
    """SIGTERM with hundreds of calls on their way: every one is answered OK (none
    CANCELLED), within the grace period, and the service then exits cleanly. The calls
    are started before the signal and were still arriving when it came (grpc.aio takes
    them one at a time; gRPC core cancels at shutdown what was not taken yet)."""
    grace_s = 5.0
    with DevStack(
        aws_port=0,
        query_port=0,
        ingest_port=0,
        env={
            "OFFPATH_INGEST_WAIT_S": "1",
            "OFFPATH_SHUTDOWN_GRACE_S": str(grace_s),
            "OFFPATH_QUERY_WORKERS": str(workers),
        },
        log_dir=tmp_path,
    ) as stack:
        process = stack.children["query"].process

        async def burst() -> tuple[Counter[str], float]:
            async with grpc.aio.insecure_channel(stack.query_target) as channel:
                stub = query_pb2_grpc.QueryServiceStub(channel)
                await stub.Query(query_pb2.QueryRequest(query="warm up"), timeout=10)

                async def one(i: int) -> str:
                    try:
                        await stub.Query(
                            query_pb2.QueryRequest(query=f"kubernetes terraform {i}"),
                            timeout=30,
                        )
                    except grpc.aio.AioRpcError as error:
                        return error.code().name
                    return "OK"

                calls = [asyncio.ensure_future(one(i)) for i in range(QUEUED_CALLS)]
                # Let the first calls go out, so the signal lands among them.
                await asyncio.sleep(0.02)
                began = time.monotonic()
                process.send_signal(signal.SIGTERM)
                outcomes = Counter(await asyncio.gather(*calls))
                return outcomes, time.monotonic() - began

        outcomes, took = asyncio.run(burst())
        assert outcomes == Counter({"OK": QUEUED_CALLS})
        assert took < grace_s
        assert stack.stop_child("query") == 0
        drained = [r for r in read_log(tmp_path / "query.log") if r["event"] == "shutdown_drained"]
        assert drained, "no shutdown_drained line in the log"
