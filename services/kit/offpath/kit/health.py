"""The gRPC health service: the library's asyncio servicer plus ``List``.

grpcio-health-checking's asyncio ``HealthServicer`` implements Check and
Watch but not List (added to ``grpc.health.v1`` by gRFC A90), which it
answers UNIMPLEMENTED. :class:`HealthServicer` adds only List, answered from
the same status table that ``set()`` and ``enter_graceful_shutdown()``
maintain, so List, Check and Watch always agree.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health as health_module
from grpc_health.v1 import health_pb2

SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


# grpc_health exposes its asyncio servicer as `health.aio`, untyped.
class HealthServicer(health_module.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """The library's asyncio health servicer, with ``List``."""

    async def List(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:  # health_pb2 is untyped: HealthListRequest -> HealthListResponse
        """Every service with a status, ``""`` (the server as a whole) included.

        The library keeps its statuses in ``_server_status`` (it offers no
        accessor) and, like its Check, reads it on the event loop without a
        lock: nothing here awaits, so the reply is a consistent snapshot,
        more than the proto's "non-atomic" promise.
        """
        statuses: dict[str, int] = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )
