"""Unit tests for offpath.query.servicer.QueryServicer on an in-process grpc.aio server on
loopback, behind the AnalyticsInterceptor with a list recorder (or with no interceptor,
analytics off): the answer, the fields the handler adds to its call's event, and the
status codes, messages and event ids of failures."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import pytest

from offpath.emitter import EVENT_ID_METADATA, AnalyticsInterceptor, EventRecord
from offpath.emitter.redact import REJECTED_QUERY_CHARS, rejected_prefix
from offpath.kit.ids import is_uuid
from offpath.query.engine import Match, SkillIndex
from offpath.query.generator import Generated, Generator, TemplateGenerator, count_tokens
from offpath.query.servicer import MAX_QUERY_CHARS, MAX_TOP_K, SERVICE_NAME, QueryServicer
from offpath.testing.recorders import ListRecorder
from offpath.v1 import query_pb2, query_pb2_grpc

METHOD = f"/{SERVICE_NAME}/Query"
SECRET = "secret-internal-detail"


class FailingGenerator:
    """A Generator whose every call raises, with text that must not reach the client."""

    @property
    def model(self) -> str:
        return "failing-v1"

    def generate(self, query: str, matches: Sequence[Match]) -> Generated:
        raise RuntimeError(SECRET)


@dataclass
class Service:
    """A served QueryServicer, a client stub, and the recorder its interceptor hands events
    to (None with analytics off)."""

    stub: query_pb2_grpc.QueryServiceAsyncStub
    recorder: ListRecorder | None

    @property
    def records(self) -> list[EventRecord]:
        """The events recorded so far. The interceptor hands an event over before the call's
        status leaves, so a call the client has seen end is already here."""
        assert self.recorder is not None
        return list(self.recorder.records)


Serve = Callable[..., Awaitable[Service]]


@pytest.fixture(scope="module")
def index() -> SkillIndex:
    return SkillIndex.default()


@pytest.fixture
async def serve(index: SkillIndex) -> AsyncIterator[Serve]:
    """Starts QueryServicers on 127.0.0.1:<free port>; closes channels and stops servers
    afterwards."""
    started: list[tuple[grpc.aio.Server, grpc.aio.Channel]] = []

    async def start(*, generator: Generator | None = None, analytics: bool = True) -> Service:
        recorder = ListRecorder() if analytics else None
        interceptors = [AnalyticsInterceptor(recorder)] if recorder is not None else []
        server = grpc.aio.server(interceptors=interceptors)
        servicer = QueryServicer(index, generator or TemplateGenerator())
        query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        assert port > 0
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return Service(query_pb2_grpc.QueryServiceStub(channel), recorder)

    yield start
    for server, channel in started:
        await channel.close(None)
        await server.stop(None)


async def _error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error an awaited call ended with (the test fails if it succeeded)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def _trailing_event_ids(error: grpc.aio.AioRpcError) -> list[str]:
    """Every offpath-event-id in the error's trailing metadata."""
    # grpc-stubs type it as grpc.Call's tuple; grpc.aio returns its Metadata.
    metadata: object = error.trailing_metadata()
    assert isinstance(metadata, grpc.aio.Metadata)
    return [str(value) for value in metadata.get_all(EVENT_ID_METADATA)]


def _trailing_event_id(error: grpc.aio.AioRpcError) -> str:
    """The one offpath-event-id in the error's trailing metadata."""
    (value,) = _trailing_event_ids(error)
    return value


