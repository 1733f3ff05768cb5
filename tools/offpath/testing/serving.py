"""A service served in-process by :func:`offpath.kit.server.serve`, for tests:
on 127.0.0.1 at a free port, as a task of the test's event loop, stopped
through its stop event when the test is done."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offpath.kit.server import Activity, ServerHook, serve
from offpath.kit.settings import ServerSettings


@contextlib.asynccontextmanager
async def serving(
    service_name: str,
    add_servicers: Callable[[grpc.aio.Server], None],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    activity: Activity | None = None,
    on_stopped: ServerHook | None = None,
    timeout_s: float = 10.0,
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the service once it serves; serve() is stopped and
    awaited on the way out (its failure, at start or at the end, raised)."""
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_s=1.0),
            service_names=[service_name],
            add_servicers=add_servicers,
            interceptors=interceptors,
            activity=activity,
            on_stopped=on_stopped,
            stop_event=stop,
            on_serving=bound.set_result,
        )
    )
    waiting: set[asyncio.Future[Any]] = {bound, task}
    done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when="FIRST_COMPLETED")
    if task in done:
        task.result()  # serve() failed: raise why
    assert bound.done(), "serve() did not start in time"
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{bound.result()}")
    try:
        yield channel
    finally:
        await channel.close(None)
        stop.set()
        await asyncio.wait_for(task, timeout_s)


async def assert_serving(channel: grpc.aio.Channel, service_name: str, timeout_s: float) -> None:
    """Health says SERVING for the server ("") and for ``service_name``."""
    health: Any = health_pb2_grpc.HealthStub(channel)  # grpc_health is untyped
    for service in ("", service_name):
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
