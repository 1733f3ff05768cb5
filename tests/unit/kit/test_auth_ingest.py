"""AnalyticsIngest's read-API tokens: OFFPATH_INGEST_READ_TOKENS(_FILE) parsed
and checked, and offpath.ingest.main.run guarding every read method with them
on a real grpc.aio server (over FakeDynamoDb) while health and reflection stay
open, and refusals are counted in the RPC metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from offpath.ingest import main, rollups
from offpath.ingest import settings as ingest_settings
from offpath.ingest.settings import (
    ENV_READ_TOKENS,
    ENV_READ_TOKENS_FILE,
    IngestSettings,
    read_tokens_from_env,
)
from offpath.ingest.store import EventStore, create_table_request, rollup_table_for
from offpath.kit import aws
from offpath.kit.settings import ENV_LOOP_LAG_SAMPLE_MS, ENV_SHUTDOWN_GRACE_S, SettingsError
from offpath.testing.dynamodb import FakeDynamoDb
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc

TOKEN_OLD = "old-token-0123456789abcdef"
TOKEN_NEW = "new-token-fedcba9876543210"
TABLE = "events"
EVENT_ID = "0190a6f2-7a55-7cc1-9d2b-000000000001"
TIMEOUT_S = 10.0


class TestReadTokens:
    def test_none_configured_means_open(self) -> None:
        """Neither variable set: no tokens (the read API is open)."""
        assert read_tokens_from_env({}) == ()
        assert IngestSettings.from_env({}).read_tokens == ()

    def test_comma_separated_list(self) -> None:
        """OFFPATH_INGEST_READ_TOKENS holds one or more tokens, spaces around
        commas and empty items ignored, duplicates once."""
        env = {ENV_READ_TOKENS: f" {TOKEN_OLD} ,, {TOKEN_NEW},{TOKEN_OLD}"}
        assert read_tokens_from_env(env) == (TOKEN_OLD, TOKEN_NEW)

    def test_file_one_a_line_with_comments(self, tmp_path: Path) -> None:
        """The file holds a token a line; blank lines and # comments are skipped;
        its tokens add to the variable's."""
        path = tmp_path / "tokens"
        path.write_text(f"# rotation: new first\n{TOKEN_NEW}\n\n  {TOKEN_OLD}  \n", "utf-8")
        env = {ENV_READ_TOKENS_FILE: str(path), ENV_READ_TOKENS: "x" * 20}
        assert read_tokens_from_env(env) == ("x" * 20, TOKEN_NEW, TOKEN_OLD)

    def test_missing_file_names_the_variable_and_path(self, tmp_path: Path) -> None:
        """A file that cannot be read stops start-up naming the variable and path."""
        path = tmp_path / "absent"
        with pytest.raises(SettingsError) as caught:
            read_tokens_from_env({ENV_READ_TOKENS_FILE: str(path)})
        assert str(caught.value) == (
            f"{ENV_READ_TOKENS_FILE}={path} cannot be read: No such file or directory"
        )

    def test_file_without_a_token_is_refused(self, tmp_path: Path) -> None:
        """An empty Secret must not silently open what it was meant to close."""
        path = tmp_path / "tokens"
        path.write_text("# nothing yet\n\n", "utf-8")
        with pytest.raises(SettingsError, match="holds no token"):
            read_tokens_from_env({ENV_READ_TOKENS_FILE: str(path)})

    @pytest.mark.parametrize(
        ("token", "message"),
        [
            ("short", "at least 16 characters"),
            ("with space inside 0123456789", "printable ASCII only"),
            ("caf\u00e9-0123456789abcdef", "printable ASCII only"),
        ],
    )
    def test_weak_or_unsendable_tokens_are_refused_without_echoing_them(
        self, tmp_path: Path, token: str, message: str
    ) -> None:
        """Short tokens and ones a header cannot carry are refused; the message
        says where (variable, file and line), never the token."""
        path = tmp_path / "tokens"
        path.write_text(f"{TOKEN_OLD}\n{token}\n", "utf-8")
        with pytest.raises(SettingsError, match=message) as caught:
            read_tokens_from_env({ENV_READ_TOKENS_FILE: str(path)})
        assert f"{path} line 2" in str(caught.value)
        assert token not in str(caught.value)
        with pytest.raises(SettingsError, match=f"{ENV_READ_TOKENS} \\(item 1\\)"):
            read_tokens_from_env({ENV_READ_TOKENS: token})

    def test_tokens_stay_out_of_repr(self) -> None:
        """Printing the settings shows no token."""
        settings = IngestSettings.from_env({ENV_READ_TOKENS: TOKEN_OLD})
        assert settings.read_tokens == (TOKEN_OLD,)
        assert TOKEN_OLD not in repr(settings)


@pytest.mark.parametrize(
    ("host", "warned"), [("127.0.0.1", False), ("::1", False), ("0.0.0.0", True)]
)
def test_open_read_api_off_loopback_is_warned(host: str, warned: bool) -> None:
    """No tokens on a non-loopback address: a start-up warning; on loopback, none;
    with tokens, no interceptor is skipped."""
    settings = IngestSettings.from_env({ingest_settings.ENV_HOST: host})
    with capture_logs() as logs:
        assert main.read_api_interceptors(settings) == []
    assert ("read_api_open" in [entry["event"] for entry in logs]) == warned
    guarded = IngestSettings.from_env({ingest_settings.ENV_HOST: host, ENV_READ_TOKENS: TOKEN_OLD})
    with capture_logs() as logs:
        assert len(main.read_api_interceptors(guarded)) == 1
    assert [entry["event"] for entry in logs] == ["read_api_auth"]
    assert TOKEN_OLD not in repr(logs)


