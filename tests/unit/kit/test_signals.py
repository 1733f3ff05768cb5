"""Unit tests for offpath.kit.signals: on_signals and stop_on_signals, inside a running
event loop and outside one. Signals are real (os.kill to this process); every test puts
back the handlers it found."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from offpath.kit.signals import on_signals, stop_on_signals
from offpath.testing.waits import eventually

_WAIT_S = 5.0
_TOUCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Recorder:
    """A plain signal.signal handler that records the signals it got: installed before a
    block, it is what the block must put back, and it keeps a stray signal harmless."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)


class Interrupted(Exception):
    """Raised by a handler to break out of a blocking wait."""


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    """Whatever a test does, SIGTERM, SIGINT and SIGUSR1 get their handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in _TOUCHED}
    yield
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


@pytest.fixture
def previous() -> Recorder:
    """A recording handler installed for every signal the tests send, before their blocks."""
    recorder = Recorder()
    for sig in _TOUCHED:
        signal.signal(sig, recorder)
    return recorder


def _kill(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


def _installed(sig: signal.Signals) -> object:
    """The handler in place for ``sig`` (typed plainly, so comparing it narrows nothing)."""
    return signal.getsignal(sig)


class TestInsideALoop:
    async def test_sigterm_sets_the_asyncio_event_and_is_recorded(self, previous: Recorder) -> None:
        """SIGTERM inside the block sets the asyncio.Event and is named in the list; the
        handler that was there before does not see it."""
        stop = asyncio.Event()
        with stop_on_signals(stop) as received:
            _kill(signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), _WAIT_S)
            assert received == ["SIGTERM"]
        assert previous.received == []

    async def test_every_signal_is_recorded_in_order(self, previous: Recorder) -> None:
        """Several stop signals are all recorded, oldest first."""
        stop = asyncio.Event()
        with stop_on_signals(stop) as received:
            _kill(signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), _WAIT_S)
            _kill(signal.SIGINT)
            await eventually(lambda: len(received) == 2)
        assert received == ["SIGTERM", "SIGINT"]
        assert previous.received == []

    async def test_previous_handlers_are_back_after_the_block(self, previous: Recorder) -> None:
        """After the block both signals have their previous handlers again, and a SIGTERM
        then reaches the previous handler, not the event."""
        stop = asyncio.Event()
        with stop_on_signals(stop):
            assert _installed(signal.SIGTERM) is not previous
        assert _installed(signal.SIGTERM) is previous
        assert _installed(signal.SIGINT) is previous
        _kill(signal.SIGTERM)
        await eventually(lambda: previous.received == [signal.SIGTERM])
        assert not stop.is_set()

    async def test_asyncio_run_sigint_handler_is_put_back(self) -> None:
        """The SIGINT handler the loop's runner installed (or whatever was there) is the one
        in place after the block, not the interpreter's default."""
        before = signal.getsignal(signal.SIGINT)
        with stop_on_signals(asyncio.Event()):
            pass
        assert _installed(signal.SIGINT) is before

    async def test_handlers_are_restored_when_the_block_raises(self, previous: Recorder) -> None:
        """An exception leaving the block still puts the previous handlers back."""
        with pytest.raises(RuntimeError, match="boom"), stop_on_signals(asyncio.Event()):
            raise RuntimeError("boom")
        assert _installed(signal.SIGTERM) is previous
        assert _installed(signal.SIGINT) is previous

    async def test_handler_runs_as_a_loop_callback(self, previous: Recorder) -> None:
        """on_signals' handler is called by the loop on its next turn, with the signal, not
        between two bytecodes of whatever code was running."""
        loop = asyncio.get_running_loop()
        calls: list[tuple[signal.Signals, asyncio.AbstractEventLoop]] = []
        with on_signals(lambda sig: calls.append((sig, asyncio.get_running_loop()))):
            _kill(signal.SIGINT)
            assert calls == []  # not yet: nothing has yielded to the loop
            await eventually(lambda: len(calls) == 1)
        assert calls == [(signal.SIGINT, loop)]
        assert previous.received == []


class TestOutsideALoop:
    def test_sigterm_sets_the_threading_event(self, previous: Recorder) -> None:
        """Without a running loop, SIGTERM sets the threading.Event and is recorded."""
        stop = threading.Event()
        with stop_on_signals(stop) as received:
            _kill(signal.SIGTERM)
            assert stop.wait(_WAIT_S)
        assert received == ["SIGTERM"]
        assert previous.received == []

    def test_previous_handlers_are_back_after_the_block(self, previous: Recorder) -> None:
        """After the block the previous handlers are installed again and receive signals."""
        stop = threading.Event()
        with stop_on_signals(stop):
            assert _installed(signal.SIGTERM) is not previous
        assert _installed(signal.SIGTERM) is previous
        assert _installed(signal.SIGINT) is previous
        _kill(signal.SIGTERM)
        assert previous.received == [signal.SIGTERM]
        assert not stop.is_set()

    def test_handlers_are_restored_when_the_block_raises(self, previous: Recorder) -> None:
        """An exception leaving the block still puts the previous handlers back."""
        with pytest.raises(RuntimeError, match="boom"), stop_on_signals(threading.Event()):
            raise RuntimeError("boom")
        assert _installed(signal.SIGTERM) is previous
        assert _installed(signal.SIGINT) is previous

    def test_handler_may_raise_to_interrupt_a_blocking_wait(self, previous: Recorder) -> None:
        """A handler that raises breaks the main thread out of a blocking wait at once."""

        def interrupt(sig: signal.Signals) -> None:
            raise Interrupted(sig.name)

        blocked = threading.Event()  # never set: only the signal can end the wait
        sender = threading.Timer(0.05, _kill, (signal.SIGTERM,))
        started = time.monotonic()
        try:
            # Both statements belong inside: the signal may land as soon as the timer runs.
            with pytest.raises(Interrupted, match="SIGTERM"), on_signals(interrupt):  # noqa: PT012
                sender.start()
                blocked.wait(_WAIT_S)
        finally:
            sender.cancel()
            sender.join(_WAIT_S)
        assert time.monotonic() - started < _WAIT_S - 1.0
        assert _installed(signal.SIGTERM) is previous
        assert previous.received == []

    def test_only_the_signals_asked_for_are_handled(self, previous: Recorder) -> None:
        """on_signals with its own list leaves every other signal's handler alone."""
        got: list[signal.Signals] = []
        with on_signals(got.append, [signal.SIGUSR1]):
            assert _installed(signal.SIGTERM) is previous
            assert _installed(signal.SIGINT) is previous
            _kill(signal.SIGUSR1)
        assert got == [signal.SIGUSR1]
        assert _installed(signal.SIGUSR1) is previous
        assert previous.received == []
