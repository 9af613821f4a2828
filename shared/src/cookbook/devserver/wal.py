"""An append-only, fsync'd write-ahead log of JSON lines, with group commit.

Every state change of the dev server is a record here before anyone is told about it, so a
SIGKILLed server replays the file and comes back with nothing lost. Concurrent writers share one
fsync (group commit): a request waits only for the flush that covers its own record.

Records are encoded with msgspec (several times faster than `json`, and it is what the SDK encodes
its requests with) and read back with `json`, which also reads logs written before.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import msgspec

type Record = dict[str, Any]


class LogInUseError(RuntimeError):
    """Another live dev server owns this log; two writers would corrupt it."""


class CorruptLogError(RuntimeError):
    """A record in the middle of the log is unreadable: replaying past it would lose history."""


def fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a file just created or renamed in it) survive a power cut.

    fsync on a file makes its bytes durable, not its name: until the directory itself is synced, a
    crash of the machine may leave a fully written log that no directory entry points to.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(line: bytes) -> Record | None:
    """The record on one line of the log, or None if the line is not a whole, readable record."""
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("now"), int) else None


class WriteAheadLog:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._file: BinaryIO | None = None
        self._appended = 0  # sequence number of the last appended record
        self._synced = 0  # sequence number of the last record known to be on disk
        self._flush: asyncio.Task[None] | None = None
        self._lock: TextIO | None = None

    def lock(self) -> None:
        """Take the log for this process (released by the kernel when the process dies)."""
        try:
            self.path.parent.mkdir(parents=True)
        except FileExistsError:
            pass
        else:
            if self._fsync:
                fsync_directory(self.path.parent.parent)
        self._lock = (self.path.parent / "lock").open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogInUseError(
                f"{self.path.parent} is in use by another dev server; stop it, or point "
                "RESONATE_URL at it instead of starting a second one"
            ) from None

    def replay(self, *, last: bool = True) -> Iterator[Record]:
        """Yield every complete record, then truncate a torn tail left by a crash mid-write.

        Only a tail may be torn: an append is one write at the end of the file, so a crash can
        damage the last record, never one with a good record after it. A bad record followed by
        good ones means the file was damaged some other way; truncating there would silently drop
        every acknowledged change after it, so replay refuses and leaves the file as it is. A log
        that is not the `last` (compaction closed it, fsynced, and went on in a new one) has no
        tail a crash could tear: any bad record in it is refused.
        """
        if not self.path.exists():
            return
        good_bytes = 0
        with self.path.open("rb") as f:
            for line in f:
                record = _parse(line)
                if record is None:
                    self._refuse_if_followed_by_records(f, good_bytes)
                    if not last:
                        raise CorruptLogError(
                            f"{self.path}: unreadable record at byte offset {good_bytes} in a "
                            "log that was closed and fsynced before the next one began; the dev "
                            "server will not start on it (the file is left untouched)"
                        )
                    break  # the crash hit mid-write: this record was never acknowledged
                good_bytes += len(line)
                yield record
        if good_bytes != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)
                if self._fsync:
                    os.fsync(f.fileno())

    def _refuse_if_followed_by_records(self, rest: BinaryIO, bad_offset: int) -> None:
        for line in rest:
            if _parse(line) is not None:
                raise CorruptLogError(
                    f"{self.path}: unreadable record at byte offset {bad_offset}, followed by "
                    "readable ones; only a torn last record can be dropped safely, so the dev "
                    "server will not start on this log (the file is left untouched: repair or "
                    "move it, or point --data-dir at a fresh directory)"
                )

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._file = self.path.open("ab")
        if created and self._fsync:
            fsync_directory(self.path.parent)

    def rotate(self, path: Path) -> None:
        """Make everything appended so far durable in this file, then append to `path` instead.

        Sequence numbers carry on: a request waiting for a record of the old file is answered
        once this returns, since that file is then fsynced to its end.
        """
        assert self._file is not None, "open() the log first"
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        self._synced = self._appended
        self.path = path
        self._file = None
        self.open()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def appended(self) -> int:
        return self._appended

    def append(self, record: Record) -> int:
        """Buffer one record; return its sequence number for `durable()`."""
        assert self._file is not None, "open() the log first"
        self._file.write(msgspec.json.encode(record) + b"\n")
        self._appended += 1
        return self._appended

    async def durable(self, seq: int) -> None:
        """Return once record `seq` (and every record before it) is on disk.

        The flush runs as a task of its own, one loop iteration later: the requests that arrived
        together append their records first, and one fsync covers them all.
        """
        while self._synced < seq:
            if self._flush is None:
                self._flush = asyncio.create_task(self._flush_all())
            await asyncio.shield(self._flush)

    async def _flush_all(self) -> None:
        assert self._file is not None
        try:
            target = self._appended
            self._file.flush()
            if self._fsync:
                # On the event loop, not in a thread: on the disks this runs on an fsync takes
                # ~0.1-0.3 ms, and handing it to a thread and waking the loop back up cost as much
                # again in CPU (two context switches, the GIL): 0.3 ms of server CPU per durable
                # step. Requests that arrive meanwhile wait in the socket and share the next
                # flush, so under load this still commits in groups. The price: on a disk whose
                # fsync takes tens of milliseconds, the loop (SSE pings, reads) waits that long.
                os.fsync(self._file.fileno())
            self._synced = target
        finally:
            self._flush = None
