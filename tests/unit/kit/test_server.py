"""Unit tests for offpath.kit.server.serve: a real grpc.aio server on 127.0.0.1:<free port>
and the fixed shutdown order (stop request → health NOT_SERVING → server.stop(grace) →
on_stopped → return), whether the stop comes from stop_event or from a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, MutableMapping
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from offpath.kit.rpcmetrics import RpcMetrics
from offpath.kit.server import STARTUP_ERROR_EXIT, StartupError, run_service, serve
from offpath.kit.settings import ServerSettings, SettingsError
from offpath.kit.workers import reserve_port

SLOW_SERVICE = "offpath.test.Slow"
SLOW_METHOD = f"/{SLOW_SERVICE}/Wait"
TIMEOUT_S = 10.0  # generous: every wait here normally ends in milliseconds
LIFECYCLE_LOGS = frozenset(
    {"server_started", "shutdown_started", "server_stopped", "shutdown_complete"}
)

SERVING = health_pb2.HealthCheckResponse.SERVING


class SlowService:
    """One unary method that holds the call until ``release`` is set, noting how it ended."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.ended = asyncio.Event()

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.order.append("rpc_cancelled")
            raise
        finally:
            self.ended.set()
        self.order.append("rpc_finished")
        return b"done"

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.wait)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SLOW_SERVICE, {"Wait": handler}),)
        )


