"""Unit tests for offpath.kit.health.HealthServicer over a real grpc.aio server on
127.0.0.1:<free port>: List answers from the table set() and graceful shutdown keep, the
same one Check reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offpath.kit.health import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT_S = 10.0


class Served:
    """A HealthServicer on a free loopback port and a stub to call it."""

    def __init__(self) -> None:
        self.health = HealthServicer()
        self.server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub: Any = health_pb2_grpc.HealthStub(self.channel)  # grpc_health is untyped

    async def listed(self) -> dict[str, int]:
        response = await self.stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S)
        return {name: reply.status for name, reply in response.statuses.items()}

    async def checked(self, service: str) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self.stub.Check(request, timeout=TIMEOUT_S)
        status: int = response.status
        return status


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A started server, stopped afterwards."""
    running = Served()
    await running.server.start()
    try:
        yield running
    finally:
        await running.channel.close(None)
        await running.server.stop(None)


async def test_list_starts_with_the_server_as_a_whole(served: Served) -> None:
    """Before any set(), List names only "" (the server), SERVING, as the library starts it."""
    assert await served.listed() == {"": SERVING}


async def test_list_follows_set_and_agrees_with_check(served: Served) -> None:
    """Every service set() names is listed with its latest status, the one Check answers."""
    await served.health.set("a.A", SERVING)
    await served.health.set("b.B", SERVING)
    await served.health.set("b.B", NOT_SERVING)
    listed = await served.listed()
    assert listed == {"": SERVING, "a.A": SERVING, "b.B": NOT_SERVING}
    for service, status in listed.items():
        assert await served.checked(service) == status


async def test_list_after_graceful_shutdown_is_all_not_serving(served: Served) -> None:
    """After enter_graceful_shutdown, List shows every service NOT_SERVING and a later
    set() changes nothing, as Check sees it."""
    await served.health.set("a.A", SERVING)
    await served.health.enter_graceful_shutdown()
    await served.health.set("a.A", SERVING)
    assert await served.listed() == {"": NOT_SERVING, "a.A": NOT_SERVING}
    assert await served.checked("a.A") == NOT_SERVING
