"""Unit tests for offpath.kit.workers: the port a supervisor reserves with SO_REUSEPORT,
workers that die with their parent, and the status lines a worker sends its supervisor."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from offpath.kit.server import StartupError
from offpath.kit.workers import Failed, Serving, StatusReader, WorkerLink, reserve_port

TIMEOUT_S = 10.0


def _reuseport_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


@pytest.fixture
def reserved() -> Iterator[socket.socket]:
    sock = reserve_port("127.0.0.1", 0)
    try:
        yield sock
    finally:
        sock.close()


def test_port_zero_reserves_a_port_that_reuseport_listeners_share(
    reserved: socket.socket,
) -> None:
    """Port 0 resolves to a real port, and two SO_REUSEPORT listeners bind it while the
    reservation holds it."""
    port = reserved.getsockname()[1]
    assert port != 0
    first, second = _reuseport_listener(port), _reuseport_listener(port)
    try:
        assert first.getsockname()[1] == second.getsockname()[1] == port
    finally:
        first.close()
        second.close()


def test_reserved_port_is_closed_to_sockets_without_reuseport(reserved: socket.socket) -> None:
    """A socket that does not ask for SO_REUSEPORT cannot take the reserved port."""
    port = reserved.getsockname()[1]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as intruder,
        pytest.raises(OSError, match="Address already in use"),
    ):
        intruder.bind(("127.0.0.1", port))


def test_reservation_receives_no_connection(reserved: socket.socket) -> None:
    """Every connection to the port reaches the one listener: the reservation, which never
    listens, is not in the kernel's share-out."""
    port = reserved.getsockname()[1]
    listener = _reuseport_listener(port)
    clients: list[socket.socket] = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S))
        listener.settimeout(TIMEOUT_S)
        accepted = [listener.accept()[0] for _ in clients]
        for conn in accepted:
            conn.close()
        assert len(accepted) == 20
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_port_held_by_another_program_is_a_startup_error() -> None:
    """A port some other socket (without SO_REUSEPORT) listens on cannot be reserved, and
    the error says which port."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot bind gRPC port 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port)


# A child that starts a grandchild (which calls die_with_parent and says "ready" on the
# shared stdout), then sleeps until killed.
_PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(60)
"""
_GRANDCHILD = """
import os, sys, time
from offpath.kit.workers import die_with_parent
die_with_parent(os.getppid() if sys.argv[1] == "parent" else 1)
print("ready", flush=True)
time.sleep(60)
"""


def _read_until_eof(stream: int, timeout: float) -> bytes:
    """Everything written to the pipe until every writer closed it (or the timeout)."""
    data = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stream], [], [], left)
        if not ready:
            break
        chunk = os.read(stream, 4096)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the pipe is still open after {timeout}s; read {data!r}")


def test_worker_gets_sigterm_when_its_parent_is_killed() -> None:
    """After its parent is SIGKILLed, a process that called die_with_parent ends (its end
    of the shared pipe closes), though nobody signalled it directly."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _GRANDCHILD, "parent"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert parent.stdout is not None
    try:
        assert parent.stdout.readline() == b"ready\n"
        parent.kill()
        parent.wait(TIMEOUT_S)
        assert _read_until_eof(parent.stdout.fileno(), TIMEOUT_S) == b""
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_worker_whose_parent_is_already_gone_ends_at_once() -> None:
    """A process whose parent is not the one it was told (the parent died before the
    prctl) signals itself: it never says ready."""
    done = subprocess.run(
        [sys.executable, "-c", _GRANDCHILD, "someone-else"],
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == -signal.SIGTERM
    assert done.stdout == b""


def test_status_lines_round_trip_across_chunk_boundaries() -> None:
    """What a worker writes through WorkerLink reads back as the same messages, however the
    pipe splits the bytes."""
    read_fd, write_fd = os.pipe()
    try:
        link = WorkerLink(3, write_fd)
        link.failed("cannot load the skills catalog")
        link.serving(50051, 9464)
        data = os.read(read_fd, 4096)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    reader = StatusReader()
    messages = [m for i in range(len(data)) for m in reader.feed(data[i : i + 1])]
    assert messages == [Failed("cannot load the skills catalog"), Serving(50051, 9464)]
    assert link.index == 3


def test_garbled_status_lines_are_skipped() -> None:
    """Lines that are not a known message (not JSON, wrong shape) are skipped and the next
    good one still reads."""
    reader = StatusReader()
    feed = b'not json\n[1]\n{"serving": {"port": "x"}}\n{"other": 1}\n{"failed": "why"}\n'
    assert reader.feed(feed) == [Failed("why")]


def test_writing_to_a_supervisor_that_went_away_does_not_raise() -> None:
    """A worker whose supervisor closed the pipe's read end goes on (its shutdown must not
    break on a status line)."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    try:
        WorkerLink(0, write_fd).serving(1, 2)
    finally:
        os.close(write_fd)
