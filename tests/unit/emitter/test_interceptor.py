"""Unit tests for offpath.emitter.interceptor.AnalyticsInterceptor and the handler's side,
offpath.emitter.rpc: an in-process grpc.aio server on 127.0.0.1:<free port> whose RPCs are
recorded by a list recorder — one event per RPC, with the status the client saw, the event
id it got in trailing metadata, and the fields the handler set."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from grpc.aio import EOF  # type: ignore[attr-defined]  # grpc-stubs lack it
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from offpath.emitter import (
    EVENT_ID_METADATA,
    AnalyticsInterceptor,
    EventRecord,
    Recorder,
    RpcAnalytics,
    current_rpc,
)
from offpath.emitter.rpc import NO_RPC
from offpath.emitter.settings import EventIdTrailer
from offpath.kit.ids import is_uuid
from offpath.testing.recorders import ListRecorder
from offpath.testing.waits import eventually

SERVICE = "offpath.test.Probe"
Context = grpc.aio.ServicerContext[bytes, bytes]


def _method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class Probe:
    """The handlers under test (bytes in and out), and what they saw; one per server."""

    def __init__(self) -> None:
        self.contexts: list[Context] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.yielded = 0

    async def Answer(self, request: bytes, context: Context) -> bytes:
        self.contexts.append(context)
        rpc = current_rpc()
        rpc.set(
            query=request.decode(),
            matched_skills=[("Go", 0.5), ("Rust", 0.25)],
            model="probe-v1",
            token_count=7,
            attributes={"tenant": "acme"},
        )
        rpc.set(attributes={"region": "eu"})
        return rpc.event_id.encode()

    async def Abort(self, request: bytes, context: Context) -> bytes:
        self.contexts.append(context)
        current_rpc().set(query=request.decode())
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")

    async def Raise(self, request: bytes, context: Context) -> bytes:
        self.contexts.append(context)
        raise RuntimeError("boom")

    async def SetCodeThenRaise(self, request: bytes, context: Context) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        raise LookupError("no such thing")

    async def SetCodeThenReturn(self, request: bytes, context: Context) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("not now")
        return b"discarded"

    async def Hang(self, request: bytes, context: Context) -> bytes:
        self.started.set()
        await self.release.wait()
        return b"released"

    async def OwnTrailers(self, request: bytes, context: Context) -> bytes:
        context.set_trailing_metadata((("x-probe", "kept"),))
        return b"ok"

    async def AbortWithTrailers(self, request: bytes, context: Context) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no", (("x-probe", "kept"),))

    async def Count(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        self.contexts.append(context)
        current_rpc().set(query=f"count {request.decode()}")
        for i in range(int(request)):
            self.yielded += 1
            yield str(i).encode()

    async def CountThenAbort(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        yield b"0"
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "enough")

    async def Sum(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        total = sum([int(request) async for request in requests])
        current_rpc().set(token_count=total)
        return str(total).encode()

    async def Chat(self, requests: AsyncIterator[bytes], context: Context) -> None:
        self.contexts.append(context)
        while (message := await context.read()) is not EOF:
            assert isinstance(message, bytes)
            await context.write(message.upper())

    def Sync(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"sync"


def _handlers(probe: Probe) -> grpc.GenericRpcHandler[bytes, bytes]:
    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Answer": unary(probe.Answer),
            "Abort": unary(probe.Abort),
            "Raise": unary(probe.Raise),
            "SetCodeThenRaise": unary(probe.SetCodeThenRaise),
            "SetCodeThenReturn": unary(probe.SetCodeThenReturn),
            "Hang": unary(probe.Hang),
            "OwnTrailers": unary(probe.OwnTrailers),
            "AbortWithTrailers": unary(probe.AbortWithTrailers),
            "Count": grpc.unary_stream_rpc_method_handler(probe.Count),
            "CountThenAbort": grpc.unary_stream_rpc_method_handler(probe.CountThenAbort),
            "Sum": grpc.stream_unary_rpc_method_handler(probe.Sum),
            "Chat": grpc.stream_stream_rpc_method_handler(probe.Chat),
            "Sync": unary(probe.Sync),
        },
    )


@dataclass
class Served:
    """A running server's probe, its list recorder (when no other was given), a channel."""

    probe: Probe
    recorder: ListRecorder
    channel: grpc.aio.Channel

    def unary(self, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return self.channel.unary_unary(_method(name), None, None)

    async def call(self, name: str, request: bytes = b"") -> tuple[bytes, dict[str, str]]:
        """A successful unary call's reply and trailing metadata."""
        call = self.unary(name)(request, timeout=5)
        reply = await call
        return reply, _trailers(await call.trailing_metadata())

    async def fail(self, name: str, request: bytes = b"") -> grpc.aio.AioRpcError:
        """The error a unary call ended with (the test fails if it succeeded)."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.unary(name)(request, timeout=5)
        return info.value


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts servers on 127.0.0.1:<free port>; afterwards releases hanging handlers,
    closes the channels and stops the servers."""
    started: list[tuple[grpc.aio.Server, grpc.aio.Channel, Probe]] = []

    async def start(
        *,
        recorder: Recorder | None = None,
        intercept: bool = True,
        ignore_services: tuple[str, ...] | None = None,
        event_id_trailer: EventIdTrailer = "always",
    ) -> Served:
        probe = Probe()
        listed = ListRecorder()
        interceptors: list[AnalyticsInterceptor] = []
        if intercept:
            chosen = recorder if recorder is not None else listed
            interceptor = (
                AnalyticsInterceptor(chosen, event_id_trailer=event_id_trailer)
                if ignore_services is None
                else AnalyticsInterceptor(
                    chosen, ignore_services=ignore_services, event_id_trailer=event_id_trailer
                )
            )
            interceptors.append(interceptor)
        server = grpc.aio.server(interceptors=interceptors)
        server.add_generic_rpc_handlers([_handlers(probe)])
        # grpc_health exposes its asyncio servicer as `health.aio`, untyped.
        checker = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        port = server.add_insecure_port("127.0.0.1:0")
        assert port > 0
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel, probe))
        return Served(probe, listed, channel)

    yield start
    for server, channel, probe in started:
        probe.release.set()
        await channel.close(None)
        await server.stop(None)