class TestAnswer:
    async def test_answer_carries_skills_model_tokens_and_event_id(self, serve: Serve) -> None:
        """A question about a skill in the CV is answered with that skill matched, the
        template model, the answer's token count, its processing time and a UUID event id."""
        service = await serve()
        response = await service.stub.Query(
            query_pb2.QueryRequest(query="Does she know Kubernetes?", top_k=3)
        )
        names = [skill.name for skill in response.matched_skills]
        assert names[0] == "Kubernetes"
        assert 1 <= len(names) <= 3
        scores = [skill.score for skill in response.matched_skills]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 < score <= 1.0 for score in scores)
        assert "Kubernetes" in response.answer
        assert response.model == TemplateGenerator.MODEL
        assert response.token_count == count_tokens(response.answer) > 0
        assert response.processing_time.ToNanoseconds() > 0
        assert is_uuid(response.event_id)

    async def test_top_k_unset_or_zero_means_three(self, serve: Serve) -> None:
        """Without top_k (or with 0) at most three skills are matched; a larger top_k
        matches more."""
        service = await serve()
        query = "python go rust typescript sql bash java"
        unset = await service.stub.Query(query_pb2.QueryRequest(query=query))
        zero = await service.stub.Query(query_pb2.QueryRequest(query=query, top_k=0))
        seven = await service.stub.Query(query_pb2.QueryRequest(query=query, top_k=7))
        assert len(unset.matched_skills) == len(zero.matched_skills) == 3
        assert len(seven.matched_skills) > 3

    async def test_event_records_what_was_answered(self, serve: Serve) -> None:
        """The call's event has the response's id, the trimmed query, status 0, the matched
        skills, model and tokens the handler added, and the service and method names."""
        service = await serve()
        before = time.time_ns()
        response = await service.stub.Query(
            query_pb2.QueryRequest(query="  Which databases has she run?  ", top_k=5)
        )
        after = time.time_ns()
        (event,) = service.records
        assert is_uuid(response.event_id)
        assert event.event_id == response.event_id
        assert event.query == "Which databases has she run?"
        assert event.status_code == grpc.StatusCode.OK.value[0] == 0
        assert [name for name, _ in event.matched_skills] == [
            s.name for s in response.matched_skills
        ]
        # The reply carries the scores as float32; the event as Python floats.
        assert [score for _, score in event.matched_skills] == pytest.approx(
            [s.score for s in response.matched_skills], rel=1e-6
        )
        assert len(event.matched_skills) > 0
        assert event.model == response.model == TemplateGenerator.MODEL
        assert event.token_count == response.token_count
        assert event.service == SERVICE_NAME == "offpath.v1.QueryService"
        assert event.method == METHOD == "/offpath.v1.QueryService/Query"
        assert before <= event.occurred_at_ns <= after
        # The interceptor's clock runs around the handler's.
        assert event.processing_ns >= response.processing_time.ToNanoseconds()

    async def test_one_event_per_query(self, serve: Serve) -> None:
        """Every query, answered or not, records exactly one event with its own id."""
        service = await serve()
        ok = [
            await service.stub.Query(query_pb2.QueryRequest(query=f"terraform {i}"))
            for i in range(3)
        ]
        await _error(service.stub.Query(query_pb2.QueryRequest(query="")))
        events = service.records
        assert len(events) == 4
        assert len({event.event_id for event in events}) == 4
        assert [event.event_id for event in events[:3]] == [r.event_id for r in ok]

    async def test_answers_without_analytics(self, serve: Serve) -> None:
        """With analytics off (no interceptor) queries are answered the same way, with an
        empty event id (no analytics work at all, not even an id)."""
        service = await serve(analytics=False)
        response = await service.stub.Query(query_pb2.QueryRequest(query="Terraform?"))
        assert response.matched_skills[0].name == "Terraform"
        assert response.answer
        assert response.event_id == ""

    async def test_invalid_request_without_analytics(self, serve: Serve) -> None:
        """With analytics off, a bad request is rejected with the same message and no event
        id."""
        service = await serve(analytics=False)
        error = await _error(service.stub.Query(query_pb2.QueryRequest(query=" ")))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "query must not be empty"
        assert _trailing_event_ids(error) == []


