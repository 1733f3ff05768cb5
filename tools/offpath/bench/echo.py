"""A bare grpc.aio server answering QueryService/Query with a fixed reply:
the floor any Python gRPC service stands on (no health, no reflection, no
engine, no analytics)."""

from __future__ import annotations

import asyncio

import grpc
import structlog

from offpath.kit.logs import configure_logging
from offpath.kit.settings import env_int, environ
from offpath.kit.signals import stop_on_signals
from offpath.v1 import analytics_pb2, query_pb2, query_pb2_grpc

log = structlog.get_logger("offpath.bench.echo")

_REPLY = query_pb2.QueryResponse(
    answer="echo",
    matched_skills=[analytics_pb2.MatchedSkill(name="Echo", score=1.0)],
    model="echo",
    token_count=1,
)


class EchoServicer(query_pb2_grpc.QueryServiceServicer):
    async def Query(
        self, request: query_pb2.QueryRequest, context: object
    ) -> query_pb2.QueryResponse:
        return _REPLY


async def serve(port: int) -> None:
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServiceServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    with stop_on_signals(stop):
        log.info("server_started", port=bound)
        await stop.wait()
    await server.stop(1)


def main() -> None:
    configure_logging("echo")
    asyncio.run(serve(env_int(environ(), "OFFPATH_QUERY_PORT", 0, minimum=0, maximum=65535)))


if __name__ == "__main__":
    main()