def _trailers(metadata: object) -> dict[str, str]:
    """Trailing metadata as a dict, failing on a key that appears twice."""
    # grpc-stubs type it as grpc.Call's tuple; grpc.aio returns its Metadata.
    assert isinstance(metadata, grpc.aio.Metadata)
    pairs = [(str(key), str(value)) for key, value in metadata]
    assert len({key for key, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def _error_trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return _trailers(error.trailing_metadata())


class TestReply:
    async def test_answer_is_recorded_once_with_the_handlers_fields(self, serve: Serve) -> None:
        """A successful call is recorded once with the event id the handler and the client
        saw, service, method, status OK, start time, a positive duration, and every field
        the handler set (attributes merged)."""
        served = await serve()
        before = time.time_ns()
        reply, trailers = await served.call("Answer", b"does she know go?")
        after = time.time_ns()
        (record,) = served.recorder.records
        assert is_uuid(record.event_id)
        assert reply.decode() == trailers[EVENT_ID_METADATA] == record.event_id
        assert record.service == SERVICE
        assert record.method == _method("Answer")
        assert record.status_code == grpc.StatusCode.OK.value[0] == 0
        assert before <= record.occurred_at_ns <= after
        assert 0 < record.processing_ns <= after - before
        assert record.query == "does she know go?"
        assert record.matched_skills == (("Go", 0.5), ("Rust", 0.25))
        assert (record.model, record.token_count) == ("probe-v1", 7)
        assert record.attributes == {"tenant": "acme", "region": "eu"}

    async def test_concurrent_calls_each_get_their_own_event(self, serve: Serve) -> None:
        """Calls in flight together each see their own analytics context: every event has
        its own id and the query of the call whose reply named that id."""
        served = await serve()
        queries = [f"question {i}" for i in range(20)]
        results = await asyncio.gather(*(served.call("Answer", q.encode()) for q in queries))
        ids = [reply.decode() for reply, _ in results]
        assert len(set(ids)) == 20
        by_id = {record.event_id: record.query for record in served.recorder.records}
        assert by_id == dict(zip(ids, queries, strict=True))

    @pytest.mark.parametrize("name", ["Answer", "Abort", "Raise"])
    async def test_event_is_handed_over_before_the_status_leaves(
        self, serve: Serve, name: str
    ) -> None:
        """On a reply, an abort and an exception alike, the recorder is given the event while
        grpc has not yet sent the call's status (so an acknowledged call is never lost)."""
        served = await serve()
        sent_when_recorded: list[bool] = []
        served.recorder.on_emit = lambda _: sent_when_recorded.append(
            served.probe.contexts[-1].done()
        )
        if name == "Answer":
            await served.call(name)
        else:
            await served.fail(name)
        assert sent_when_recorded == [False]
        # The check is live: once the call is over, the same context says it is done.
        assert served.probe.contexts[-1].done()


class TestStatus:
    async def test_abort_is_recorded_with_its_code(self, serve: Serve) -> None:
        """An aborted call reaches the client with the handler's code and message and the
        event id; its event has that code and the fields set before the abort."""
        served = await serve()
        error = await served.fail("Abort", b"???")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "bad request"
        (record,) = served.recorder.records
        assert _error_trailers(error)[EVENT_ID_METADATA] == record.event_id
        assert record.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] == 3
        assert record.query == "???"
        assert record.processing_ns > 0

    async def test_unhandled_exception_is_unknown(self, serve: Serve) -> None:
        """An exception out of the handler reaches the client as grpc makes it (UNKNOWN, its
        text in the message) with the event id; the event says UNKNOWN."""
        served = await serve()
        error = await served.fail("Raise")
        assert error.code() == grpc.StatusCode.UNKNOWN
        assert "boom" in (error.details() or "")
        (record,) = served.recorder.records
        assert _error_trailers(error)[EVENT_ID_METADATA] == record.event_id
        assert record.status_code == grpc.StatusCode.UNKNOWN.value[0] == 2

    async def test_code_set_before_raising_is_the_status(self, serve: Serve) -> None:
        """A handler that sets a code and then raises gives the client that code, and the
        event records it."""
        served = await serve()
        error = await served.fail("SetCodeThenRaise")
        assert error.code() == grpc.StatusCode.NOT_FOUND
        (record,) = served.recorder.records
        assert record.status_code == grpc.StatusCode.NOT_FOUND.value[0]

    async def test_code_set_and_returned_is_the_status(self, serve: Serve) -> None:
        """A handler that sets a code and details and returns gives the client that status
        (grpc drops the reply), and the event records the code."""
        served = await serve()
        error = await served.fail("SetCodeThenReturn")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details() == "not now"
        (record,) = served.recorder.records
        assert _error_trailers(error)[EVENT_ID_METADATA] == record.event_id
        assert record.status_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]

    async def test_cancelled_call_is_recorded_cancelled(self, serve: Serve) -> None:
        """A call the client cancels while its handler waits is recorded once, as CANCELLED."""
        served = await serve()
        call = served.unary("Hang")(b"", timeout=5)
        await asyncio.wait_for(served.probe.started.wait(), timeout=5)
        call.cancel()
        await eventually(lambda: len(served.recorder.records) == 1)
        (record,) = served.recorder.records
        assert record.method == _method("Hang")
        assert record.status_code == grpc.StatusCode.CANCELLED.value[0] == 1
        assert record.processing_ns > 0

    async def test_call_past_its_deadline_is_recorded_deadline_exceeded(self, serve: Serve) -> None:
        """A call whose deadline passes while its handler waits gives the client
        DEADLINE_EXCEEDED and is recorded with that code."""
        served = await serve()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await served.unary("Hang")(b"", timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: len(served.recorder.records) == 1)
        (record,) = served.recorder.records
        assert record.status_code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] == 4