class TestInvalidArgument:
    @pytest.mark.parametrize(
        ("query", "top_k", "message"),
        [
            ("", None, "query must not be empty"),
            ("  \t\n ", None, "query must not be empty"),
            ("x" * (MAX_QUERY_CHARS + 1), None, f"at most {MAX_QUERY_CHARS} are allowed"),
            ("python", MAX_TOP_K + 1, f"top_k is {MAX_TOP_K + 1}; it must be between 1 and"),
            ("python", -1, "top_k is -1; it must be between 1 and"),
        ],
        ids=["empty", "blank", "too-long", "top-k-too-big", "top-k-negative"],
    )
    async def test_rejected_with_message_event_id_and_event(
        self, serve: Serve, query: str, top_k: int | None, message: str
    ) -> None:
        """A bad request gets INVALID_ARGUMENT with a message saying what to change, the
        event id in trailing metadata, and an event recorded with status 3."""
        service = await serve()
        request = query_pb2.QueryRequest(query=query)
        if top_k is not None:
            request.top_k = top_k
        error = await _error(service.stub.Query(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (error.details() or "")
        event_id = _trailing_event_id(error)
        (event,) = service.records
        assert event.event_id == event_id
        assert event.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] == 3
        assert event.query == rejected_prefix(query.strip())
        assert len(event.query) <= REJECTED_QUERY_CHARS + 1
        assert event.matched_skills == ()
        assert (event.model, event.token_count) == ("", 0)

    async def test_rejected_long_query_keeps_only_a_short_prefix(self, serve: Serve) -> None:
        """A rejected query of ~196 KB is recorded as its first words (at most 64 characters
        and a mark), never whole; a word cut at the limit that holds digits is left out."""
        service = await serve()
        head = "my SSN is 078-05-1120, am I hired? Call me here on +44 20 7946"
        query = head + " 0958" + " please" * 28_000
        assert len(query) > 190_000
        error = await _error(service.stub.Query(query_pb2.QueryRequest(query=query)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        (event,) = service.records
        # The cut falls inside "0958": that word goes; redaction of the rest is the sender's.
        assert event.query == head + "…"
        assert len(event.query) <= REJECTED_QUERY_CHARS + 1

    async def test_longest_query_is_accepted(self, serve: Serve) -> None:
        """A query of exactly the maximum length (after trimming) is answered."""
        service = await serve()
        query = ("kubernetes " * MAX_QUERY_CHARS)[:MAX_QUERY_CHARS]
        response = await service.stub.Query(query_pb2.QueryRequest(query=f"  {query}  "))
        (event,) = service.records
        assert event.event_id == response.event_id
        assert event.status_code == 0


class TestInternalError:
    async def test_generator_failure_is_internal_with_event_id(self, serve: Serve) -> None:
        """A generator that raises gives INTERNAL whose message names the event id (also in
        trailing metadata) and no traceback or exception text; the event has status 13."""
        service = await serve(generator=FailingGenerator())
        error = await _error(service.stub.Query(query_pb2.QueryRequest(query="Python?")))
        assert error.code() == grpc.StatusCode.INTERNAL
        event_id = _trailing_event_id(error)
        assert error.details() == f"internal error (event {event_id})"
        details = error.details() or ""
        assert "Traceback" not in details
        assert SECRET not in details
        assert "RuntimeError" not in details
        (event,) = service.records
        assert event.event_id == event_id
        assert event.status_code == grpc.StatusCode.INTERNAL.value[0] == 13
        assert event.query == "Python?"
        assert (event.model, event.token_count) == ("", 0)

    async def test_server_keeps_serving_after_a_failure(self, serve: Serve) -> None:
        """A failed query does not break the service: the next one fails the same way, each
        with its own event."""
        service = await serve(generator=FailingGenerator())
        first = await _error(service.stub.Query(query_pb2.QueryRequest(query="Go?")))
        second = await _error(service.stub.Query(query_pb2.QueryRequest(query="Go?")))
        assert first.code() == second.code() == grpc.StatusCode.INTERNAL
        assert _trailing_event_id(first) != _trailing_event_id(second)
        assert [event.status_code for event in service.records] == [13, 13]

    async def test_generator_failure_without_analytics(self, serve: Serve) -> None:
        """With analytics off a failure is still INTERNAL without the exception's text; the
        message has no event id to name."""
        service = await serve(generator=FailingGenerator(), analytics=False)
        error = await _error(service.stub.Query(query_pb2.QueryRequest(query="Python?")))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == "internal error"
        assert _trailing_event_ids(error) == []
