"""The sender's on-disk spool (``OFFPATH_EMIT_SPOOL_DIR``; off when unset).

Two kinds of file, each a run of records ``<length:4><crc32:4><AnalyticsEvent>``:

- ``wal-<pid>-<n>.events``: the write-ahead log of a batch of the sender
  ``<pid>``. Every event it reads from the pipe is appended to the current
  WAL, and the file is fsync'd at least every ``sync_every_s``: that is the
  fsync point. When the batch is handed to the backend its WAL is sealed
  (later events go to a new one), and when the batch is done (sent,
  dropped, or parked) the file is deleted. If the sender dies, its WALs
  stay; the next sender adopts them as spool files and sends them again (at
  least once: ingest keys events by id, so a resend overwrites).
- ``spool-<time>-<pid>-<n>.events``: events that could not be sent within
  the retry deadline (SQS down) or before shutdown. The sender replays
  them, oldest file first, after a send succeeds and when it starts.

The spool is bounded (``max_bytes``, all files together): events that do
not fit are dropped and counted (``spool_full``). A file that does not read
back cleanly (a bad checksum, a torn record) keeps what read cleanly before
the damage, is renamed ``*.corrupt`` and counted, and is never read again:
a damaged file cannot cause a crash loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import structlog

from offpath.v1 import analytics_pb2

log = structlog.get_logger("offpath.emitter.spool")

_HEADER: Final = struct.Struct("<II")
_MAX_RECORD: Final = 1 << 20
_SUFFIX: Final = ".events"


def _record(data: bytes) -> bytes:
    return _HEADER.pack(len(data), zlib.crc32(data)) + data


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a sender found at start: the WALs of dead senders it adopted
    (``orphan_*``: events a killed sender had read and not finished), and
    everything the spool then holds for replay (``pending_*``, adopted WALs
    included; events counted by their record headers), and damaged files
    set aside earlier (``corrupt_files``)."""

    orphan_files: int = 0
    orphan_events: int = 0
    orphan_bytes: int = 0
    pending_files: int = 0
    pending_events: int = 0
    pending_bytes: int = 0
    corrupt_files: int = 0

    @property
    def empty(self) -> bool:
        return not (self.orphan_files or self.pending_files or self.corrupt_files)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def count_records(data: bytes) -> int:
    """How many whole records ``data`` holds, by their headers (checksums unchecked)."""
    count = offset = 0
    while len(data) - offset >= _HEADER.size:
        length, _ = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size + length
        if offset > len(data):
            break
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class ReadBack:
    """What a spool file held: the events that read cleanly, and whether the
    file was damaged after them."""

    events: list[analytics_pb2.AnalyticsEvent]
    corrupt: bool


