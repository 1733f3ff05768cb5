"""Unit tests for offpath.kit.rpcmetrics: a grpc.aio server on 127.0.0.1:<free port>
with the metrics interceptor, whose counts are read back as Prometheus text."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from offpath.kit.rpcmetrics import BUCKETS, RpcMetrics

SERVICE = "offpath.test.Probe"
Context = grpc.aio.ServicerContext[bytes, bytes]


async def ok(request: bytes, context: Context) -> bytes:
    return request


async def abort(request: bytes, context: Context) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


async def fail(request: bytes, context: Context) -> bytes:
    raise RuntimeError("boom")


async def set_and_return(request: bytes, context: Context) -> bytes:
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    return b""


async def count(request: bytes, context: Context) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield str(i).encode()


REACHED: list[str] = []


async def decoded(request: health_pb2.HealthCheckRequest, context: Context) -> bytes:
    REACHED.append(request.service)
    return b"decoded"


async def decoded_stream(
    request: health_pb2.HealthCheckRequest, context: Context
) -> AsyncIterator[bytes]:
    REACHED.append(request.service)
    yield b"decoded"


Call = Callable[[str, bytes], Awaitable[grpc.StatusCode]]


@pytest.fixture
async def served() -> AsyncIterator[tuple[RpcMetrics, Call, grpc.aio.Channel]]:
    """A server counting into a fresh RpcMetrics, and a unary caller returning the status."""
    metrics = RpcMetrics()
    server = grpc.aio.server(interceptors=[metrics.interceptor])
    unary = grpc.unary_unary_rpc_method_handler
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Ok": unary(ok),
                    "Abort": unary(abort),
                    "Fail": unary(fail),
                    "SetAndReturn": unary(set_and_return),
                    "Count": grpc.unary_stream_rpc_method_handler(count),
                    "Decoded": unary(
                        decoded, request_deserializer=health_pb2.HealthCheckRequest.FromString
                    ),
                    "DecodedStream": grpc.unary_stream_rpc_method_handler(
                        decoded_stream,
                        request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    ),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def call(name: str, request: bytes) -> grpc.StatusCode:
        try:
            await channel.unary_unary(f"/{SERVICE}/{name}", None, None)(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    yield metrics, call, channel
    await channel.close(None)
    await server.stop(None)


def _samples(metrics: RpcMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by name and sorted labels."""
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _labels(method: str, grpc_type: str = "unary", **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            {
                "grpc_type": grpc_type,
                "grpc_service": SERVICE,
                "grpc_method": method,
                **extra,
            }.items()
        )
    )