@dataclass
class Running:
    port: int
    metrics_port: int
    logs: list[MutableMapping[str, Any]]


def _table_with_an_event() -> FakeDynamoDb:
    ddb = FakeDynamoDb()
    ddb.create_table(**create_table_request(TABLE))
    ddb.create_table(**rollups.create_table_request(rollup_table_for(TABLE)))
    event = analytics_pb2.AnalyticsEvent(event_id=EVENT_ID, service="s", method="/s/M")
    event.occurred_at.FromNanoseconds(1_790_000_000 * 10**9)
    EventStore(ddb, TABLE).write([("b-1", [event])], ingested_ns=1_790_000_001 * 10**9)
    return ddb


async def _logged_port(
    logs: list[MutableMapping[str, Any]], task: asyncio.Task[None], event: str
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while loop.time() < deadline:
        if task.done():
            task.result()
        for entry in logs:
            if entry["event"] == event:
                return int(entry["port"])
        await asyncio.sleep(0.01)
    raise AssertionError(f"run() did not log {event} in time")


@pytest.fixture
async def ingest(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    """AnalyticsIngest's run() (read API only) with two read tokens."""
    ddb = _table_with_an_event()
    monkeypatch.setattr(aws, "dynamodb_client", lambda *_args: ddb)
    settings = IngestSettings.from_env(
        {
            ingest_settings.ENV_HOST: "127.0.0.1",
            ingest_settings.ENV_PORT: "0",
            ingest_settings.ENV_METRICS_PORT: "0",
            ingest_settings.ENV_POLLERS: "0",
            ingest_settings.ENV_TABLE_NAME: TABLE,
            ENV_READ_TOKENS: f"{TOKEN_OLD},{TOKEN_NEW}",
            ENV_SHUTDOWN_GRACE_S: "1",
            ENV_LOOP_LAG_SAMPLE_MS: "0",
        }
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(main.run(settings, stop))
        try:
            port = await _logged_port(logs, task, "server_started")
            metrics_port = await _logged_port(logs, task, "metrics_started")
            yield Running(port, metrics_port, logs)
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT_S)


_LIST = ingest_pb2.ListEventsRequest(page_size=10)
_LIST.start_time.FromSeconds(1_790_000_000 - 60)
_LIST.end_time.FromSeconds(1_790_000_000 + 60)
READS: list[tuple[str, Message]] = [
    ("GetEvent", ingest_pb2.GetEventRequest(event_id=EVENT_ID)),
    ("ListEvents", _LIST),
    ("GetSummary", ingest_pb2.GetSummaryRequest()),
]


async def _read(port: int, method: str, request: Message, token: str | None) -> Message:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ingest_pb2_grpc.AnalyticsIngestStub(channel)
        reply: Message = await getattr(stub, method)(request, metadata=metadata, timeout=TIMEOUT_S)
        return reply


class TestGuardedReadApi:
    # One server for all methods and tokens: each start and stop of run() costs
    # half a second (the metrics endpoint's shutdown poll).
    async def test_each_read_method_refuses_without_a_good_token(self, ingest: Running) -> None:
        """GetEvent, ListEvents and GetSummary each end UNAUTHENTICATED without a
        token, with one not configured, and with a malformed header."""
        for method, request in READS:
            for token in (None, "wrong-token-0123456789", ""):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _read(ingest.port, method, request, token)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, token)

    async def test_each_read_method_serves_either_token(self, ingest: Running) -> None:
        """With either configured token (a rotation in progress), every read is served."""
        for token in (TOKEN_OLD, TOKEN_NEW):
            event = await _read(ingest.port, *READS[0], token)
            assert isinstance(event, ingest_pb2.GetEventResponse)
            assert event.event.event_id == EVENT_ID
            listed = await _read(ingest.port, *READS[1], token)
            assert isinstance(listed, ingest_pb2.ListEventsResponse)
            assert [e.event_id for e in listed.events] == [EVENT_ID]
            summary = await _read(ingest.port, *READS[2], token)
            assert isinstance(summary, ingest_pb2.GetSummaryResponse)

    async def test_health_and_reflection_stay_open(self, ingest: Running) -> None:
        """Probes and discovery need no token: Health/Check answers SERVING and
        reflection lists the services."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                timeout=TIMEOUT_S,
            )
            names = [
                service.name
                async for reply in replies
                for service in reply.list_services_response.service
            ]
        assert "offpath.v1.AnalyticsIngest" in names

    async def test_refusals_are_counted_and_logged_without_the_token(self, ingest: Running) -> None:
        """A refused call shows in grpc_server_handled_total as UNAUTHENTICATED, and
        its warning line carries no token."""
        with pytest.raises(grpc.aio.AioRpcError):
            await _read(ingest.port, "GetSummary", ingest_pb2.GetSummaryRequest(), "x" * 24)
        url = f"http://127.0.0.1:{ingest.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=TIMEOUT_S).read().decode()
        )
        counted = [
            line
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total{")
            and 'grpc_method="GetSummary"' in line
            and 'grpc_code="UNAUTHENTICATED"' in line
        ]
        assert len(counted) == 1, text
        assert counted[0].endswith(" 1.0"), counted
        refusals = [e for e in ingest.logs if e["event"] == "rpc_unauthenticated"]
        assert refusals
        assert "x" * 24 not in repr(refusals)
