"""Multi-process serving: one supervisor, N QueryService workers, one port.

One grpc.aio process answers on one core. With ``OFFPATH_QUERY_WORKERS`` = N
> 1, ``python -m offpath.query`` is this supervisor instead, and N workers
serve. Each worker is an ordinary QueryService — its own gRPC server, its own
emitter and sender process, producer id ``<producer>-w<i>`` — bound with
SO_REUSEPORT to the one host:port, so the kernel spreads new connections over
the workers (by a hash of the connection's addresses; a connection stays with
the worker that accepted it).

Fork safety: the supervisor creates no gRPC object, emitter or thread before
it spawns the workers, and each worker is a fresh interpreter
(``python -m offpath.query --worker <i>``) spawned without ``preexec_fn``, so
no Python runs between fork and exec: nothing of the supervisor's state,
threads included (its metrics thread exists when a worker is restarted), is
inherited half-way.

The supervisor:

- holds the port (:func:`~offpath.kit.workers.reserve_port`): port 0 is
  resolved once and given to every worker, and a restarted worker finds it
  still ours;
- serves the configured metrics port for the whole pod: at each scrape it
  reads every worker's /metrics (each on a free loopback port) and labels
  the samples ``worker``, beside its own (workers serving, restarts);
- logs ``server_started`` (host, port, ``workers``, ``worker_pids``) once
  every worker serves, and ``shutdown_complete`` at its end: the workers'
  own lines are ``worker_serving`` and ``worker_shutdown_complete``;
- restarts a worker that dies, after a backoff, and logs it: it never exits
  because one worker crashed. A worker that exits 2 (a start-up error)
  before the service first served ends the supervisor with exit 2 and that
  worker's message, since every worker would fail the same way;
- on SIGTERM or SIGINT forwards the signal to every worker (each does its
  own shutdown: health NOT_SERVING, ``server.stop(grace)``, emitter drain),
  waits for them at most grace + drain + a margin, then SIGKILLs the rest,
  and exits 0 when every worker exited 0.

Workers get SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG``), and
drain as on any SIGTERM; their sender processes, each in its own session,
read their pipe to its end either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

import structlog
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from offpath.emitter.settings import ENV_PRODUCER_ID, ENV_SPOOL_DIR
from offpath.kit.backoff import Backoff
from offpath.kit.metrics import MetricsEndpoint, Sample, families, federate, scrape
from offpath.kit.server import STARTUP_ERROR_EXIT, StartupError
from offpath.kit.signals import on_signals, stop_on_signals
from offpath.kit.workers import Failed, Serving, StatusReader, reserve_port
from offpath.query.servicer import SERVICE_NAME
from offpath.query.settings import ENV_METRICS_PORT, ENV_PORT, ENV_WORKERS, QuerySettings

log = structlog.get_logger("offpath.query.supervisor")

# A FIFO MessageGroupId holds at most 128 characters.
_PRODUCER_ID_MAX: Final = 128
# A worker that keeps dying waits up to 0.5 s before its first restart,
# doubling to 30 s: a crash loop costs little CPU and fills no log.
_RESTART_BACKOFF: Final = Backoff(0.5, 30.0)
# A worker that lived this long had a crash, not a crash loop: start over.
_STABLE_AFTER_S: Final = 30.0
# Beyond grace + drain at shutdown: a worker still warming up (up to 3 s),
# its sender's exit margin (2 s), interpreter exit.
_STOP_MARGIN_S: Final = 5.0
_KILLED_EXIT_WAIT_S: Final = 5.0
# One scrape of the pod reads every worker within this, so a hung worker
# cannot make Prometheus time out on the others (its default is 10 s).
_SCRAPE_BUDGET_S: Final = 5.0
_SCRAPE_TIMEOUT_S: Final = 1.0


# -- the plan: pure ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What worker ``index`` runs with: its producer id and its environment."""

    index: int
    producer_id: str
    env: Mapping[str, str]


def worker_producer_id(base: str, index: int) -> str:
    """``<base>-w<index>``, within the 128 characters of a MessageGroupId."""
    suffix = f"-w{index}"
    return base[: _PRODUCER_ID_MAX - len(suffix)] + suffix


def plan_workers(settings: QuerySettings, env: Mapping[str, str], port: int) -> list[WorkerPlan]:
    """Each worker's environment: the supervisor's, with the one port all
    of them bind, a free metrics port of its own (the supervisor serves the
    configured one), its own producer id and, with a spool, its own spool
    directory (two live senders must not replay the same files)."""
    plans = []
    for index in range(settings.workers):
        producer = worker_producer_id(settings.emitter.producer_id, index)
        worker_env = {
            **env,
            ENV_PORT: str(port),
            ENV_METRICS_PORT: "0",
            # A worker is one serving process; its command line alone runs it.
            ENV_WORKERS: "1",
            ENV_PRODUCER_ID: producer,
        }
        if settings.emitter.spool_dir is not None:
            worker_env[ENV_SPOOL_DIR] = str(Path(settings.emitter.spool_dir) / f"w{index}")
        plans.append(WorkerPlan(index=index, producer_id=producer, env=worker_env))
    return plans


