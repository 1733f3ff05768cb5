"""Unit tests for offpath.kit.logs.configure_logging: tracebacks rendered without frame
locals, and grpc.aio's records of errors a client caused turned into one structured line
with no traceback (a real grpc.aio server on 127.0.0.1:<free port>)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health as health_module
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offpath.emitter import AnalyticsInterceptor
from offpath.emitter.interceptor import EVENT_ID_METADATA
from offpath.kit.health import HealthServicer
from offpath.kit.logs import Throttle, configure_logging
from offpath.testing.recorders import ListRecorder
from offpath.testing.waits import eventually

SECRET = "s3cr3t-request-body"
FAILING_SERVICE = "offpath.test.Failing"
TIMEOUT_S = 10.0


class LogStream:
    """What configure_logging wrote to stdout, as records."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.records() if record["event"] == event]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogStream]:
    """configure_logging writing into a buffer; structlog's configuration and the root
    logger's handlers and level are put back afterwards."""
    saved = dict(structlog.get_config())
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    configure_logging("test", "info")
    try:
        yield LogStream(stream)
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def _frames(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [frame for exception in record["exception"] for frame in exception["frames"]]


def _fail_with_a_secret_local() -> None:
    request_body = {"Item": {"payload": SECRET}}  # what a failing boto3 call holds
    raise RuntimeError(f"failed with {len(request_body)} item")


class TestTracebacks:
    def test_structlog_exception_has_frames_but_no_locals(self, logs: LogStream) -> None:
        """log.exception() renders the traceback's frames without their local variables."""
        log = structlog.get_logger("test")
        try:
            _fail_with_a_secret_local()
        except RuntimeError:
            log.exception("call_failed")
        (record,) = logs.named("call_failed")
        frames = _frames(record)
        assert [frame["name"] for frame in frames][-1] == "_fail_with_a_secret_local"
        assert all("locals" not in frame for frame in frames)
        assert SECRET not in logs.text

    def test_stdlib_exception_has_frames_but_no_locals(self, logs: LogStream) -> None:
        """A library's logger.exception() (through the stdlib handler) renders no locals
        either."""
        try:
            _fail_with_a_secret_local()
        except RuntimeError:
            logging.getLogger("some.library").exception("library call failed")
        (record,) = logs.named("library call failed")
        frames = _frames(record)
        assert frames
        assert all("locals" not in frame for frame in frames)
        assert SECRET not in logs.text


async def _fail(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    _fail_with_a_secret_local()
    return b""


async def _decode_own_data(
    _request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]
) -> bytes:
    health_pb2.HealthCheckRequest.FromString(b"\xff\xff\xff")  # a bug of ours, not the client's
    return b""


class Server:
    """A grpc.aio server on a free loopback port with a health servicer and a service whose
    methods raise."""

    def __init__(self, health: Any, interceptors: Any = ()) -> None:
        self.server = grpc.aio.server(interceptors=interceptors)
        health_pb2_grpc.add_HealthServicer_to_server(health, self.server)
        handlers = {
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "DecodeOwnData": grpc.unary_unary_rpc_method_handler(_decode_own_data),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(FAILING_SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")

    async def call(self, method: str, request: bytes = b"") -> grpc.StatusCode:
        """The status a raw unary call to ``method`` ends with."""
        try:
            call = self.channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            await call(request, timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


@pytest.fixture
async def server(logs: LogStream) -> AsyncIterator[Server]:
    """offpath's health servicer and a failing service, stopped afterwards."""
    running = Server(HealthServicer())
    await running.server.start()
    try:
        yield running
    finally:
        await running.channel.close(None)
        await running.server.stop(None)


class TestGrpcErrors:
    async def test_undecodable_request_is_one_warning_line(
        self, logs: LogStream, server: Server
    ) -> None:
        """Request bytes that do not decode are logged as one rpc_request_undecodable
        warning naming the method, with no traceback and nothing at ERROR."""
        code = await server.call("/grpc.health.v1.Health/Check", b"\xff\xff\xff")
        assert code == grpc.StatusCode.UNKNOWN  # what grpc.aio answers; not ours to choose
        await eventually(lambda: bool(logs.named("rpc_request_undecodable")), TIMEOUT_S)
        (record,) = logs.records()
        assert record["level"] == "warning"
        assert record["method"] == "/grpc.health.v1.Health/Check"
        assert "HealthCheckRequest" in record["error"]
        assert "exception" not in record

    async def test_health_list_logs_nothing(self, logs: LogStream, server: Server) -> None:
        """Health/List answers OK and logs nothing (the library servicer's UNIMPLEMENTED
        came with an ERROR traceback holding the request and context)."""
        assert await server.call("/grpc.health.v1.Health/List") == grpc.StatusCode.OK
        # Errors are logged before the status is sent; a later logged call marks the
        # point by which List's line would be there.
        await server.call("/grpc.health.v1.Health/Check", b"\xff\xff\xff")
        await eventually(lambda: bool(logs.named("rpc_request_undecodable")), TIMEOUT_S)
        assert [record["event"] for record in logs.records()] == ["rpc_request_undecodable"]

    async def test_unimplemented_method_is_one_warning_line(self, logs: LogStream) -> None:
        """A method a generated base servicer leaves unimplemented (the library's own health
        servicer's List) is one rpc_method_unimplemented warning, no traceback."""
        running = Server(health_module.aio.HealthServicer())  # type: ignore[attr-defined]
        await running.server.start()
        try:
            code = await running.call("/grpc.health.v1.Health/List")
            await eventually(lambda: bool(logs.records()), TIMEOUT_S)
        finally:
            await running.channel.close(None)
            await running.server.stop(None)
        assert code == grpc.StatusCode.UNIMPLEMENTED
        (record,) = logs.records()
        assert record["event"] == "rpc_method_unimplemented"
        assert record["level"] == "warning"
        assert record["method"] == "/grpc.health.v1.Health/List"
        assert "exception" not in record
        assert "context" not in logs.text

    async def test_handler_exception_keeps_its_traceback_without_locals(
        self, logs: LogStream, server: Server
    ) -> None:
        """An exception out of a handler is an rpc_handler_failed error naming the method,
        with the traceback's frames and none of their locals."""
        assert await server.call(f"/{FAILING_SERVICE}/Fail") == grpc.StatusCode.UNKNOWN
        await eventually(lambda: bool(logs.records()), TIMEOUT_S)
        (record,) = logs.records()
        assert record["event"] == "rpc_handler_failed"
        assert record["level"] == "error"
        assert record["method"] == f"/{FAILING_SERVICE}/Fail"
        assert record["error_type"] == "RuntimeError"
        frames = _frames(record)
        assert frames[-1]["name"] == "_fail_with_a_secret_local"
        assert all("locals" not in frame for frame in frames)
        assert SECRET not in logs.text

    async def test_decode_error_of_our_own_keeps_its_traceback(
        self, logs: LogStream, server: Server
    ) -> None:
        """A DecodeError raised by the handler's own code is a bug, not a client's bad
        request: it stays an rpc_handler_failed error with its traceback."""
        code = await server.call(f"/{FAILING_SERVICE}/DecodeOwnData")
        assert code == grpc.StatusCode.UNKNOWN
        await eventually(lambda: bool(logs.records()), TIMEOUT_S)
        (record,) = logs.records()
        assert record["event"] == "rpc_handler_failed"
        assert record["error_type"] == DecodeError.__name__
        assert _frames(record)[-1]["name"] == "_decode_own_data"


class TestEventIdOnErrorLines:
    async def test_a_failed_calls_line_names_its_event_id(self, logs: LogStream) -> None:
        """With analytics on, grpc.aio's error line for an exception out of a handler carries
        the call's event id: the one the client got in its trailer."""
        recorder = ListRecorder()
        running = Server(HealthServicer(), interceptors=[AnalyticsInterceptor(recorder)])
        await running.server.start()
        try:
            call = running.channel.unary_unary(
                f"/{FAILING_SERVICE}/Fail", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(b"", timeout=TIMEOUT_S)
            await eventually(lambda: bool(logs.named("rpc_handler_failed")), TIMEOUT_S)
        finally:
            await running.channel.close(None)
            await running.server.stop(None)
        trailer: object = raised.value.trailing_metadata()
        # grpc-stubs type it as grpc.Call's tuple; grpc.aio returns its Metadata.
        assert isinstance(trailer, grpc.aio.Metadata)
        event_id = str(trailer[EVENT_ID_METADATA])
        (record,) = logs.named("rpc_handler_failed")
        assert record["event_id"] == event_id
        assert [r.event_id for r in recorder.records] == [event_id]

    async def test_without_a_note_no_event_id(self, logs: LogStream, server: Server) -> None:
        """A failure with no event id known (no analytics) has no event_id field."""
        assert await server.call(f"/{FAILING_SERVICE}/Fail") == grpc.StatusCode.UNKNOWN
        await eventually(lambda: bool(logs.named("rpc_handler_failed")), TIMEOUT_S)
        (record,) = logs.named("rpc_handler_failed")
        assert "event_id" not in record


class TestThrottle:
    def test_one_line_per_interval_per_key_with_the_count_held_back(self) -> None:
        """The first line of a key is let through; more within the interval are held
        back and counted; the next one after it carries that count; keys are apart."""
        throttle = Throttle(1.0)
        assert throttle.allow("a", now=10.0) == (True, 0)
        assert throttle.allow("a", now=10.2) == (False, 0)
        assert throttle.allow("a", now=10.9) == (False, 0)
        assert throttle.allow("b", now=10.9) == (True, 0)
        assert throttle.allow("a", now=11.0) == (True, 2)
        assert throttle.allow("a", now=12.5) == (True, 0)

    def test_distinct_keys_do_not_grow_it_without_bound(self) -> None:
        throttle = Throttle(1.0, max_keys=4)
        for n in range(100):
            assert throttle.allow(n, now=1.0) == (True, 0)
        assert len(throttle._last) <= 4