def read_file(path: Path) -> ReadBack:
    """Every clean record of ``path``, up to the first damaged one."""
    data = path.read_bytes()
    events: list[analytics_pb2.AnalyticsEvent] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            return ReadBack(events, corrupt=True)
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if length > _MAX_RECORD or end > len(data) or zlib.crc32(data[start:end]) != crc:
            return ReadBack(events, corrupt=True)
        try:
            events.append(analytics_pb2.AnalyticsEvent.FromString(data[start:end]))
        except Exception:
            return ReadBack(events, corrupt=True)
        offset = end
    return ReadBack(events, corrupt=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    """One sender's view of the spool directory (several senders, of several
    serving processes, may share it: each writes only files named with its
    own pid and adopts only those of dead ones)."""

    def __init__(self, directory: Path, *, max_bytes: int, sync_every_s: float = 0.05) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._sync_every_s = sync_every_s
        self._pid = os.getpid()
        self._seq = itertools.count()
        self._wal: IO[bytes] | None = None
        self._wal_path: Path | None = None
        self._wal_events = 0
        self._synced_at = 0.0
        self._dirty = False
        directory.mkdir(parents=True, exist_ok=True)

    # -- the write-ahead log of the batch being assembled --------------------------

    def log(self, event: analytics_pb2.AnalyticsEvent) -> None:
        """Append one event to the current batch's WAL (opened on first use)."""
        if self._wal is None:
            self._wal_path = self._dir / f"wal-{self._pid}-{next(self._seq)}{_SUFFIX}"
            self._wal = self._wal_path.open("ab")
        self._wal.write(_record(event.SerializeToString()))
        self._wal_events += 1
        self._dirty = True

    def push(self) -> None:
        """Hand what the WAL buffers to the kernel (no fsync): it then
        survives this process being killed."""
        if self._wal is not None:
            self._wal.flush()

    @property
    def unsynced(self) -> bool:
        """The WAL holds events written since its last fsync."""
        return self._dirty

    @property
    def sync_every_s(self) -> float:
        return self._sync_every_s

    def sync(self, *, force: bool = False) -> None:
        """fsync the WAL when it has news and ``sync_every_s`` has passed."""
        if self._wal is None or not self._dirty:
            return
        now = time.monotonic()
        if not force and now - self._synced_at < self._sync_every_s:
            return
        self._wal.flush()
        os.fsync(self._wal.fileno())
        self._synced_at, self._dirty = now, False

    def seal(self) -> Path | None:
        """Close the current WAL (synced) and return its path: its batch is
        being sent; events logged from now on go to a new WAL."""
        path = self._wal_path
        if self._wal is not None:
            self.sync(force=True)
            self._wal.close()
        self._wal, self._wal_path, self._wal_events, self._dirty = None, None, 0, False
        return path

    def discard(self, path: Path | None) -> None:
        """The batch a sealed WAL covers was sent, dropped or parked: forget it."""
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def batch_done(self) -> None:
        """The batch the current WAL covers was sent, dropped or parked: forget it."""
        self.discard(self.seal())

    # -- parked events -------------------------------------------------------------

    def park(self, events: Iterable[analytics_pb2.AnalyticsEvent]) -> tuple[int, int]:
        """Keep events that could not be sent, durably. Returns (parked, refused):
        what would take the spool over ``max_bytes`` is refused."""
        records = [_record(event.SerializeToString()) for event in events]
        if not records:
            return 0, 0
        room = self._max_bytes - self.size()
        kept: list[bytes] = []
        for record in records:
            if len(record) > room:
                break
            kept.append(record)
            room -= len(record)
        if kept:
            name = f"spool-{time.time_ns():020d}-{self._pid}-{next(self._seq)}{_SUFFIX}"
            tmp = self._dir / f".{name}.tmp"
            with tmp.open("wb") as stream:
                stream.write(b"".join(kept))
                stream.flush()
                os.fsync(stream.fileno())
            tmp.rename(self._dir / name)  # atomic: a reader never sees half a file
            self._sync_dir()
        return len(kept), len(records) - len(kept)

    def recover(self) -> Recovery:
        """At start: adopt the WALs of senders that died (as spool files),
        then take stock of what the spool holds."""
        files = events = size = 0
        for path in sorted(self._dir.glob(f"wal-*{_SUFFIX}")):
            try:
                pid = int(path.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if pid == self._pid or _pid_alive(pid):
                continue
            data = path.read_bytes()
            files += 1
            events += count_records(data)
            size += len(data)
            target = self._dir / f"spool-{time.time_ns():020d}-{pid}-orphan-{files}{_SUFFIX}"
            path.rename(target)
        if files:
            self._sync_dir()
        pending_files = pending_events = pending_bytes = 0
        for path in self._dir.glob(f"spool-*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                data = path.read_bytes()
                pending_files += 1
                pending_events += count_records(data)
                pending_bytes += len(data)
        return Recovery(
            orphan_files=files,
            orphan_events=events,
            orphan_bytes=size,
            pending_files=pending_files,
            pending_events=pending_events,
            pending_bytes=pending_bytes,
            corrupt_files=len(list(self._dir.glob("*.corrupt"))),
        )

    def holding(self) -> tuple[int, int]:
        """(files, bytes) the spool holds for replay now."""
        files = size = 0
        for path in self._dir.glob(f"spool-*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
                files += 1
        return files, size

    def oldest(self) -> Path | None:
        """The spool file to replay next."""
        files = sorted(self._dir.glob(f"spool-*{_SUFFIX}"))
        return files[0] if files else None

    def take(self, path: Path) -> ReadBack:
        """Read a spool file for replay; a damaged one is renamed ``.corrupt``
        at once (what read cleanly is returned), so it is never read again."""
        back = read_file(path)
        if back.corrupt:
            log.error("spool_file_corrupt", file=path.name, readable_events=len(back.events))
            path.rename(path.with_suffix(".corrupt"))
        return back

    def done(self, path: Path) -> None:
        """A replayed file's events were sent: remove it."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def size(self) -> int:
        """Bytes of every WAL and spool file in the directory."""
        total = 0
        for path in self._dir.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def _sync_dir(self) -> None:
        """Make a rename durable (fsync of the directory)."""
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._wal is not None:
            self.sync(force=True)
            self._wal.close()
            self._wal = None