def worker_command(plan: WorkerPlan, status_fd: int) -> list[str]:
    """A fresh interpreter running QueryService as worker ``plan.index``."""
    return [
        sys.executable,
        "-m",
        "offpath.query",
        "--worker",
        str(plan.index),
        "--status-fd",
        str(status_fd),
        "--parent-pid",
        str(os.getpid()),
    ]


class Outcome(Enum):
    """What a worker's exit means."""

    STOPPED = "stopped"  # we asked it to stop
    STARTUP_FAILED = "startup_failed"  # the service cannot start: end with its message
    RESTART = "restart"  # it died: start another after a backoff


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a worker's exit ends the service, and how long a restart waits."""

    backoff: Backoff = _RESTART_BACKOFF
    stable_after_s: float = _STABLE_AFTER_S

    def outcome(self, *, code: int, served: bool, stopping: bool, service_started: bool) -> Outcome:
        if stopping:
            return Outcome.STOPPED
        if code == STARTUP_ERROR_EXIT and not served and not service_started:
            # Every worker has the same settings: one that cannot start
            # means none can. Once the service serves, the others carry on
            # and this one is retried like any crash.
            return Outcome.STARTUP_FAILED
        return Outcome.RESTART

    def next_attempt(self, previous: int, lived_s: float) -> int:
        """The restart attempt (1-based) after one that lived ``lived_s``."""
        return 1 if lived_s >= self.stable_after_s else previous + 1

    def delay(self, attempt: int) -> float:
        return self.backoff.delay(attempt)


# -- metrics: read on the endpoint's thread -----------------------------------------


@dataclass(frozen=True, slots=True)
class WorkersView:
    """What the metrics thread may know of the workers. The event loop
    replaces the whole object; the thread reads it once per scrape, so it
    never sees half an update."""

    configured: int
    metrics_ports: tuple[int | None, ...] = ()  # by index; None: not serving
    restarts: tuple[int, ...] = ()


class WorkerMetrics(Collector):
    """The pod's /metrics: every serving worker's metrics, read at scrape
    time and labelled ``worker``, and the supervisor's own."""

    def __init__(self, configured: int, read: Callable[[int, float], str] = scrape) -> None:
        self._view = WorkersView(configured)
        self._read = read

    def publish(self, view: WorkersView) -> None:
        self._view = view

    def collect(self) -> Iterable[Metric]:
        view = self._view
        texts: list[tuple[str, str]] = []
        up: dict[tuple[str, ...], float] = {}
        deadline = time.monotonic() + _SCRAPE_BUDGET_S
        for index, port in enumerate(view.metrics_ports):
            left = deadline - time.monotonic()
            ok = False
            if port is not None and left > 0:
                try:
                    texts.append((str(index), self._read(port, min(left, _SCRAPE_TIMEOUT_S))))
                    ok = True
                except (OSError, http.client.HTTPException) as exc:
                    log.warning("worker_metrics_unavailable", worker=index, error=str(exc))
            up[(str(index),)] = 1.0 if ok else 0.0
        yield from federate(texts, "worker")
        yield from families(
            [
                Sample(
                    "offpath_query_workers",
                    "Worker processes configured (OFFPATH_QUERY_WORKERS).",
                    "gauge",
                    {(): float(view.configured)},
                ),
                Sample(
                    "offpath_query_workers_serving",
                    "Worker processes serving now.",
                    "gauge",
                    {(): float(sum(port is not None for port in view.metrics_ports))},
                ),
                Sample(
                    "offpath_query_worker_up",
                    "1 when the worker's metrics were read in this scrape.",
                    "gauge",
                    up,
                    ("worker",),
                ),
                Sample(
                    "offpath_query_worker_restarts_total",
                    "Times the supervisor restarted the worker after it died.",
                    "counter",
                    {(str(i),): float(n) for i, n in enumerate(view.restarts)},
                    ("worker",),
                ),
            ]
        )


# -- the supervisor ---------------------------------------------------------------------

Command = Callable[[WorkerPlan, int], list[str]]


@dataclass
class _Worker:
    """One worker slot: the process in it now, and its history."""

    plan: WorkerPlan
    process: subprocess.Popen[bytes] | None = None
    status_fd: int = -1
    status: StatusReader = field(default_factory=StatusReader)
    spawned_at: float = 0.0
    serving: bool = False
    metrics_port: int | None = None
    failure: str | None = None
    attempt: int = 0
    restarts: int = 0
    respawn: asyncio.TimerHandle | None = None
    code: int | None = None  # the exit code of the last process


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"exit {code}"


