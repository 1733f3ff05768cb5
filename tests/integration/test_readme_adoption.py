"""The README's "Adopt it in your service" example, run exactly as README.md shows it: a
server process of its own on 127.0.0.1:<free port>, configured for the local AWS endpoint
and a fresh queue, called over gRPC; its event is then read back from SQS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from offpath.dev.bootstrap import ResourceNames, Resources
from offpath.emitter import EVENT_ID_METADATA
from offpath.kit.aws import sqs_client
from offpath.kit.ids import is_uuid
from offpath.kit.sqs import decode_message
from offpath.testing.waits import wait_until
from offpath.v1 import analytics_pb2

README = Path(__file__).resolve().parents[2] / "README.md"
# The block is found by its first line, so the test runs whatever the README
# shows under that name, and fails if the block is gone or doubled.
_EXAMPLE = re.compile(r"^```python\n(# greeter\.py:.*?)^```$", re.MULTILINE | re.DOTALL)
_LISTENING = re.compile(r"^greeter listening on port (\d+)$", re.MULTILINE)
_START_TIMEOUT_S = 30.0
_EXIT_TIMEOUT_S = 30.0


def _example() -> str:
    blocks = _EXAMPLE.findall(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "README.md must show exactly one greeter.py block"
    return str(blocks[0])


def _queued_events(queue_url: str) -> list[analytics_pb2.AnalyticsEvent]:
    """Every event in the queue's messages (nothing else reads this test's queue)."""
    sqs = sqs_client()
    events: list[analytics_pb2.AnalyticsEvent] = []
    while True:
        messages: list[Any] = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return events
        for message in messages:
            events.extend(decode_message(message["Body"], message["MessageAttributes"]).events)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_readme_example_records_its_call_into_sqs(
    names: ResourceNames, resources: Resources, tmp_path: Path
) -> None:
    """The README's greeter, run as written, answers with the event id in trailing metadata,
    and on Ctrl-C drains that call's event into SQS with the handler's query and model, the
    service, method, status OK and a duration."""
    script = tmp_path / "greeter.py"
    script.write_text(_example(), encoding="utf-8")
    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    env = {
        **os.environ,  # the local endpoint's AWS variables (the local_aws fixture)
        "OFFPATH_SQS_QUEUE_NAME": names.queues.queue,
        "OFFPATH_PRODUCER_ID": "readme-greeter",
    }
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, str(script), "127.0.0.1:0"],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, f"greeter exited: {stderr.read_text()}"
            return _LISTENING.search(stdout.read_text()) is not None

        wait_until(listening, timeout=_START_TIMEOUT_S)
        match = _LISTENING.search(stdout.read_text())
        assert match is not None
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            greet = channel.unary_unary("/demo.Greeter/Greet", None, None)
            reply, call = greet.with_call(b"Ada", timeout=5)
        assert reply == b"hello, Ada"
        trailers = dict(call.trailing_metadata() or ())
        event_id = str(trailers[EVENT_ID_METADATA])
        assert is_uuid(event_id)
        # Ctrl-C: the example stops its server, then drains the emitter, then exits.
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=_EXIT_TIMEOUT_S) == 0, stderr.read_text()
        # A clean run: no traceback and no warning (say, from the sender process's start).
        assert "Traceback" not in stderr.read_text()
        assert "Warning" not in stderr.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (event,) = [e for e in _queued_events(resources.queue_url) if e.event_id == event_id]
    assert event.service == "demo.Greeter"
    assert event.method == "/demo.Greeter/Greet"
    assert event.status_code == grpc.StatusCode.OK.value[0]
    assert (event.query, event.model) == ("Ada", "greeter-v1")
    assert event.processing_time.ToNanoseconds() > 0
    assert event.producer_id == "readme-greeter"
