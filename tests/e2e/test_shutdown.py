"""SIGTERM on QueryService under way: answered queries still reach DynamoDB."""

from __future__ import annotations

from pathlib import Path

from offpath.client import OffpathClient
from offpath.dev.stack import DevStack
from offpath.kit.logs import read_log


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