class TestTrailingMetadata:
    async def test_handler_trailers_are_kept_beside_the_event_id(self, serve: Serve) -> None:
        """Trailing metadata the handler sets reaches the client together with the event id."""
        served = await serve()
        _, trailers = await served.call("OwnTrailers")
        (record,) = served.recorder.records
        assert trailers == {"x-probe": "kept", EVENT_ID_METADATA: record.event_id}

    async def test_abort_trailers_are_kept_beside_the_event_id(self, serve: Serve) -> None:
        """Trailing metadata given to abort reaches the client together with the event id."""
        served = await serve()
        error = await served.fail("AbortWithTrailers")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        (record,) = served.recorder.records
        assert _error_trailers(error) == {"x-probe": "kept", EVENT_ID_METADATA: record.event_id}


class TestStreams:
    async def test_generated_response_stream_is_recorded_once_at_its_end(
        self, serve: Serve
    ) -> None:
        """A response stream yielded by an async generator reaches the client whole, and is
        recorded once, after its last message and before its status, with the event id the
        client got and the handler's fields."""
        served = await serve()
        at_record: list[tuple[int, bool]] = []
        served.recorder.on_emit = lambda _: at_record.append(
            (served.probe.yielded, served.probe.contexts[-1].done())
        )
        call = served.channel.unary_stream(_method("Count"), None, None)(b"3", timeout=5)
        replies = [reply async for reply in call]
        assert replies == [b"0", b"1", b"2"]
        trailers = _trailers(await call.trailing_metadata())
        (record,) = served.recorder.records
        assert at_record == [(3, False)]
        assert trailers[EVENT_ID_METADATA] == record.event_id
        assert record.status_code == 0
        assert record.query == "count 3"

    async def test_abort_inside_a_stream_is_recorded_with_its_code(self, serve: Serve) -> None:
        """A stream that aborts after a message gives the client that message, then the
        code and the event id; the event records the code."""
        served = await serve()
        call = served.channel.unary_stream(_method("CountThenAbort"), None, None)(b"", timeout=5)
        assert await call.read() == b"0"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        (record,) = served.recorder.records
        assert _error_trailers(info.value)[EVENT_ID_METADATA] == record.event_id
        assert record.status_code == grpc.StatusCode.OUT_OF_RANGE.value[0]

    async def test_request_stream_is_recorded(self, serve: Serve) -> None:
        """A client-streaming call is answered and recorded once, with the handler's field."""
        served = await serve()

        async def numbers() -> AsyncIterator[bytes]:
            for n in (1, 2, 3):
                yield str(n).encode()

        call = served.channel.stream_unary(_method("Sum"), None, None)(numbers(), timeout=5)
        assert await call == b"6"
        (record,) = served.recorder.records
        assert _trailers(await call.trailing_metadata())[EVENT_ID_METADATA] == record.event_id
        assert (record.method, record.status_code, record.token_count) == (_method("Sum"), 0, 6)

    async def test_bidirectional_stream_with_read_and_write_is_recorded(self, serve: Serve) -> None:
        """A bidirectional call using context.read/write through the interceptor's context
        works as without it, and is recorded once when it ends."""
        served = await serve()
        call = served.channel.stream_stream(_method("Chat"), None, None)(None, timeout=5)
        for word in (b"a", b"b"):
            await call.write(word)
            assert await call.read() == word.upper()
        await call.done_writing()
        assert await call.read() is EOF
        assert await call.code() == grpc.StatusCode.OK
        (record,) = served.recorder.records
        assert _trailers(await call.trailing_metadata())[EVENT_ID_METADATA] == record.event_id
        assert (record.method, record.status_code) == (_method("Chat"), 0)


class GatedRecorder:
    """A recorder whose emit returns a coroutine that waits for ``gate`` (a blocking
    recorder's shape), noting the order of its steps and of the client's reply."""

    def __init__(self, *, error: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.steps: list[str] = []
        self.error = error

    def emit(self, record: EventRecord) -> Awaitable[None]:
        return self._send(record)

    async def _send(self, record: EventRecord) -> None:
        self.entered.set()
        await self.gate.wait()
        self.steps.append(f"recorded {record.status_code}")
        if self.error is not None:
            raise self.error


class TestRecorder:
    async def test_async_recorder_is_awaited_before_the_reply(self, serve: Serve) -> None:
        """An emit that returns an awaitable holds the reply until it completes."""
        recorder = GatedRecorder()
        served = await serve(recorder=recorder)
        reply = asyncio.ensure_future(served.call("Answer"))
        await asyncio.wait_for(recorder.entered.wait(), timeout=5)
        # Held: the reply cannot have left while the recorder waits.
        done, _ = await asyncio.wait({reply}, timeout=0.1)
        assert not done
        recorder.gate.set()
        await reply
        recorder.steps.append("reply")
        assert recorder.steps == ["recorded 0", "reply"]

    async def test_async_recorder_is_awaited_before_an_abort_is_sent(self, serve: Serve) -> None:
        """An awaitable emit holds an abort's status too, and the status is unchanged."""
        recorder = GatedRecorder()
        served = await serve(recorder=recorder)
        failed = asyncio.ensure_future(served.fail("Abort"))
        await asyncio.wait_for(recorder.entered.wait(), timeout=5)
        recorder.gate.set()
        error = await failed
        recorder.steps.append("status")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert recorder.steps == ["recorded 3", "status"]

    async def test_recorder_that_raises_does_not_fail_the_rpc(self, serve: Serve) -> None:
        """A recorder that raises is logged with the event id, and the call is answered as
        without analytics, event id included."""
        served = await serve()
        served.recorder.error = RuntimeError("recorder broke")
        with capture_logs() as logs:
            reply, trailers = await served.call("Answer")
            error = await served.fail("Abort")
        assert reply.decode() == trailers[EVENT_ID_METADATA]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "bad request"
        failures = [entry for entry in logs if entry["event"] == "analytics_record_failed"]
        assert [entry["event_id"] for entry in failures] == [
            trailers[EVENT_ID_METADATA],
            _error_trailers(error)[EVENT_ID_METADATA],
        ]

    async def test_async_recorder_that_raises_does_not_fail_the_rpc(self, serve: Serve) -> None:
        """An awaitable emit that fails is logged, and the reply goes out."""
        recorder = GatedRecorder(error=RuntimeError("send failed"))
        recorder.gate.set()
        served = await serve(recorder=recorder)
        with capture_logs() as logs:
            reply, trailers = await served.call("Answer")
        assert reply.decode() == trailers[EVENT_ID_METADATA]
        assert recorder.steps == ["recorded 0"]
        assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
            "analytics_record_failed"
        ]