class Harness:
    """Runs serve() as a task, records its lifecycle in ``order`` (hooks, the log events
    it emits, what a client observed), and learns the bound port from ``server_started``."""

    def __init__(
        self, *, grace_s: float = TIMEOUT_S, stop_event: bool = True, drain: bool = False
    ) -> None:
        self.order: list[str] = []
        # With drain: RPC metrics counted, and their activity given to serve().
        self.metrics = RpcMetrics() if drain else None
        self.settings = ServerSettings(host="127.0.0.1", port=0, metrics_port=0, grace_s=grace_s)
        self.stop: asyncio.Event | None = asyncio.Event() if stop_event else None
        self.slow = SlowService(self.order)
        self.logs: list[MutableMapping[str, Any]] = []
        self.port = 0
        self.started = asyncio.Event()
        self.shutdown_started = asyncio.Event()
        self.stopped_probe: grpc.StatusCode | None = None
        self.task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    # -- what serve() calls ----------------------------------------------------------

    def note_log(
        self, _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor: lifecycle events go into ``order`` as they happen."""
        name = event_dict.get("event")
        if name in LIFECYCLE_LOGS:
            self.order.append(f"log:{name}")
            self.logs.append(dict(event_dict))
        if name == "server_started":
            self.port = int(event_dict["port"])
            self.started.set()
        elif name == "shutdown_started":
            self.shutdown_started.set()
        return event_dict

    async def on_started(self) -> None:
        self.order.append("on_started")

    async def on_stopped(self) -> None:
        """Notes the hook and whether the server still answers a fresh connection."""
        self.order.append("on_stopped")
        self.stopped_probe = await probe(self.port)

    # -- the test's side ----------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            serve(
                self.settings,
                service_names=[SLOW_SERVICE],
                add_servicers=self.slow.add_to,
                interceptors=[self.metrics.interceptor] if self.metrics else [],
                activity=self.metrics.activity if self.metrics else None,
                on_started=self.on_started,
                on_stopped=self.on_stopped,
                stop_event=self.stop,
            )
        )

    async def wait_started(self) -> None:
        assert self.task is not None
        started = asyncio.create_task(self.started.wait())
        done, _ = await asyncio.wait(
            {started, self.task}, timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        started.cancel()
        if self.task in done:
            self.task.result()  # raises what serve() raised
        assert self.started.is_set(), "serve() did not log server_started in time"

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self._channel

    @property
    def health(self) -> Any:  # grpc_health ships no type information
        return health_pb2_grpc.HealthStub(self.channel)

    async def finished(self) -> None:
        """Wait for serve() to return (re-raising what it raised)."""
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), TIMEOUT_S)

    async def close(self) -> None:
        """Stop whatever is still running: release the RPC, request a stop, end serve()."""
        self.slow.release.set()
        if self.task is not None and not self.task.done():
            if self.stop is not None:
                self.stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), TIMEOUT_S)
            except TimeoutError:
                self.task.cancel()
        if self.task is not None and self.task.done() and not self.task.cancelled():
            self.task.exception()  # retrieved: a failure was already reported by the test
        if self._channel is not None:
            await self._channel.close(None)


async def probe(port: int) -> grpc.StatusCode:
    """The status of a health Check made on a fresh connection."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


@contextlib.contextmanager
def _captured(harness: Harness) -> Iterator[None]:
    with structlog.testing.capture_logs(processors=[harness.note_log]):
        yield


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A harness whose server is always stopped and whose channel is always closed."""
    running = Harness()
    with _captured(running):
        try:
            yield running
        finally:
            await running.close()


def _status_name(status: int) -> str:
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    assert isinstance(name, str)
    return name


async def _observe_shutdown(harness: Harness, request_stop: Callable[[], None]) -> None:
    """While serving: Check and Watch see SERVING. Then ``request_stop()``; the open Watch
    sees NOT_SERVING before the server closes; then cancel it and let serve() finish."""
    for service in ("", SLOW_SERVICE):
        response = await harness.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
        )
        assert response.status == SERVING, service
    harness.order.append("check:SERVING")
    watch = harness.health.Watch(health_pb2.HealthCheckRequest(service=SLOW_SERVICE))
    first = await asyncio.wait_for(watch.read(), TIMEOUT_S)
    harness.order.append(f"watch:{_status_name(first.status)}")
    request_stop()
    second = await asyncio.wait_for(watch.read(), TIMEOUT_S)
    harness.order.append(f"watch:{_status_name(second.status)}")
    watch.cancel()  # an open Watch would otherwise hold server.stop for the whole grace
    await harness.finished()


EXPECTED_ORDER = [
    "on_started",
    "log:server_started",
    "check:SERVING",
    "watch:SERVING",
    "log:shutdown_started",
    "watch:NOT_SERVING",
    "log:server_stopped",
    "on_stopped",
    "log:shutdown_complete",
]


class TestShutdownOrder:
    async def test_stop_event(self, harness: Harness) -> None:
        """Setting stop_event: health goes NOT_SERVING while the server still runs, then the
        server stops, then on_stopped runs (the server already closed), then serve returns."""
        harness.start()
        await harness.wait_started()
        assert harness.stop is not None
        await _observe_shutdown(harness, harness.stop.set)
        assert harness.order == EXPECTED_ORDER
        assert harness.stopped_probe == grpc.StatusCode.UNAVAILABLE
        started, shutdown = harness.logs[0], harness.logs[1]
        assert started["port"] == harness.port > 0
        assert started["services"] == [SLOW_SERVICE]
        assert shutdown["signal"] is None

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    async def test_signal(self, sig: signal.Signals) -> None:
        """A SIGTERM or SIGINT sent to the process, with no stop_event, runs the same
        sequence; the shutdown log names the signal and serve's handler is removed after."""
        before = signal.getsignal(sig)
        running = Harness(stop_event=False)
        with _captured(running):
            try:
                running.start()
                await running.wait_started()
                await _observe_shutdown(running, lambda: os.kill(os.getpid(), sig))
            finally:
                await running.close()
        assert running.order == EXPECTED_ORDER
        assert running.logs[1]["signal"] == sig.name
        assert running.stopped_probe == grpc.StatusCode.UNAVAILABLE
        if sig == signal.SIGTERM:  # SIGINT: see test_previous_sigint_handler_is_restored
            assert signal.getsignal(sig) == before

    async def test_previous_sigint_handler_is_restored(self, harness: Harness) -> None:
        """After serve returns, SIGINT is handled by whatever handled it before."""

        def previous(_signum: int, _frame: object) -> None:
            raise AssertionError("not to be called")

        original = signal.signal(signal.SIGINT, previous)
        try:
            harness.start()
            await harness.wait_started()
            assert harness.stop is not None
            harness.stop.set()
            await harness.finished()
            after = signal.getsignal(signal.SIGINT)
        finally:
            signal.signal(signal.SIGINT, original)
        assert after is previous


class TestGrace:
    @pytest.mark.parametrize("drain", [False, True], ids=["no-drain", "drain"])
    async def test_in_flight_rpc_finishes_before_on_stopped(self, drain: bool) -> None:
        """An RPC under way when the stop comes is allowed to finish (new calls are already
        refused, also after a drain: it waits for queued calls, not for running ones), and
        only then do the server stop and on_stopped follow."""
        harness = Harness(drain=drain)
        with _captured(harness):
            try:
                await self._in_flight_rpc_finishes(harness)
            finally:
                await harness.close()

    async def test_drain_answers_every_call_already_sent(self) -> None:
        """Hundreds of calls sent as the stop comes: with the drain, every one is
        answered OK, none CANCELLED (gRPC core cancels at shutdown the calls grpc.aio has
        not taken yet), and serve() still ends well within the grace."""
        harness = Harness(drain=True, grace_s=5.0)
        harness.slow.release.set()  # every Wait answers at once
        with _captured(harness):
            try:
                harness.start()
                await harness.wait_started()
                call = harness.channel.unary_unary(
                    SLOW_METHOD, request_serializer=None, response_deserializer=None
                )
                await call(b"", timeout=TIMEOUT_S)

                async def one() -> str:
                    try:
                        await call(b"", timeout=TIMEOUT_S)
                    except grpc.aio.AioRpcError as error:
                        return error.code().name
                    return "OK"

                calls = [asyncio.ensure_future(one()) for _ in range(300)]
                await asyncio.sleep(0)
                began = time.monotonic()
                assert harness.stop is not None
                harness.stop.set()
                outcomes = await asyncio.gather(*calls)
                await harness.finished()
                took = time.monotonic() - began
            finally:
                await harness.close()
        assert sorted(set(outcomes)) == ["OK"]
        assert took < 5.0

    async def _in_flight_rpc_finishes(self, harness: Harness) -> None:
        harness.start()
        await harness.wait_started()
        slow = harness.channel.unary_unary(
            SLOW_METHOD, request_serializer=None, response_deserializer=None
        )
        call = asyncio.ensure_future(slow(b"", timeout=TIMEOUT_S))
        await asyncio.wait_for(harness.slow.entered.wait(), TIMEOUT_S)
        assert harness.stop is not None
        harness.stop.set()
        await asyncio.wait_for(harness.shutdown_started.wait(), TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        while await probe(harness.port) != grpc.StatusCode.UNAVAILABLE:
            assert time.monotonic() < deadline, "new calls still accepted after the stop"
            await asyncio.sleep(0.01)
        assert not call.done()
        assert "log:server_stopped" not in harness.order
        harness.slow.release.set()
        assert await asyncio.wait_for(call, TIMEOUT_S) == b"done"
        await harness.finished()
        tail = harness.order[harness.order.index("log:shutdown_started") :]
        assert tail == [
            "log:shutdown_started",
            "rpc_finished",
            "log:server_stopped",
            "on_stopped",
            "log:shutdown_complete",
        ]

    async def test_rpc_longer_than_grace_is_cut_off(self) -> None:
        """An RPC still running when the grace period ends does not hold shutdown: the
        server stops after the grace, on_stopped runs, and the RPC is cancelled."""
        running = Harness(grace_s=0.2)
        with _captured(running):
            try:
                running.start()
                await running.wait_started()
                slow = running.channel.unary_unary(
                    SLOW_METHOD, request_serializer=None, response_deserializer=None
                )
                call = asyncio.ensure_future(slow(b"", timeout=TIMEOUT_S))
                await asyncio.wait_for(running.slow.entered.wait(), TIMEOUT_S)
                assert running.stop is not None
                began = time.monotonic()
                running.stop.set()
                await running.finished()
                took = time.monotonic() - began
                with pytest.raises(grpc.aio.AioRpcError):
                    await asyncio.wait_for(call, TIMEOUT_S)
                await asyncio.wait_for(running.slow.ended.wait(), TIMEOUT_S)
            finally:
                await running.close()
        assert 0.2 <= took < TIMEOUT_S
        # grpc.aio's stop(grace) returns once the grace is over and cancels the handler
        # without waiting for it, so its cancellation may land after on_stopped began.
        assert "rpc_cancelled" in running.order
        assert "rpc_finished" not in running.order
        lifecycle = [step for step in running.order if not step.startswith("rpc_")]
        assert lifecycle[lifecycle.index("log:shutdown_started") :] == [
            "log:shutdown_started",
            "log:server_stopped",
            "on_stopped",
            "log:shutdown_complete",
        ]


class TestServices:
    @pytest.mark.parametrize("reflection", ["v1", "v1alpha"])
    async def test_reflection_lists_business_health_and_reflection(
        self, harness: Harness, reflection: str
    ) -> None:
        """Reflection answers under both its names and lists the business services, health
        and itself under both names."""
        harness.start()
        await harness.wait_started()
        # v1 and v1alpha messages are the same on the wire; v1alpha's classes speak both.
        info = harness.channel.stream_stream(
            f"/grpc.reflection.{reflection}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names: set[str] = set()
        async for response in call:
            names |= {service.name for service in response.list_services_response.service}
        assert names == {
            SLOW_SERVICE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }

    async def test_health_list_names_the_server_and_each_service(self, harness: Harness) -> None:
        """Health/List answers with the server as a whole ("") and every business service,
        each SERVING once serve() says it is up."""
        harness.start()
        await harness.wait_started()
        response = await harness.health.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S)
        statuses = {name: reply.status for name, reply in response.statuses.items()}
        assert statuses == {"": SERVING, SLOW_SERVICE: SERVING}


class TestStartup:
    async def test_port_in_use_raises_startup_error(self) -> None:
        """A port another socket holds makes serve raise StartupError naming the address,
        before any hook runs."""
        order: list[str] = []

        async def hook() -> None:
            order.append("hook")

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            settings = ServerSettings(host="127.0.0.1", port=port, metrics_port=0, grace_s=1.0)
            with pytest.raises(StartupError, match=f"127.0.0.1:{port}"):
                await asyncio.wait_for(
                    serve(
                        settings,
                        service_names=[],
                        add_servicers=lambda _server: None,
                        on_started=hook,
                        on_stopped=hook,
                        stop_event=asyncio.Event(),
                    ),
                    TIMEOUT_S,
                )
        assert order == []


class TestWorkers:
    """serve() as one of a supervisor's workers: a shared port, its own log names, and
    word to the supervisor once it serves."""

    @staticmethod
    def _serve(port: int, stop: asyncio.Event, **options: Any) -> asyncio.Task[None]:
        settings = ServerSettings(
            host="127.0.0.1", port=port, metrics_port=0, grace_s=0.0, loop_lag_sample_ms=0
        )
        return asyncio.get_running_loop().create_task(
            serve(
                settings,
                service_names=[],
                add_servicers=lambda _s: None,
                stop_event=stop,
                **options,
            )
        )

    async def test_workers_share_a_reserved_port_and_say_when_they_serve(self) -> None:
        """Two servers with reuse_port bind the one port a reservation holds; each calls
        on_serving with it once health says SERVING, and logs worker_serving and
        worker_shutdown_complete instead of the service's server_started and
        shutdown_complete."""
        reservation = reserve_port("127.0.0.1", 0)
        port = reservation.getsockname()[1]
        stop = asyncio.Event()
        serving: list[tuple[int, int]] = []
        with structlog.testing.capture_logs() as logs:
            tasks = []
            for index in (0, 1):

                def note(bound: int, index: int = index) -> None:
                    serving.append((index, bound))

                tasks.append(
                    self._serve(port, stop, reuse_port=True, worker=index, on_serving=note)
                )
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    while len(serving) < 2:
                        for task in tasks:
                            if task.done():
                                task.result()
                        await asyncio.sleep(0.01)
                assert await probe(port) == grpc.StatusCode.OK
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)
                reservation.close()
        assert sorted(serving) == [(0, port), (1, port)]
        events = [r["event"] for r in logs]
        assert events.count("worker_serving") == 2
        assert events.count("worker_shutdown_complete") == 2
        assert "server_started" not in events
        assert "shutdown_complete" not in events

    async def test_without_reuse_port_a_shared_port_is_refused(self) -> None:
        """By default a server does not share its port: one a reservation holds is a
        StartupError (a second service started on the same port by mistake fails loudly)."""
        reservation = reserve_port("127.0.0.1", 0)
        port = reservation.getsockname()[1]
        try:
            with pytest.raises(StartupError, match=f"127.0.0.1:{port}"):
                await asyncio.wait_for(self._serve(port, asyncio.Event()), TIMEOUT_S)
        finally:
            reservation.close()


def test_run_service_hands_the_startup_error_to_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With report given (a worker), a start-up error goes to it, not to stderr, and the
    exit code is still 2."""
    reported: list[str] = []

    def bad_settings(_env: Mapping[str, str]) -> ServerSettings:
        raise SettingsError("OFFPATH_X='y' is not an integer")

    async def never(_settings: ServerSettings) -> None:
        raise AssertionError("run must not be called")

    with pytest.raises(SystemExit) as exited:
        run_service("prog", "svc", bad_settings, never, report=reported.append)
    assert exited.value.code == STARTUP_ERROR_EXIT == 2
    assert reported == ["OFFPATH_X='y' is not an integer"]
    assert capsys.readouterr().err == ""
