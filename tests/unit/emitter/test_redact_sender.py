"""Unit tests for where query texts are redacted: the events every sender path hands on
(the Sender and the thread emitter, the sender process, the blocking recorder) carry the
text as the settings' mode says, and nothing the sender process writes to its spool holds
the text as asked."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from offpath.emitter import EventRecord
from offpath.emitter.emitter import Emitter
from offpath.emitter.process import ProcessEmitter
from offpath.emitter.redact import QueryTextPolicy
from offpath.emitter.sender import Sender
from offpath.emitter.settings import ENV_QUERY_HASH_KEY, EmitterSettings
from offpath.emitter.spool import read_file
from offpath.query.blocking import BlockingRecorder
from offpath.testing.sinks import sink_arg
from offpath.testing.waits import eventually

from .test_sender import RecordingSink

SINK = "offpath.testing.sinks:file_sink"
START_S = 20.0  # a fresh interpreter importing boto3: generous on a busy machine
KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
ASKED = "I am jane.doe@example.com, SSN 078-05-1120, call +44 20 7946 0958: hired?"
REDACTED = "I am [email], SSN [number], call [phone]: hired?"
SECRETS = ("jane.doe@example.com", "078-05-1120", "7946 0958")
HASHED = QueryTextPolicy("hash", KEY.encode())(ASKED)
EXPECTED = {"redact": REDACTED, "keep": ASKED, "hash": HASHED, "drop": ""}
PLAIN = "does she know kubernetes?"
PLAIN_EXPECTED = {
    "redact": PLAIN,
    "keep": PLAIN,
    "hash": QueryTextPolicy("hash", KEY.encode())(PLAIN),
    "drop": "",
}


def _settings(mode: str, **overrides: Any) -> EmitterSettings:
    base = EmitterSettings(
        queue_name="events.fifo",
        producer_id="producer-1",
        linger_s=0.05,
        retry_deadline_s=1.0,
        drain_timeout_s=5.0,
        query_text=mode,  # type: ignore[arg-type]
        query_hash_key=KEY if mode == "hash" else None,
    )
    return dataclasses.replace(base, **overrides)


def _record(i: int, query: str = ASKED) -> EventRecord:
    return EventRecord(
        event_id=f"event-{i:06d}",
        occurred_at_ns=1_790_000_000_000_000_000 + i,
        service="offpath.v1.QueryService",
        method="/offpath.v1.QueryService/Query",
        query=query,
        status_code=0,
    )


class TestThreadSender:
    @pytest.mark.parametrize("mode", list(EXPECTED))
    def test_sender_applies_the_policy_it_was_given(self, mode: str) -> None:
        """Each mode's Sender hands the sink events whose query is what the mode makes of it,
        and leaves the records as they were."""
        sink = RecordingSink()
        records = [_record(i) for i in range(3)]
        Sender(sink, "p", _settings(mode).query_text_policy()).export(records, deadline=1e9)
        assert [event.query for event in sink.batches[0]] == [EXPECTED[mode]] * 3
        assert {record.query for record in records} == {ASKED}

    def test_sender_redacts_when_given_no_policy(self) -> None:
        """A Sender made without a policy redacts: privacy is the default, not an option."""
        sink = RecordingSink()
        Sender(sink, "p").export([_record(0)], deadline=1e9)
        assert sink.batches[0][0].query == REDACTED

    @pytest.mark.parametrize("mode", list(EXPECTED))
    async def test_thread_emitter_sends_what_the_settings_mode_says(self, mode: str) -> None:
        """The thread emitter's sender thread, built from the settings, applies their mode
        off the event loop: the sink, on another thread, sees the mode's text."""
        sink = RecordingSink()
        emitter = Emitter(sink, _settings(mode))
        emitter.start()
        try:
            assert emitter.emit(_record(0))
            assert emitter.emit(_record(1, query=PLAIN))
            await emitter.force_flush()
        finally:
            await emitter.shutdown(timeout=2.0)
        queries = [event.query for batch in sink.batches for event in batch]
        assert queries == [EXPECTED[mode], PLAIN_EXPECTED[mode]]
        assert threading.get_ident() not in sink.threads


class TestSenderProcess:
    @pytest.mark.parametrize("mode", list(EXPECTED))
    async def test_spool_holds_only_the_modes_text(
        self, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The sender process applies the mode before its spool's write-ahead log and spool
        files: with the backend down, every event parked on disk carries the mode's text,
        and unless the mode is keep no byte of any spool file holds the personal data asked
        about. With hash, the sender process reads the key from the environment it
        inherits, not its command line."""
        if mode == "hash":
            monkeypatch.setenv(ENV_QUERY_HASH_KEY, KEY)
        spool = tmp_path / "spool"
        emitter = ProcessEmitter(
            _settings(mode, spool_dir=str(spool)),
            sink_factory=SINK,
            sink_arg=sink_arg(tmp_path / "sink.jsonl", down=True),
        )
        emitter.start()
        try:
            assert await emitter.prepare(START_S)
            for i in range(20):
                assert emitter.emit(_record(i))
            await eventually(lambda: emitter.stats.spooled == 20, START_S)
        finally:
            stats = await emitter.shutdown(10)
        assert stats.spooled == 20
        files = sorted(spool.glob("*.events"))
        assert files
        queries = [event.query for path in files for event in read_file(path).events]
        assert queries == [EXPECTED[mode]] * 20
        on_disk = b"".join(path.read_bytes() for path in spool.rglob("*") if path.is_file())
        for secret in SECRETS:
            # keep writes the text as asked: the check finds it when it is there.
            assert (secret.encode() in on_disk) == (mode == "keep"), secret


class TestBlockingRecorder:
    async def test_blocking_send_redacts_off_the_event_loop(self) -> None:
        """The blocking recorder (the benchmark's contrast) sends the redacted text too, and
        builds the event on its send thread, not the event loop's."""
        sink = RecordingSink()
        recorder = BlockingRecorder(sink, "p")
        try:
            await recorder.emit(_record(0))
        finally:
            await asyncio.to_thread(recorder.close)
        assert sink.batches[0][0].query == REDACTED
        assert threading.get_ident() not in sink.threads

    async def test_blocking_send_applies_the_policy_given(self) -> None:
        """Given another mode's policy, the blocking recorder applies that one."""
        sink = RecordingSink()
        recorder = BlockingRecorder(sink, "p", query_text=QueryTextPolicy("drop"))
        try:
            await recorder.emit(_record(0))
        finally:
            await asyncio.to_thread(recorder.close)
        assert sink.batches[0][0].query == ""
