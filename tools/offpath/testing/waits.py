"""Waiting in tests for something another thread or task will make true,
with a bound, polling briefly (no test sleeps for a fixed time and hopes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

_POLL_S = 0.002


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Block until ``predicate()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        time.sleep(_POLL_S)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` is true; AssertionError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(_POLL_S)
