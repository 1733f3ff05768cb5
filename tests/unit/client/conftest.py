"""A scripted QueryService + AnalyticsIngest on 127.0.0.1:<free port>, and a
clean client environment, for the client and CLI tests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf import duration_pb2

from offpath.client import settings as client_settings
from offpath.v1 import analytics_pb2, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

STORED_ID = "0198c1f0-0000-7000-8000-000000000001"


def _event(event_id: str, status: int, query: str) -> analytics_pb2.AnalyticsEvent:
    event = analytics_pb2.AnalyticsEvent(
        event_id=event_id,
        service="offpath.v1.QueryService",
        method="Query",
        query=query,
        status_code=status,
        model="catalog",
        token_count=7,
        processing_time=duration_pb2.Duration(nanos=1_500_000),
        matched_skills=[analytics_pb2.MatchedSkill(name="Kubernetes", score=0.9)]
        if status == 0
        else [],
    )
    event.occurred_at.FromSeconds(1_700_000_000)
    return event


# Two pages of events, the second behind a page token.
PAGES = (
    [_event(STORED_ID, 0, "k8s"), _event("e-2", 3, "")],
    [_event("e-3", 0, "terraform")],
)


@dataclass
class Script:
    """How the fake answers: which methods fail how, and how often."""

    # Method name -> the status every call fails with.
    fail: dict[str, grpc.StatusCode] = field(default_factory=dict)
    # Method name -> calls answered UNAVAILABLE before it answers normally.
    unavailable_first: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    authorization: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] += 1
            self.authorization.extend(
                str(value) for key, value in context.invocation_metadata() if key == "authorization"
            )
            early = self.unavailable_first[method] > 0
            if early:
                self.unavailable_first[method] -= 1
        if early:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if method in self.fail:
            context.abort(self.fail[method], f"{method} scripted to fail")


class FakeQuery(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Query(
        self, request: query_pb2.QueryRequest, context: grpc.ServicerContext
    ) -> query_pb2.QueryResponse:
        self.script.enter("Query", context)
        if not request.query:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "query must not be empty")
        top_k = request.top_k if request.HasField("top_k") else 3
        return query_pb2.QueryResponse(
            answer=f"yes: {request.query}",
            matched_skills=[
                analytics_pb2.MatchedSkill(name=f"skill-{i}", score=1 - i / 10)
                for i in range(top_k)
            ],
            model="catalog",
            token_count=12,
            processing_time=duration_pb2.Duration(nanos=250_000),
            event_id=STORED_ID,
        )


class FakeIngest(ingest_pb2_grpc.AnalyticsIngestServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def GetEvent(
        self, request: ingest_pb2.GetEventRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.GetEventResponse:
        self.script.enter("GetEvent", context)
        if request.event_id != STORED_ID:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no event {request.event_id}")
        response = ingest_pb2.GetEventResponse(event=PAGES[0][0], batch_id="b-1")
        response.ingested_at.FromSeconds(1_700_000_001)
        return response

    def ListEvents(
        self, request: ingest_pb2.ListEventsRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.ListEventsResponse:
        self.script.enter("ListEvents", context)
        page = 1 if request.page_token == "p2" else 0
        return ingest_pb2.ListEventsResponse(
            events=PAGES[page], next_page_token="p2" if page == 0 else ""
        )

    def GetSummary(
        self, request: ingest_pb2.GetSummaryRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.GetSummaryResponse:
        self.script.enter("GetSummary", context)
        return ingest_pb2.GetSummaryResponse(
            event_count=3,
            error_count=1,
            top_skills=[ingest_pb2.SkillCount(name="Kubernetes", count=2)],
            mean_processing_ms=1.25,
        )


@dataclass
class FakeServer:
    target: str
    script: Script


def serve(script: Script, credentials: grpc.ServerCredentials | None = None) -> Iterator[str]:
    """Both fakes on one 127.0.0.1 port for the duration of the generator."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    query_pb2_grpc.add_QueryServiceServicer_to_server(FakeQuery(script), server)
    ingest_pb2_grpc.add_AnalyticsIngestServicer_to_server(FakeIngest(script), server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    """The scripted services, plaintext."""
    script = Script()
    for target in serve(script):
        yield FakeServer(target, script)


@pytest.fixture
def closed_target() -> str:
    """An address nothing listens on (a server's port, after it stopped)."""
    (target,) = serve(Script())  # runs the generator to its end: started, then stopped
    return target


@pytest.fixture(autouse=True)
def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OFFPATH_* client variable of the caller's shell leaks into a test."""
    for name in dir(client_settings):
        if name.startswith("ENV_"):
            monkeypatch.delenv(getattr(client_settings, name), raising=False)
