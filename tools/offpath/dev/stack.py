"""The whole local system as child processes: the local AWS endpoint, then
AnalyticsIngest, then QueryService.

``make run`` runs :func:`main` (``python -m offpath.dev.stack``), which keeps
them in the foreground with their JSON logs on stdout and stops them in
reverse order on Ctrl-C or SIGTERM (QueryService first, so its emitter
drains while the queue is still there). The tests use :class:`DevStack` with
port 0 everywhere, so they run beside a live ``make run``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from offpath.client import settings as client_settings
from offpath.client.settings import ClientSettings
from offpath.dev import localaws
from offpath.dev.localaws import LOCAL_DEFAULTS, endpoint_url
from offpath.ingest import settings as ingest_settings
from offpath.kit import defaults
from offpath.kit.logs import parse_line
from offpath.kit.settings import SettingsError, env_int, environ
from offpath.kit.signals import STOP_SIGNALS, on_signals, stop_on_signals
from offpath.query import settings as query_settings

_READY_EVENTS = {"server_started", "local_aws_started"}
_PR_SET_PDEATHSIG = 1
# make does not forward SIGTERM, and a closed terminal sends SIGHUP.
_SUPERVISOR_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)


@dataclass(frozen=True)
class _Part:
    """One part of the stack: its module and the variables that place it."""

    module: str
    host_var: str
    port_var: str
    metrics_port_var: str | None = None


PARTS = {
    "local-aws": _Part("offpath.dev.localaws", localaws.ENV_HOST, localaws.ENV_PORT),
    "ingest": _Part(
        "offpath.ingest",
        ingest_settings.ENV_HOST,
        ingest_settings.ENV_PORT,
        ingest_settings.ENV_METRICS_PORT,
    ),
    "query": _Part(
        "offpath.query",
        query_settings.ENV_HOST,
        query_settings.ENV_PORT,
        query_settings.ENV_METRICS_PORT,
    ),
}


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, so a
    killed ``make run`` leaves no stray processes (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process and what its log said so far."""

    name: str
    process: subprocess.Popen[str]
    port: int | None = None
    metrics_port: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    pump_thread: threading.Thread | None = None

    def pump(self, sink: IO[str] | None) -> None:
        """Copy the child's output to ``sink``, watching for its ready line."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.tail.append(line.rstrip("\n"))
            if sink is not None:
                try:
                    sink.write(line)
                    sink.flush()
                except (OSError, ValueError):
                    # The reader went away (a closed pipe, `| head`): keep
                    # draining, or the child would block writing its logs.
                    sink = None
            if not self.ready.is_set() and (record := parse_line(line)) is not None:
                if record["event"] == "metrics_started":
                    self.metrics_port = int(record["port"])
                if record["event"] in _READY_EVENTS:
                    self.port = int(record["port"])
                    self.ready.set()
        self.ready.set()  # exited: wake whoever waits


class _Interrupted(Exception):
    """A signal arrived while the stack was starting."""


class StartError(RuntimeError):
    """A child failed to start; the message carries its last log lines."""


class DevStack:
    """Starts and stops the local system.

    ``cpus`` and ``nice`` place the parts :meth:`start` starts (the
    benchmark runs its helpers at ``nice=19`` on the cores QueryService does
    not use); :meth:`spawn` takes its own.
    """

    def __init__(
        self,
        *,
        host: str = defaults.HOST,
        aws_port: int = localaws.DEFAULT_PORT,
        query_port: int = defaults.QUERY_PORT,
        ingest_port: int = defaults.INGEST_PORT,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        output: IO[str] | None = None,
        start_timeout_s: float = 60.0,
        cpus: set[int] | None = None,
        nice: int | None = None,
    ) -> None:
        self.host = host
        self._ports = {"local-aws": aws_port, "ingest": ingest_port, "query": query_port}
        self._extra_env = dict(env or {})
        self._log_dir = log_dir
        self._output = output
        self._timeout = start_timeout_s
        self.cpus = cpus
        self.nice = nice
        self.children: dict[str, Child] = {}
        self._files: list[IO[str]] = []

    # -- addresses once started ------------------------------------------------

    def port(self, name: str) -> int:
        port = self.children[name].port
        assert port is not None, f"{name} has not started"
        return port

    @property
    def endpoint(self) -> str:
        return endpoint_url(self.host, self.port("local-aws"))

    @property
    def query_target(self) -> str:
        return f"{self.host}:{self.port('query')}"

    @property
    def ingest_target(self) -> str:
        return f"{self.host}:{self.port('ingest')}"

    def aws_env(self) -> dict[str, str]:
        """Variables that point AWS clients at the local endpoint."""
        env = {k: os.environ.get(k, v) for k, v in LOCAL_DEFAULTS.items()}
        env["AWS_ENDPOINT_URL"] = self.endpoint
        return env

    # -- lifecycle ---------------------------------------------------------------

    def start(self, services: tuple[str, ...] = ("local-aws", "ingest", "query")) -> DevStack:
        """Start the named parts in order (a test may want the endpoint only)."""
        try:
            for name in PARTS:
                if name in services:
                    self._spawn(name)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str) -> None:
        part = PARTS[name]
        env = {part.host_var: self.host, part.port_var: str(self._ports[name])}
        if name != "local-aws":
            env.update(self.aws_env())
        if part.metrics_port_var is not None and self._ports[name] == 0:
            # A stack on free ports takes free metrics ports too, so it never
            # collides with a `make run` on the defaults.
            env[part.metrics_port_var] = "0"
        self.spawn(name, part.module, env, cpus=self.cpus, nice=self.nice)

    def spawn(
        self,
        name: str,
        module: str,
        env_extra: Mapping[str, str],
        *,
        args: tuple[str, ...] = (),
        cpus: set[int] | None = None,
        nice: int | None = None,
    ) -> Child:
        """Start ``python -m module`` as child ``name`` and wait for the JSON log
        line that says it is serving (``server_started`` or
        ``local_aws_started``, with its port). ``cpus`` pins it to those cores;
        ``nice`` sets its OS priority (19: the lowest), which the children it
        starts inherit."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL_")}
        env.update(env_extra)
        env.update(self._extra_env)
        env["PYTHONUNBUFFERED"] = "1"

        def prepare() -> None:
            _die_with_parent()
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, 0, nice)

        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops them in order
            preexec_fn=prepare,
        )
        sink = self._output
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            sink = open(self._log_dir / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115
            self._files.append(sink)
        child = Child(name, process)
        self.children[name] = child
        child.pump_thread = threading.Thread(
            target=child.pump, args=(sink,), name=f"pump-{name}", daemon=True
        )
        child.pump_thread.start()
        if not child.ready.wait(self._timeout) or child.port is None:
            if child.ready.is_set():
                # Woken because its output ended, a moment before the process
                # can be reaped: give its exit code that moment.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
            code = process.poll()
            what = (
                f"exited with code {code} while starting"
                if code is not None
                else f"did not start within {self._timeout:.0f}s"
            )
            raise StartError(f"{name} {what}; its last output:\n" + "\n".join(child.tail))
        return child

    def stop_child(self, name: str, timeout_s: float = 30.0) -> int | None:
        """SIGTERM one child and wait; SIGKILL it if it does not exit in time."""
        child = self.children[name]
        process = child.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Let the pump copy the last lines, then release the pipe.
        if child.pump_thread is not None:
            child.pump_thread.join(5)
        if process.stdout is not None and (
            child.pump_thread is None or not child.pump_thread.is_alive()
        ):
            process.stdout.close()
        return process.returncode

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """Stop every child, newest first. Returns the exit codes."""
        codes = {name: self.stop_child(name, timeout_s) for name in reversed(list(self.children))}
        for handle in self._files:
            handle.close()
        self._files.clear()
        return codes

    def exited(self) -> str | None:
        """The name of a child that has exited, if any."""
        for name, child in self.children.items():
            if child.process.poll() is not None:
                return name
        return None

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _banner(stack: DevStack) -> str:
    return banner(
        query_target=stack.query_target,
        ingest_target=stack.ingest_target,
        endpoint=stack.endpoint,
        metrics=[
            f"http://{stack.host}:{stack.children[name].metrics_port}/metrics"
            for name in ("query", "ingest")
        ],
    )


def banner(
    *,
    query_target: str,
    ingest_target: str,
    endpoint: str,
    metrics: list[str],
    env: Mapping[str, str] | None = None,
) -> str:
    """What ``make run`` prints once up: commands that reach *these* ports.

    A target is exported when the client, reading ``env`` (default: this
    process's environment, which the shell that ran ``make run`` shares),
    would go elsewhere: the stack started on other ports (``OFFPATH_QUERY_PORT``,
    ``--query-port``, ...), or a target variable is set to another address.
    """
    q, i = query_target, ingest_target
    try:
        current: ClientSettings | None = ClientSettings.from_env(env)
    except SettingsError:
        current = None
    moved = [
        f"{variable}={target}"
        for variable, target, field in (
            (client_settings.ENV_QUERY_TARGET, q, "query_target"),
            (client_settings.ENV_INGEST_TARGET, i, "ingest_target"),
        )
        if current is None or getattr(current, field) != target
    ]
    export = [f"  export {' '.join(moved)}\n"] if moved else []
    return "".join(
        [
            "\n",
            f"offpath is up: QueryService {q}, AnalyticsIngest {i}, local AWS {endpoint}\n",
            *export,
            '  .venv/bin/offpath query "kubernetes"\n',
            "  .venv/bin/offpath events --since 5m\n",
            "  .tools/node_modules/.bin/buf curl --protocol grpc --http2-prior-knowledge "
            f'-d \'{{"query":"kubernetes"}}\' http://{q}/offpath.v1.QueryService/Query\n',
            f"  metrics: {', '.join(metrics)}\n",
            "Ctrl-C stops everything.\n",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the whole offpath system locally.")
    env = environ()
    try:
        ports = {
            name: env_int(env, PARTS[name].port_var, default, minimum=0, maximum=65535)
            for name, default in (
                ("local-aws", localaws.DEFAULT_PORT),
                ("query", defaults.QUERY_PORT),
                ("ingest", defaults.INGEST_PORT),
            )
        }
    except SettingsError as exc:
        parser.error(str(exc))
    parser.add_argument("--host", default=defaults.HOST)
    parser.add_argument("--aws-port", type=int, default=ports["local-aws"])
    parser.add_argument("--query-port", type=int, default=ports["query"])
    parser.add_argument("--ingest-port", type=int, default=ports["ingest"])
    args = parser.parse_args(argv)

    stack = DevStack(
        host=args.host,
        aws_port=args.aws_port,
        query_port=args.query_port,
        ingest_port=args.ingest_port,
        output=sys.stdout,
    )

    def interrupt_start(sig: signal.Signals) -> None:
        raise _Interrupted(sig.name)

    # While starting, a signal interrupts the wait; start() stops what it began.
    try:
        with on_signals(interrupt_start, _SUPERVISOR_SIGNALS):
            stack.start()
    except StartError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        sys.exit(1)
    except _Interrupted as exc:
        print(f"make run: {exc} while starting; stopped", file=sys.stderr)
        sys.exit(130)
    stop = threading.Event()
    parent = os.getppid()
    died: str | None = None
    with stop_on_signals(stop, _SUPERVISOR_SIGNALS):
        print(_banner(stack), file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            died = stack.exited()
            # make does not forward SIGTERM; notice when our parent went away.
            if died is not None or os.getppid() != parent:
                break
        if died is not None:
            print(f"make run: {died} exited unexpectedly; stopping the rest", file=sys.stderr)
        # Still inside: a second Ctrl-C while stopping must not kill the
        # supervisor before its children.
        codes = stack.stop()
    print(
        f"make run: stopped ({', '.join(f'{k}={v}' for k, v in codes.items())})",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(1 if died is not None else 0)


if __name__ == "__main__":
    main()
