"""Serving a grpc.aio server with health, reflection and a fixed shutdown order.

On SIGTERM or SIGINT: health goes NOT_SERVING (so load balancers and
Kubernetes stop sending); the server goes on taking the calls it has
already received until none has started for a moment (:func:`drain`);
then ``server.stop`` with the rest of the grace period refuses new calls
(GOAWAY) and lets the ones in flight finish; then the
``on_stopped`` hook runs (the emitter drains there, with its own deadline),
then :func:`serve` returns. Grace plus the emitter's drain must fit inside
the pod's ``terminationGracePeriodSeconds``.

Why the drain comes before ``server.stop``: grpc.aio takes calls from gRPC
core one at a time, and core cancels, at shutdown, every call that has
arrived but was not yet taken: a client with a few hundred calls queued saw
most of them answered CANCELLED within milliseconds, whatever the grace.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from offpath.kit import health as kit_health
from offpath.kit.logs import configure_logging
from offpath.kit.looplag import LoopLagMonitor
from offpath.kit.reflection import enable_reflection
from offpath.kit.settings import ServerSettings, SettingsError, environ
from offpath.kit.signals import stop_on_signals
from offpath.kit.tls import bind_port

log = structlog.get_logger("offpath.server")

# Bounded message size: a Query is a short text; anything larger is an error
# the client should see as RESOURCE_EXHAUSTED, not a memory spike.
_MAX_RECEIVE_BYTES = 1 * 1024 * 1024

ServerHook = Callable[[], Awaitable[None]]

# (calls started, calls ended) so far: RpcMetrics.activity.
Activity = Callable[[], tuple[int, int]]

# How long the server must be idle (nothing in flight, nothing started) for
# the calls queued in gRPC core to be taken as all answered: grpc.aio takes
# the next queued call within a loop iteration, well under this.
_DRAIN_QUIET_S = 0.025
# Of the grace period, what the drain leaves for the calls still in flight
# when it ends (at most half the grace).
_DRAIN_RESERVE_S = 1.0

# How a service that cannot start ends (run_service); a supervisor tells a
# worker's start-up error from a crash by it.
STARTUP_ERROR_EXIT = 2


class StartupError(RuntimeError):
    """The service cannot start (a port in use, unreadable data, ...); the
    message says what to fix."""


def server_options(*, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Channel arguments for our servers.

    SO_REUSEPORT is off unless asked for: with it, a second server started on
    the same port by mistake would silently share its traffic instead of
    failing to bind. Workers of one supervisor ask for it, to share the port
    on purpose.
    """
    return [
        ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


async def serve(
    settings: ServerSettings,
    *,
    service_names: Sequence[str],
    add_servicers: Callable[[grpc.aio.Server], None],
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    on_started: ServerHook | None = None,
    on_stopped: ServerHook | None = None,
    stop_event: asyncio.Event | None = None,
    reuse_port: bool = False,
    worker: int | None = None,
    on_serving: Callable[[int], None] | None = None,
    activity: Activity | None = None,
) -> None:
    """Run a server until SIGTERM/SIGINT (or ``stop_event``), then shut down.

    ``service_names`` are the full names of the business services; health
    (with List) and reflection (v1 and v1alpha) are added here. Port 0 binds
    a free port; the bound port is logged as ``server_started`` (tests read
    it from there). The event loop's lag is sampled while serving and logged
    as ``loop_lag`` at the end.
    ``on_serving(port)`` runs once health says SERVING. ``activity`` (the
    RPC metrics' counts) lets shutdown answer the calls already queued
    before it stops the server (see the module docstring); without it the
    server stops at once, with the grace period for calls in flight.

    ``worker``: this server is worker ``worker`` of a supervisor that speaks
    for the service (``offpath.query.supervisor``): its ready and last lines
    are ``worker_serving`` and ``worker_shutdown_complete``, because
    ``server_started`` and ``shutdown_complete`` in the service's log are the
    supervisor's (the workers write to the same stream, and readers take the
    first ``server_started`` as the service's).
    """
    host, port, grace_s = settings.host, settings.port, settings.grace_s
    ready_event, done_event = (
        ("server_started", "shutdown_complete")
        if worker is None
        else ("worker_serving", "worker_shutdown_complete")
    )
    server = grpc.aio.server(
        interceptors=interceptors, options=server_options(reuse_port=reuse_port)
    )
    add_servicers(server)
    health = kit_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection([*service_names, kit_health.SERVICE_NAME], server)
    address = f"{host}:{port}"
    try:
        bound = bind_port(server, address, settings.tls)
    except RuntimeError as exc:
        raise StartupError(f"cannot bind gRPC port {address}: {exc}") from exc
    if bound == 0:
        raise StartupError(f"cannot bind gRPC port {address}")
    await server.start()
    stop = stop_event or asyncio.Event()
    lag = (
        LoopLagMonitor(settings.loop_lag_sample_ms / 1000) if settings.loop_lag_sample_ms else None
    )
    try:
        with stop_on_signals(stop) as received:
            if on_started is not None:
                await on_started()
            for name in ("", *service_names):
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
            if lag is not None:
                lag.start()
            log.info(
                ready_event,
                host=host,
                port=bound,
                services=list(service_names),
                pid=os.getpid(),
            )
            if on_serving is not None:
                on_serving(bound)
            await stop.wait()
            log.info("shutdown_started", signal=received[0] if received else None, grace_s=grace_s)
            if lag is not None:
                log.info("loop_lag", **(await lag.stop()).as_dict())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace_s
            await health.enter_graceful_shutdown()
            if activity is not None:
                # The last part of the grace is kept for the calls then in flight.
                taken = await drain(activity, deadline - min(grace_s / 2, _DRAIN_RESERVE_S))
                log.info("shutdown_drained", taken=taken)
            await server.stop(max(deadline - loop.time(), 0.0))
            log.info("server_stopped")
            if on_stopped is not None:
                await on_stopped()
    finally:
        # Idempotent; covers the error paths above.
        await server.stop(None)
    log.info(done_event)


async def drain(activity: Activity, until: float, quiet_s: float = _DRAIN_QUIET_S) -> int:
    """Go on taking calls until none has started in the last ``quiet_s`` (the
    calls that had arrived are all taken) or until ``until`` (loop time);
    the number of calls started meanwhile. Calls still in flight afterwards
    are ``server.stop``'s grace period's to finish. A client that ignores
    health and keeps sending keeps this going until ``until``: its calls are
    answered, not cancelled."""
    loop = asyncio.get_running_loop()
    first = last = activity()[0]
    while loop.time() < until:
        await asyncio.sleep(min(quiet_s, max(until - loop.time(), 0.0)))
        now = activity()[0]
        if now == last:
            break
        last = now
    return last - first


class _ServiceSettings(Protocol):
    @property
    def log_level(self) -> str: ...


SettingsT = TypeVar("SettingsT", bound=_ServiceSettings)


def run_service(
    program: str,
    service: str,
    load_settings: Callable[[Mapping[str, str]], SettingsT],
    run: Callable[[SettingsT], Coroutine[Any, Any, None]],
    *,
    report: Callable[[str], None] | None = None,
) -> None:
    """A service's ``main``: settings from the environment, logging, then
    ``run`` until shutdown. A bad setting or a :class:`StartupError` ends the
    process with exit code 2 and a one-line message (on stderr and as a
    ``startup_failed`` log event), not a traceback. ``report`` takes the
    message instead of stderr (a worker tells its supervisor, which prints
    the one line for the service)."""

    def fail(message: str) -> NoReturn:
        if report is None:
            print(f"{program}: {message}", file=sys.stderr)
        else:
            report(message)
        sys.exit(STARTUP_ERROR_EXIT)

    try:
        settings = load_settings(environ())
    except SettingsError as exc:
        fail(str(exc))
    configure_logging(service, settings.log_level)
    try:
        asyncio.run(run(settings))
    except (SettingsError, StartupError) as exc:
        log.error("startup_failed", error=str(exc))
        fail(str(exc))