class Supervisor:
    """Runs ``settings.workers`` QueryService workers (see the module docstring).

    Everything here runs on the event loop's thread but :class:`WorkerMetrics`,
    which the metrics thread reads through the :class:`WorkersView` it is given.
    """

    def __init__(
        self,
        settings: QuerySettings,
        env: Mapping[str, str],
        *,
        command: Command = worker_command,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        stop_margin_s: float = _STOP_MARGIN_S,
    ) -> None:
        self._settings = settings
        self._stop_margin_s = stop_margin_s
        self._env = env
        self._command = command
        self._policy = policy or RestartPolicy()
        self._clock = clock
        self._workers: list[_Worker] = []
        self._metrics = WorkerMetrics(settings.workers)
        self._stopping = False
        self._service_started = False
        self._startup_failure: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when every worker serves, or when one failed to start.
        self._settled = asyncio.Event()
        self._all_exited = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Serve until SIGTERM/SIGINT (or ``stop``); the exit code: 0 when
        every worker stopped cleanly, else 1. A worker's start-up error is
        raised as :class:`StartupError`."""
        self._loop = asyncio.get_running_loop()
        server = self._settings.server
        stop = stop or asyncio.Event()
        reservation = reserve_port(server.host, server.port)
        try:
            port = int(reservation.getsockname()[1])
            # Bound (and logged) before any worker exists, so the service's
            # first metrics_started line is the pod's endpoint; its thread
            # starts once the workers are spawned.
            endpoint = MetricsEndpoint(
                server.host, server.metrics_port, self._metrics, process=False
            )
            try:
                code = await self._supervise(port, stop, endpoint)
            finally:
                endpoint.stop()
        finally:
            reservation.close()
        log.info(
            "shutdown_complete",
            workers=len(self._workers),
            codes=[w.code for w in self._workers],
            restarts=sum(w.restarts for w in self._workers),
        )
        return code

    async def _supervise(self, port: int, stop: asyncio.Event, endpoint: MetricsEndpoint) -> int:
        server = self._settings.server
        with (
            on_signals(self._reap, (signal.SIGCHLD,)),
            stop_on_signals(stop) as received,
        ):
            self._workers = [
                _Worker(plan) for plan in plan_workers(self._settings, self._env, port)
            ]
            for worker in self._workers:
                self._spawn(worker)
            endpoint.start()
            stopping = asyncio.ensure_future(stop.wait())
            settled = asyncio.ensure_future(self._settled.wait())
            try:
                await asyncio.wait({stopping, settled}, return_when=asyncio.FIRST_COMPLETED)
                if self._startup_failure is None and self._settled.is_set() and not stop.is_set():
                    self._service_started = True
                    log.info(
                        "server_started",
                        host=server.host,
                        port=port,
                        services=[SERVICE_NAME],
                        pid=os.getpid(),
                        workers=len(self._workers),
                        worker_pids=[w.process.pid for w in self._workers if w.process],
                    )
                    await stopping
            finally:
                stopping.cancel()
                settled.cancel()
            if self._startup_failure is not None:
                await self._stop_workers(signal.SIGTERM)
                raise StartupError(self._startup_failure)
            sig = signal.Signals[received[0]] if received else signal.SIGTERM
            log.info("shutdown_started", signal=sig.name, grace_s=server.grace_s)
            return await self._stop_workers(sig)

    # -- workers ---------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        loop = self._running_loop()
        worker.respawn = None
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                self._command(worker.plan, write_fd),
                env=dict(worker.plan.env),
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                # stdout and stderr are ours: the workers' log lines go
                # straight to the service's stream, not through us.
                # Its own session: a Ctrl-C for our terminal reaches us only,
                # and we forward it once.
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            log.error("worker_spawn_failed", worker=worker.plan.index, error=str(exc))
            self._schedule_restart(worker, lived_s=0.0)
            return
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker.process = process
        worker.status_fd = read_fd
        worker.status = StatusReader()
        worker.spawned_at = self._clock()
        worker.serving = False
        worker.metrics_port = None
        worker.failure = None
        loop.add_reader(read_fd, self._on_status, worker)
        log.info(
            "worker_started",
            worker=worker.plan.index,
            pid=process.pid,
            producer_id=worker.plan.producer_id,
        )

    def _on_status(self, worker: _Worker) -> None:
        """The status pipe is readable: a message, or the worker's end of it."""
        try:
            data = os.read(worker.status_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_status(worker)
            return
        for status in worker.status.feed(data):
            if isinstance(status, Serving):
                self._on_serving(worker, status)
            elif isinstance(status, Failed):
                worker.failure = status.message

    def _drain_status(self, worker: _Worker) -> None:
        """Read what an exited worker left in its pipe (its start-up error),
        then close it."""
        while worker.status_fd >= 0:
            fd = worker.status_fd
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                data = b""  # nothing more: the worker is gone
            except OSError:
                data = b""
            if not data:
                self._close_status(worker)
                return
            for status in worker.status.feed(data):
                if isinstance(status, Failed):
                    worker.failure = status.message

    def _on_serving(self, worker: _Worker, status: Serving) -> None:
        worker.serving = True
        worker.metrics_port = status.metrics_port
        log.info(
            "worker_ready",
            worker=worker.plan.index,
            pid=worker.process.pid if worker.process else None,
            metrics_port=status.metrics_port,
            restarts=worker.restarts,
        )
        self._publish()
        if all(w.serving for w in self._workers):
            self._settled.set()

    def _close_status(self, worker: _Worker) -> None:
        if worker.status_fd < 0:
            return
        self._running_loop().remove_reader(worker.status_fd)
        os.close(worker.status_fd)
        worker.status_fd = -1

    def _reap(self, _sig: signal.Signals) -> None:
        """SIGCHLD: look at every worker (signals coalesce: one may stand for several)."""
        for worker in self._workers:
            if worker.process is not None and (code := worker.process.poll()) is not None:
                self._exited(worker, code)

    def _exited(self, worker: _Worker, code: int) -> None:
        process = worker.process
        assert process is not None
        self._drain_status(worker)
        worker.process = None
        worker.code = code
        served, worker.serving, worker.metrics_port = worker.serving, False, None
        lived_s = self._clock() - worker.spawned_at
        outcome = self._policy.outcome(
            code=code,
            served=served,
            stopping=self._stopping,
            service_started=self._service_started,
        )
        index = worker.plan.index
        if outcome is Outcome.STOPPED:
            log.info("worker_stopped", worker=index, pid=process.pid, code=code)
        elif outcome is Outcome.STARTUP_FAILED:
            reason = worker.failure or f"exited with code {code} while starting"
            log.error("worker_startup_failed", worker=index, pid=process.pid, error=reason)
            if self._startup_failure is None:
                self._startup_failure = f"worker {index}: {reason}"
            self._settled.set()
        else:
            delay = self._schedule_restart(worker, lived_s)
            log.error(
                "worker_exited",
                worker=index,
                pid=process.pid,
                code=code,
                how=_describe(code),
                lived_s=round(lived_s, 3),
                error=worker.failure,
                restart_in_s=round(delay, 3),
            )
        self._publish()
        if all(w.process is None for w in self._workers):
            self._all_exited.set()

    def _schedule_restart(self, worker: _Worker, lived_s: float) -> float:
        worker.attempt = self._policy.next_attempt(worker.attempt, lived_s)
        delay = self._policy.delay(worker.attempt)
        worker.respawn = self._running_loop().call_later(delay, self._restart, worker)
        return delay

    def _restart(self, worker: _Worker) -> None:
        worker.respawn = None
        if self._stopping:
            return
        worker.restarts += 1
        self._spawn(worker)
        self._publish()

    async def _stop_workers(self, sig: signal.Signals) -> int:
        """Forward ``sig`` to every worker and wait for them (bounded)."""
        self._stopping = True
        for worker in self._workers:
            if worker.respawn is not None:
                worker.respawn.cancel()
                worker.respawn = None
        live = [w for w in self._workers if w.process is not None]
        if not live:
            return 0
        self._all_exited.clear()
        # A worker not yet serving may not handle the signal yet, and end by
        # it: it acknowledged nothing, so that is a clean stop too.
        starting = {w.plan.index for w in live if not w.serving}
        for worker in live:
            assert worker.process is not None
            worker.process.send_signal(sig)
        settings = self._settings
        limit = settings.server.grace_s + settings.emitter.drain_timeout_s + self._stop_margin_s
        try:
            await asyncio.wait_for(self._all_exited.wait(), limit)
        except TimeoutError:
            for worker in self._workers:
                if worker.process is not None:
                    log.error(
                        "worker_killed",
                        worker=worker.plan.index,
                        pid=worker.process.pid,
                        after_s=limit,
                    )
                    worker.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_exited.wait(), _KILLED_EXIT_WAIT_S)
        clean = all(w.code == 0 or (w.code == -sig and w.plan.index in starting) for w in live)
        return 0 if clean else 1

    # -- bookkeeping --------------------------------------------------------------------

    def _publish(self) -> None:
        self._metrics.publish(
            WorkersView(
                configured=len(self._workers),
                metrics_ports=tuple(w.metrics_port for w in self._workers),
                restarts=tuple(w.restarts for w in self._workers),
            )
        )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("supervisor not running")
        return self._loop
