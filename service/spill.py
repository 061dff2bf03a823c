"""Disk spill for outgoing alerts and call events: a bounded, ordered, crash-surviving FIFO of JSON records.

Records are appended as JSON lines to numbered segment files in one directory and read back in the
order they were written. A segment is deleted once every record in it was taken and confirmed. The
read position is not persisted: after a restart every record still on disk is read again, so a
record may be delivered twice, and the consumer must be idempotent (the publisher deduplicates by
id in Redis). Capacity is bounded in bytes; a record that does not fit is refused.

The spill is used from one event loop; appends and reads are small and done inline (each append is
written and flushed to the operating system at once, so a crash of the process loses nothing). The
fsync that makes appends survive a power loss runs on a background thread, started as soon as the
previous one ends, so records written during one fsync share the next (group commit) and the event
loop never waits on the disk: a power loss can lose the records of the last few milliseconds.
`close` waits for the last fsync.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

SEGMENT_BYTES = 1 << 20
FIRST_SEGMENT = 1_000_000_000  # segments are numbered up from here; `prepend` numbers down
_PREFIX = "spill-"
_SUFFIX = ".jsonl"


class SpillFull(Exception):
    """The spill holds its maximum number of bytes."""


class DiskSpill:
    """FIFO of JSON-serialisable records on disk, at most `max_bytes` of them."""

    def __init__(self, directory: str, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        os.makedirs(directory, exist_ok=True)
        self._segments: deque[int] = deque(sorted(self._existing()))
        self._bytes = sum(os.path.getsize(self._path(n)) for n in self._segments)
        self._pending = 0
        for n in self._segments:
            with open(self._path(n), "rb") as fh:
                self._pending += sum(1 for line in fh if line.endswith(b"\n"))
        self._next_segment = (self._segments[-1] + 1) if self._segments else FIRST_SEGMENT
        self._writer = None  # the newest segment, open for appending
        self._reader = None  # the oldest segment, open for reading
        self._head: bytes | None = None  # the record `peek` returned, not yet taken
        # The syncer thread fsyncs the writer holding _file_lock, which the loop also holds while it
        # replaces or closes the writer (never while it appends), so the thread never fsyncs a closed
        # or reused descriptor. _unsynced guards the two counters only.
        self._file_lock = threading.Lock()
        self._unsynced = threading.Condition()
        self._appended = 0  # appends so far, and how many of them the syncer has fsynced
        self._synced = 0
        self._closing = False
        self._syncer: threading.Thread | None = None
        if self._pending:
            log.warning("found %d spilled record(s) from an earlier run in %s; they will be sent again", self._pending, directory)

    def __len__(self) -> int:
        return self._pending

    @property
    def bytes(self) -> int:
        return self._bytes

    def _existing(self) -> list[int]:
        out = []
        for name in os.listdir(self.directory):
            if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
                try:
                    out.append(int(name[len(_PREFIX):-len(_SUFFIX)]))
                except ValueError:
                    continue
        return out

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"{_PREFIX}{segment:010d}{_SUFFIX}")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record at the end (flushed now, fsynced by the syncer thread right after); raises
        SpillFull when it does not fit."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        if self._bytes + len(line) > self.max_bytes:
            raise SpillFull(f"disk spill full ({self._bytes} of {self.max_bytes} bytes)")
        if self._writer is None or self._writer.tell() >= self._segment_bytes:
            with self._file_lock:
                if self._writer is not None:
                    self._fsync_writer()  # the syncer only ever syncs the newest segment
                    self._writer.close()
                segment = self._next_segment
                self._next_segment += 1
                self._writer = open(self._path(segment), "ab")
                self._segments.append(segment)
        self._writer.write(line)
        self._writer.flush()
        self._bytes += len(line)
        self._pending += 1
        with self._unsynced:
            self._appended += 1
            self._unsynced.notify_all()
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="spill-fsync", daemon=True)
            self._syncer.start()

    def _sync_loop(self) -> None:
        while True:
            with self._unsynced:
                self._unsynced.wait_for(lambda: self._synced < self._appended or self._closing)
                if self._synced >= self._appended:
                    return
                target = self._appended
            with self._file_lock:
                self._fsync_writer()
            with self._unsynced:
                self._synced = max(self._synced, target)
                self._unsynced.notify_all()

    def _fsync_writer(self) -> None:
        """fsync the open segment (the caller holds _file_lock)."""
        if self._writer is None:
            return
        try:
            os.fsync(self._writer.fileno())
        except OSError as exc:
            log.error("could not fsync the disk spill: %s", exc)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until every record appended so far was fsynced; False on timeout."""
        with self._unsynced:
            target = self._appended
            return self._unsynced.wait_for(lambda: self._synced >= target or self._syncer is None, timeout)

    def prepend(self, records: list[dict[str, Any]]) -> None:
        """Put records in front of everything on disk, in their order (what was still in memory at
        shutdown is older than what was spilled). Raises SpillFull (writing nothing) if they do not fit."""
        lines = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        if not lines:
            return
        if self._bytes + len(lines) > self.max_bytes:
            raise SpillFull(f"disk spill full ({self._bytes} of {self.max_bytes} bytes)")
        if self._reader is not None:  # drop what was already taken from the front segment, then reread it
            untaken = self._reader.tell() - (len(self._head) if self._head is not None else 0)
            self._reader.close()
            self._reader = None
            path = self._path(self._segments[0])
            with open(path, "rb") as fh:
                fh.seek(untaken)
                rest = fh.read()
            with open(path, "wb") as fh:
                fh.write(rest)
            self._bytes -= untaken
        self._head = None
        segment = (self._segments[0] - 1) if self._segments else self._next_segment
        if not self._segments:
            self._next_segment += 1
        with open(self._path(segment), "wb") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        self._segments.appendleft(segment)
        self._bytes += len(lines)
        self._pending += len(records)

    def peek(self) -> dict[str, Any] | None:
        """The oldest record not yet taken, or None when there is none."""
        if self._head is not None:
            return json.loads(self._head)
        while self._segments:
            if self._reader is None:
                self._reader = open(self._path(self._segments[0]), "rb")
            position = self._reader.tell()
            line = self._reader.readline()
            if line.endswith(b"\n"):
                if not line.strip():
                    continue
                self._head = line
                return json.loads(line)
            self._reader.seek(position)  # nothing (or half a line being written) yet
            if self._is_writing(self._segments[0]):
                return None
            self._drop_oldest_segment()
        return None

    def take(self) -> None:
        """Confirm the record `peek` returned: it will not be returned again (in this process)."""
        if self._head is None and self.peek() is None:
            return
        self._head = None
        self._pending -= 1
        if self._pending == 0:
            self._clear()

    def _is_writing(self, segment: int) -> bool:
        return self._writer is not None and segment == self._next_segment - 1

    def _drop_oldest_segment(self) -> None:
        segment = self._segments.popleft()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._remove(segment)

    def _remove(self, segment: int) -> None:
        path = self._path(segment)
        try:
            size = os.path.getsize(path)
            os.remove(path)
            self._bytes -= size
        except OSError as exc:
            log.error("could not remove spill segment %s: %s", path, exc)

    def _clear(self) -> None:
        """Every record was taken: remove all segments and start afresh."""
        self._close_files()
        while self._segments:
            self._remove(self._segments.popleft())
        self._bytes = 0

    def _close_files(self) -> None:
        with self._file_lock:
            with self._unsynced:
                target = self._appended
            if self._synced < target:
                self._fsync_writer()
            for handle in (self._reader, self._writer):
                if handle is not None:
                    handle.close()
            self._reader = self._writer = None
        with self._unsynced:
            self._synced = max(self._synced, target)
            self._unsynced.notify_all()

    def close(self) -> None:
        """fsync what is unsynced, stop the syncer thread and close the files."""
        syncer = self._syncer
        if syncer is not None:
            with self._unsynced:
                self._closing = True
                self._unsynced.notify_all()
            syncer.join()
            self._syncer = None
            self._closing = False
        self._close_files()
