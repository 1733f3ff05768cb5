"""What a supervisor of worker processes needs from the OS, and what its
workers tell it.

- :func:`reserve_port`: claim a TCP port for processes that will share it
  with SO_REUSEPORT, without receiving any connection on it.
- :func:`die_with_parent`: a worker gets a signal when its supervisor dies.
- :class:`WorkerLink` (worker side) and :class:`StatusReader` (supervisor
  side): one JSON line per message on a pipe the supervisor passes to the
  worker: it serves (and where its metrics are), or why it could not start.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
from dataclasses import dataclass
from typing import Final

from offpath.kit.server import StartupError

_PR_SET_PDEATHSIG: Final = 1
# Bounds what a reader buffers from a worker that writes no newline.
_MAX_LINE: Final = 64 * 1024


def reserve_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT that never
    listens; port 0 picks a free port (``getsockname()`` says which).

    While it is open, processes of the same user that bind the port with
    SO_REUSEPORT share it, and nobody else can take it. It receives no
    connection: Linux spreads connections over the *listening* sockets of a
    port only. So a supervisor can resolve port 0 once, give the one port to
    every worker, and keep it for a worker that restarts later. A port held
    by a socket without SO_REUSEPORT (another program) fails here, as a
    :class:`StartupError`.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(f"cannot bind gRPC port {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind gRPC port {host}:{port}: {exc}") from exc
    return sock


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Have Linux send ``sig`` to this process when its parent dies; when
    the parent (``parent_pid``) is already gone, send it now.

    Called by the worker itself, first thing, rather than from a
    ``preexec_fn`` in the supervisor: ``preexec_fn`` runs Python between
    fork and exec, which is unsafe once the supervisor has a thread (its
    metrics endpoint, when it restarts a worker); without it the child execs
    at once. The ``getppid`` check closes the gap between the spawn and the
    ``prctl``. The signal comes when the thread that spawned us ends: the
    supervisor spawns from its main thread, which lives as long as it does.
    Elsewhere than Linux this does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


@dataclass(frozen=True, slots=True)
class Serving:
    """The worker serves; its /metrics is on ``metrics_port`` (loopback)."""

    port: int
    metrics_port: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The worker could not start, for this reason (one line)."""

    message: str


Status = Serving | Failed


class WorkerLink:
    """A worker's side of its status pipe: this process is worker ``index``
    of a supervisor, which reads ``fd``. Writes never raise: a supervisor
    that went away must not break the worker's own shutdown."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd = fd

    def serving(self, port: int, metrics_port: int) -> None:
        self._send({"serving": {"port": port, "metrics_port": metrics_port}})

    def failed(self, message: str) -> None:
        self._send({"failed": message})

    def _send(self, message: dict[str, object]) -> None:
        # One small write: a pipe takes up to PIPE_BUF bytes whole.
        line = (json.dumps(message) + "\n").encode()
        with contextlib.suppress(OSError):
            os.write(self._fd, line)


class StatusReader:
    """The supervisor's side: bytes from a worker's pipe in, messages out.
    Lines that are not a known message are skipped (a worker is ours, but a
    garbled line must not stop the supervisor)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Status]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _MAX_LINE:
            self._buffer = b""
        return [status for line in lines if (status := _parse(line)) is not None]


def _parse(line: bytes) -> Status | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    serving = message.get("serving")
    if isinstance(serving, dict):
        try:
            return Serving(port=int(serving["port"]), metrics_port=int(serving["metrics_port"]))
        except (KeyError, TypeError, ValueError):
            return None
    failed = message.get("failed")
    if isinstance(failed, str):
        return Failed(failed)
    return None
