"""kill -9 of QueryService right after it acknowledged queries: every event whose reply
was sent still reaches DynamoDB (the sender process reads the pipe to its end), and a
restarted QueryService serves again. kill -9 of its sender process with the spool on:
the restarted sender sends what the dead one held (its write-ahead log) and says so."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc

from offpath.client import OffpathClient
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log
from offpath.testing.waits import wait_until
from offpath.v1 import query_pb2, query_pb2_grpc

QUERIES = 500
RATE = 100.0  # per second, as the measurement


async def _acknowledged(target: str) -> list[str]:
    """Event ids of QUERIES queries sent at RATE, each acknowledged by a reply."""
    ids: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)

        async def one(i: int) -> None:
            reply = await stub.Query(query_pb2.QueryRequest(query=f"kubernetes {i}"), timeout=10)
            ids.append(reply.event_id)

        tasks = []
        start = time.monotonic()
        for i in range(QUERIES):
            delay = start + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return ids


def test_kill_9_after_replies_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """500 queries at 100/s, SIGKILL of QueryService right after the last reply, a
    restart: every acknowledged event id is readable through GetEvent."""
    with DevStack(
        aws_port=0,
        query_port=0,
        ingest_port=0,
        env={"OFFPATH_INGEST_WAIT_S": "1"},
        log_dir=tmp_path,
    ) as stack:
        ids = asyncio.run(_acknowledged(stack.query_target))
        assert len(set(ids)) == QUERIES
        query = stack.children["query"].process
        query.send_signal(signal.SIGKILL)
        assert query.wait(10) == -signal.SIGKILL
        # The serving process is gone; its sender delivers what it was handed.
        stack.spawn(
            "query-restarted",
            "offpath.query",
            {
                **stack.aws_env(),
                "OFFPATH_QUERY_HOST": stack.host,
                "OFFPATH_QUERY_PORT": "0",
                "OFFPATH_QUERY_METRICS_PORT": "0",
            },
        )
        restarted = f"{stack.host}:{stack.port('query-restarted')}"
        with OffpathClient(restarted, stack.ingest_target) as client:
            assert client.query("helm").event_id
            missing = []
            for event_id in ids:
                try:
                    client.wait_for_event(event_id, timeout=30)
                except grpc.RpcError:
                    missing.append(event_id)
        assert missing == [], f"{len(missing)} of {QUERIES} acknowledged events lost"
    senders = [r for r in read_log(tmp_path / "query.log") if r["event"] == "sender_stopped"]
    assert len(senders) == 1
    assert senders[0]["sent"] >= QUERIES


def test_kill_9_of_the_sender_with_a_spool_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """With the spool on, SIGKILL of QueryService's sender process while queries arrive
    at 100/s: the restarted sender reports the dead one's write-ahead log
    (spool_recovered, events counted as recovered) and every acknowledged event is
    readable through GetEvent."""
    spool = tmp_path / "spool"
    with DevStack(
        aws_port=0,
        query_port=0,
        ingest_port=0,
        env={"OFFPATH_INGEST_WAIT_S": "1", "OFFPATH_EMIT_SPOOL_DIR": str(spool)},
        log_dir=tmp_path,
    ) as stack:
        log = tmp_path / "query.log"

        def senders() -> list[int]:
            return [int(r["pid"]) for r in read_log(log) if r["event"] == "sender_started"]

        async def load_and_kill() -> list[str]:
            load = asyncio.create_task(_acknowledged(stack.query_target))
            # Half-way through the load the sender holds a batch in its WAL.
            await asyncio.sleep(QUERIES / RATE / 2)
            first = senders()[0]
            os.kill(first, signal.SIGKILL)
            return await load

        ids = asyncio.run(load_and_kill())
        assert len(set(ids)) == QUERIES
        wait_until(lambda: len(senders()) == 2, 30)
        with OffpathClient(stack.query_target, stack.ingest_target) as client:
            missing = []
            for event_id in ids:
                try:
                    client.wait_for_event(event_id, timeout=30)
                except grpc.RpcError:
                    missing.append(event_id)
        assert missing == [], f"{len(missing)} of {QUERIES} acknowledged events lost"
        records = read_log(log)
    recovered = [r for r in records if r["event"] == "spool_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["orphan_files"] >= 1
    assert recovered[0]["orphan_events"] >= 1
    died = [r for r in records if r["event"] == "emitter_sender_died"]
    assert len(died) == 1