class TestPassThrough:
    async def test_health_checks_are_not_recorded(self, serve: Serve) -> None:
        """Health checks (infrastructure, not traffic) pass through by default: answered,
        not recorded, no event id."""
        served = await serve()
        call = health_pb2_grpc.HealthStub(served.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert (await call).status == health_pb2.HealthCheckResponse.SERVING
        assert EVENT_ID_METADATA not in _trailers(await call.trailing_metadata())
        assert served.recorder.records == []

    async def test_ignored_services_are_configurable(self, serve: Serve) -> None:
        """With nothing ignored, a health check is recorded like any call."""
        served = await serve(ignore_services=())
        call = health_pb2_grpc.HealthStub(served.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        await call
        (record,) = served.recorder.records
        assert (record.service, record.method) == (
            "grpc.health.v1.Health",
            "/grpc.health.v1.Health/Check",
        )
        assert _trailers(await call.trailing_metadata())[EVENT_ID_METADATA] == record.event_id

    async def test_sync_handler_is_left_untouched(self, serve: Serve) -> None:
        """A sync handler (run in grpc's thread pool) answers as without the interceptor and
        is not recorded."""
        served = await serve()
        reply, trailers = await served.call("Sync")
        assert reply == b"sync"
        assert EVENT_ID_METADATA not in trailers
        assert served.recorder.records == []

    async def test_unknown_method_is_unimplemented_and_not_recorded(self, serve: Serve) -> None:
        """A method the server does not have is answered UNIMPLEMENTED by grpc, unrecorded."""
        served = await serve()
        error = await served.fail("NoSuchMethod")
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert served.recorder.records == []


class TestCurrentRpc:
    def test_outside_an_rpc_it_is_a_noop_with_an_empty_event_id(self) -> None:
        """Outside an intercepted RPC current_rpc() is the shared no-op: empty event id, and
        fields given to it are dropped (nothing accumulates between callers)."""
        rpc = current_rpc()
        assert rpc is NO_RPC
        assert rpc.event_id == ""
        rpc.set(query="q", matched_skills=[("Go", 1.0)], model="m", token_count=3)
        rpc.set(attributes={"k": "v"})
        assert (rpc.query, rpc.matched_skills, rpc.model, rpc.token_count) == ("", (), "", 0)
        assert rpc.attributes == {}

    async def test_handler_without_the_interceptor_sees_the_noop(self, serve: Serve) -> None:
        """With no interceptor the same handler runs unchanged, with an empty event id."""
        served = await serve(intercept=False)
        reply, trailers = await served.call("Answer", b"go?")
        assert reply == b""
        assert EVENT_ID_METADATA not in trailers

    def test_set_changes_only_what_it_is_given(self) -> None:
        """set() leaves fields it is not given as they were and merges attributes."""
        rpc = RpcAnalytics("id-1")
        rpc.set(query="q", attributes={"a": "1"})
        rpc.set(model="m", token_count=2, attributes={"b": "2"})
        rpc.set(matched_skills=iter([("Go", 0.5)]))
        assert (rpc.event_id, rpc.query, rpc.model, rpc.token_count) == ("id-1", "q", "m", 2)
        assert rpc.matched_skills == (("Go", 0.5),)
        assert rpc.attributes == {"a": "1", "b": "2"}


class TestEventIdOnErrorsOnly:
    """``event_id_trailer="errors"``: OK replies carry no trailer, every error still does."""

    async def test_ok_reply_has_no_trailer_but_is_recorded(self, serve: Serve) -> None:
        """An OK reply's trailing metadata has no event id; the event is still recorded
        and the handler still sees its id."""
        served = await serve(event_id_trailer="errors")
        reply, trailers = await served.call("Answer", b"hello")
        (record,) = served.recorder.records
        assert EVENT_ID_METADATA not in trailers
        assert reply.decode() == record.event_id != ""

    @pytest.mark.parametrize(
        ("name", "code"),
        [
            ("Abort", grpc.StatusCode.INVALID_ARGUMENT),
            ("Raise", grpc.StatusCode.UNKNOWN),
            ("SetCodeThenRaise", grpc.StatusCode.NOT_FOUND),
            ("SetCodeThenReturn", grpc.StatusCode.FAILED_PRECONDITION),
        ],
    )
    async def test_every_error_carries_the_event_id(
        self, serve: Serve, name: str, code: grpc.StatusCode
    ) -> None:
        """Abort, an escaping exception, a code set before raising and a code set and
        returned all reach the client with the event id of their recorded event."""
        served = await serve(event_id_trailer="errors")
        error = await served.fail(name, b"???")
        assert error.code() == code
        (record,) = served.recorder.records
        assert _error_trailers(error)[EVENT_ID_METADATA] == record.event_id

    async def test_handler_and_abort_trailers_are_kept(self, serve: Serve) -> None:
        """A handler's own trailers pass unchanged on an OK reply, and an abort's trailers
        get the event id beside them."""
        served = await serve(event_id_trailer="errors")
        _, trailers = await served.call("OwnTrailers")
        assert trailers == {"x-probe": "kept"}
        error = await served.fail("AbortWithTrailers")
        (_, aborted) = served.recorder.records
        assert _error_trailers(error) == {"x-probe": "kept", EVENT_ID_METADATA: aborted.event_id}

    async def test_abort_inside_a_stream_carries_the_event_id(self, serve: Serve) -> None:
        """A response stream that ends in an abort carries the event id; one that ends OK
        does not."""
        served = await serve(event_id_trailer="errors")
        ok = served.channel.unary_stream(_method("Count"), None, None)(b"2", timeout=5)
        assert [m async for m in ok] == [b"0", b"1"]
        assert EVENT_ID_METADATA not in _trailers(await ok.trailing_metadata())
        failing = served.channel.unary_stream(_method("CountThenAbort"), None, None)(b"", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in failing:
                pass
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        _, aborted = served.recorder.records
        assert _error_trailers(info.value)[EVENT_ID_METADATA] == aborted.event_id

    def test_unknown_mode_is_refused(self) -> None:
        """A mode other than always or errors is refused when the interceptor is made."""
        with pytest.raises(ValueError, match="event_id_trailer"):
            AnalyticsInterceptor(ListRecorder(), event_id_trailer="never")  # type: ignore[arg-type]
