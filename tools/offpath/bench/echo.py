"""A bare grpc.aio server answering QueryService/Query with a fixed reply:
the floor any Python gRPC service stands on (no health, no reflection, no
engine, no analytics).

``OFFPATH_BENCH_ECHO_LAYER`` adds offpath's request-path pieces one at a
time, so the benchmark's ``cost`` phase can say what each costs per request
over the bare server:

- ``bare`` (the default): nothing;
- ``interceptor``: a grpc.aio server interceptor that only passes the call
  on (what having any interceptor costs);
- ``metrics``: the RPC metrics interceptor both services run
  (:mod:`offpath.kit.rpcmetrics`);
- ``record-errors``: :class:`~offpath.emitter.AnalyticsInterceptor` with a
  recorder that drops every event, the event id in trailing metadata on
  error replies only (the interceptor's own bookkeeping);
- ``record``: the same with the event id on every reply (the default
  ``OFFPATH_EMIT_EVENT_ID_TRAILER=always``);
- ``emit``: the interceptor feeding a real emitter configured from the
  environment (:meth:`Analytics.from_env <offpath.emitter.Analytics.from_env>`):
  the whole of offpath's request path, on a server that does nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from offpath.emitter import AnalyticsInterceptor, EventRecord
from offpath.emitter.analytics import Analytics
from offpath.emitter.settings import EventIdTrailer
from offpath.kit.logs import configure_logging
from offpath.kit.rpcmetrics import RpcMetrics
from offpath.kit.settings import env_choice, env_int, environ
from offpath.kit.signals import stop_on_signals
from offpath.v1 import analytics_pb2, query_pb2, query_pb2_grpc

log = structlog.get_logger("offpath.bench.echo")

ENV_LAYER = "OFFPATH_BENCH_ECHO_LAYER"
LAYERS = ("bare", "interceptor", "metrics", "record-errors", "record", "emit")

_REPLY = query_pb2.QueryResponse(
    answer="echo",
    matched_skills=[analytics_pb2.MatchedSkill(name="Echo", score=1.0)],
    model="echo",
    token_count=1,
)

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    # Not subscriptable at run time (grpc-stubs make it generic).
    _Interceptor = grpc.aio.ServerInterceptor


class EchoServicer(query_pb2_grpc.QueryServiceServicer):
    async def Query(
        self, request: query_pb2.QueryRequest, context: object
    ) -> query_pb2.QueryResponse:
        return _REPLY


class PassThrough(_Interceptor):
    """An interceptor that does nothing but pass the call on."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        return await continuation(handler_call_details)


class Discard:
    """A recorder that drops every event (the interceptor's cost alone)."""

    def emit(self, record: EventRecord, /) -> bool:
        return True


async def serve(port: int, layer: str) -> None:
    analytics: Analytics | None = None
    interceptors: list[_Interceptor] = []
    if layer == "interceptor":
        interceptors.append(PassThrough())
    elif layer == "metrics":
        interceptors.append(RpcMetrics().interceptor)
    elif layer in ("record-errors", "record"):
        trailer: EventIdTrailer = "errors" if layer == "record-errors" else "always"
        interceptors.append(AnalyticsInterceptor(Discard(), event_id_trailer=trailer))
    elif layer == "emit":
        analytics = Analytics.from_env()
        await analytics.start()
        interceptors.append(analytics.interceptor)
    server = grpc.aio.server(interceptors=interceptors)
    query_pb2_grpc.add_QueryServiceServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    with stop_on_signals(stop):
        log.info("server_started", port=bound, layer=layer)
        await stop.wait()
    await server.stop(1)
    if analytics is not None:
        await analytics.shutdown()


def main() -> None:
    configure_logging("echo")
    env = environ()
    port = env_int(env, "OFFPATH_QUERY_PORT", 0, minimum=0, maximum=65535)
    asyncio.run(serve(port, env_choice(env, ENV_LAYER, "bare", LAYERS)))


if __name__ == "__main__":
    main()