class TestCounts:
    async def test_each_call_is_counted_with_the_status_the_client_saw(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """OK, an abort's code, UNKNOWN for an exception and a code set and returned
        are each counted once under the code the client got."""
        metrics, call, _ = served
        seen = {name: await call(name, b"x") for name in ("Ok", "Abort", "Fail", "SetAndReturn")}
        assert await call("Ok", b"y") == grpc.StatusCode.OK
        samples = _samples(metrics)
        for name, code in seen.items():
            expected = 2.0 if name == "Ok" else 1.0
            key = ("grpc_server_handled_total", _labels(name, grpc_code=code.name))
            assert samples[key] == expected, (name, code)
        assert seen["Abort"] == grpc.StatusCode.NOT_FOUND
        assert seen["Fail"] == grpc.StatusCode.UNKNOWN
        assert seen["SetAndReturn"] == grpc.StatusCode.FAILED_PRECONDITION
        assert samples[("grpc_server_started_total", _labels("Ok"))] == 2.0

    async def test_latency_histogram_is_cumulative_and_counts_every_call(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """Per method and status code: the histogram's +Inf bucket and count equal the
        calls that ended so, buckets never decrease, and the sum is a positive number of
        seconds under the test's length; an aborted call is in its own code's histogram."""
        metrics, call, _ = served
        for _ in range(5):
            await call("Ok", b"x")
        await call("Abort", b"x")
        samples = _samples(metrics)
        labels = _labels("Ok", grpc_code="OK")
        buckets = [
            samples[("grpc_server_handling_seconds_bucket", tuple(sorted((*labels, ("le", le)))))]
            for le in (*(str(b) for b in BUCKETS), "+Inf")
        ]
        assert buckets == sorted(buckets)
        assert buckets[-1] == 5.0
        assert samples[("grpc_server_handling_seconds_count", labels)] == 5.0
        assert 0 < samples[("grpc_server_handling_seconds_sum", labels)] < 5
        aborted = _labels("Abort", grpc_code="NOT_FOUND")
        assert samples[("grpc_server_handling_seconds_count", aborted)] == 1.0
        assert not [
            k
            for k in samples
            if k[0].startswith("grpc_server_handling")
            and ("grpc_method", "Ok") in k[1]
            and ("grpc_code", "NOT_FOUND") in k[1]
        ]

    async def test_a_response_stream_is_counted_once_at_its_end(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """A server-streaming call is one started and one handled RPC, typed server_stream."""
        metrics, _, channel = served
        stream = channel.unary_stream(f"/{SERVICE}/Count", None, None)(b"3", timeout=5)
        assert [m async for m in stream] == [b"0", b"1", b"2"]
        samples = _samples(metrics)
        started = ("grpc_server_started_total", _labels("Count", "server_stream"))
        handled = ("grpc_server_handled_total", _labels("Count", "server_stream", grpc_code="OK"))
        assert samples[started] == 1.0
        assert samples[handled] == 1.0

    async def test_unknown_methods_are_not_counted(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """A method the server does not implement answers UNIMPLEMENTED and adds no series."""
        metrics, call, _ = served
        assert await call("Missing", b"") == grpc.StatusCode.UNIMPLEMENTED
        assert not [k for k in _samples(metrics) if ("grpc_method", "Missing") in k[1]]


# A HealthCheckRequest whose string field (1) holds bytes that are not UTF-8.
BAD_UTF8 = b"\x0a\x02\xff\xfe"


class TestUndecodableRequests:
    async def test_answered_invalid_argument_and_counted_so(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """Request bytes that do not decode answer INVALID_ARGUMENT saying so (not
        grpc.aio's UNKNOWN), never reach the handler, are counted under
        INVALID_ARGUMENT and logged as one warning line without the bytes; a good
        request to the same method is then served."""
        metrics, _, channel = served
        REACHED.clear()
        method = f"/{SERVICE}/Decoded"
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(grpc.aio.AioRpcError) as raised,
        ):
            await channel.unary_unary(method, None, None)(BAD_UTF8, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "does not decode" in str(raised.value.details())
        assert REACHED == []
        assert [(r["event"], r["log_level"], r["method"]) for r in logs] == [
            ("rpc_request_undecodable", "warning", method)
        ]
        assert "\\xff" not in repr(logs)
        good = health_pb2.HealthCheckRequest(service="ok").SerializeToString()
        assert await channel.unary_unary(method, None, None)(good, timeout=5) == b"decoded"
        assert REACHED == ["ok"]
        samples = _samples(metrics)
        assert (
            samples[("grpc_server_handled_total", _labels("Decoded", grpc_code="INVALID_ARGUMENT"))]
            == 1.0
        )
        assert samples[("grpc_server_handled_total", _labels("Decoded", grpc_code="OK"))] == 1.0

    async def test_a_streaming_reply_too(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """A server-streaming method's undecodable request answers INVALID_ARGUMENT too."""
        _, _, channel = served
        REACHED.clear()
        stream = channel.unary_stream(f"/{SERVICE}/DecodedStream", None, None)(BAD_UTF8, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            _ = [m async for m in stream]
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert REACHED == []

    async def test_a_flood_is_one_line_a_second(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """Many undecodable requests to one method in a moment: each answered
        INVALID_ARGUMENT and counted, one warning line for them all."""
        metrics, _, channel = served
        call = channel.unary_unary(f"/{SERVICE}/Decoded", None, None)
        began = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            for _ in range(20):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(BAD_UTF8, timeout=5)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        took = time.monotonic() - began
        assert {r["event"] for r in logs} == {"rpc_request_undecodable"}
        # One line a second at most (20 calls take well under one, unless the
        # machine is very busy); a later one says how many were held back.
        assert 1 <= len(logs) <= 1 + int(took)
        assert all(r.get("suppressed", 0) > 0 for r in logs[1:])
        labels = _labels("Decoded", grpc_code="INVALID_ARGUMENT")
        assert _samples(metrics)[("grpc_server_handled_total", labels)] == 20.0


class TestActivity:
    async def test_started_and_ended_over_every_method(
        self, served: tuple[RpcMetrics, Call, grpc.aio.Channel]
    ) -> None:
        """activity() is (calls started, calls ended) over all methods and codes."""
        metrics, call, _ = served
        assert metrics.activity() == (0, 0)
        for name in ("Ok", "Abort", "Fail", "Ok"):
            await call(name, b"x")
        assert metrics.activity() == (4, 4)
