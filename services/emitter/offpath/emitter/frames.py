"""The bytes that cross from the serving process to its sender process.

A frame is a 4-byte little-endian length and a ``marshal`` payload: a tuple
for an event record (the fields of :class:`EventRecord`, in order, behind a
format number), a dict for a control message. marshal is the cheapest
serialiser the standard library has (≈ 0.5 µs for a record here, against
several µs to build the protobuf), and both ends are the same Python
release, which is marshal's one requirement: the sender process is started
with the serving process's own interpreter. The protobuf is built in the
sender process. Records are written in marshal format 2: the default (4)
tracks every object it writes to share repeats, which on a record of a
dozen fields costs more (≈ 0.7 µs against 0.5 µs) than the few dozen bytes
it saves are worth.

Frames written to a pipe in one ``write`` of at most ``PIPE_BUF`` bytes
(4 KiB on Linux) are atomic; a larger one may be split, and the writer must
then finish it before writing another (see :class:`ProcessEmitter`).
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Iterator
from typing import Any, Final

from offpath.emitter.record import EventRecord

_LENGTH: Final = struct.Struct("<I")
HEADER_SIZE: Final = _LENGTH.size
_RECORD_FORMAT: Final = 1
_MARSHAL_VERSION: Final = 2
# A frame longer than this is not ours: the reader stops rather than
# allocating whatever a corrupt length says.
MAX_FRAME: Final = 1 << 20


def record_frame(record: EventRecord) -> bytes:
    """The frame for one record (on the request path: keep it lean)."""
    payload = marshal.dumps(
        (
            _RECORD_FORMAT,
            record.event_id,
            record.occurred_at_ns,
            record.service,
            record.method,
            record.query,
            record.matched_skills,
            record.processing_ns,
            record.model,
            record.token_count,
            record.status_code,
            dict(record.attributes) if record.attributes else None,
        ),
        _MARSHAL_VERSION,
    )
    return _LENGTH.pack(len(payload)) + payload


def control_frame(message: dict[str, Any]) -> bytes:
    """A frame carrying a control message (or, from the sender, a report)."""
    payload = marshal.dumps(message)
    return _LENGTH.pack(len(payload)) + payload


class FrameError(ValueError):
    """Bytes that are not a frame this module wrote."""


def decode(payload: bytes) -> EventRecord | dict[str, Any]:
    """A frame's payload back into a record or a control message."""
    try:
        value = marshal.loads(payload)
    except (EOFError, ValueError, TypeError) as exc:
        raise FrameError(f"undecodable frame: {exc}") from None
    if isinstance(value, dict):
        return value
    if not isinstance(value, tuple) or not value or value[0] != _RECORD_FORMAT:
        raise FrameError("not a record frame of a known format")
    try:
        (
            _,
            event_id,
            occurred_at_ns,
            service,
            method,
            query,
            skills,
            processing_ns,
            model,
            token_count,
            status_code,
            attributes,
        ) = value
        return EventRecord(
            event_id=event_id,
            occurred_at_ns=occurred_at_ns,
            service=service,
            method=method,
            query=query,
            matched_skills=tuple((str(name), float(score)) for name, score in skills),
            processing_ns=processing_ns,
            model=model,
            token_count=token_count,
            status_code=status_code,
            attributes=attributes or None,
        )
    except (TypeError, ValueError) as exc:
        raise FrameError(f"malformed record frame: {exc}") from None


class FrameReader:
    """Reassembles frames from a byte stream read in arbitrary pieces."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The payloads completed by ``data``, in order."""
        pending = self._pending
        pending += data
        offset = 0
        while len(pending) - offset >= HEADER_SIZE:
            (length,) = _LENGTH.unpack_from(pending, offset)
            if length > MAX_FRAME:
                raise FrameError(f"frame length {length} is over {MAX_FRAME}")
            end = offset + HEADER_SIZE + length
            if end > len(pending):
                break
            yield bytes(pending[offset + HEADER_SIZE : end])
            offset = end
        del pending[:offset]

    @property
    def partial(self) -> int:
        """Bytes of an unfinished frame held back (at EOF: a torn last write)."""
        return len(self._pending)
