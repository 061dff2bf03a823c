"""Disk spill for outgoing alerts and call events: a bounded, ordered, crash-surviving FIFO of JSON records.

Records are appended as JSON lines to numbered segment files in one directory and read back in the
order they were written. A segment is deleted once every record in it was taken and confirmed. The
read position is not persisted: after a restart every record still on disk is read again, so a
record may be delivered twice, and the consumer must be idempotent (the publisher deduplicates by
id in Redis). Capacity is bounded in bytes; a record that does not fit is refused.

The spill is used from one event loop; appends and reads are small and done inline (each append is
written to the operating system at once, with no buffer in the process, so a crash of the process
loses nothing). The fsync that makes appends (and prepends) survive a power loss runs on a
background thread, started as soon as the previous one ends, so records written during one fsync
share the next (group commit) and the event loop never waits on the disk: a power loss can lose the
records of the last few milliseconds. `close` waits for the last fsync.

An append that fails (disk full, permissions changed) leaves no partial line behind: the segment is
cut back to its last whole record and the next append starts a new segment.

`check_spill_dir` is the start-up check of the directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from collections import deque
from typing import Any

from service.errors import ConfigError

log = logging.getLogger(__name__)

# Free space the spill directory needs at start (or spill_max_bytes, if smaller). Not the whole
# spill_max_bytes: the spill is empty most of the time, and 64 MiB already holds tens of thousands
# of events (an alert is about 1-4 KB, a summary a few KB), a long Redis outage's worth; a spill
# that fills the disk later is reported by readiness instead (App.degraded).
SPILL_MIN_FREE_BYTES = 64 << 20


SEGMENT_BYTES = 1 << 20
FIRST_SEGMENT = 1_000_000_000  # segments are numbered up from here; `prepend` numbers down
_PREFIX = "spill-"
_SUFFIX = ".jsonl"


def _segments(directory: str) -> list[int]:
    out = []
    for name in os.listdir(directory):
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
            try:
                out.append(int(name[len(_PREFIX):-len(_SUFFIX)]))
            except ValueError:
                continue
    return sorted(out)


def adopt_orphan_spills(spill_dir: str, workers: int) -> int:
    """A pod's worker i spills in {spill_dir}/worker-{i}. Spills left by workers this pod does not have (an
    earlier pod had more) are moved behind worker 1's own, in their order, so that they are sent too;
    returns how many segment files moved. Run before any worker starts."""
    first = os.path.join(spill_dir, "worker-1")
    moved = 0
    try:
        names = sorted(os.listdir(spill_dir))
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith("worker-") or not name[7:].isdigit() or int(name[7:]) <= workers:
            continue
        orphan = os.path.join(spill_dir, name)
        os.makedirs(first, exist_ok=True)
        for segment in _segments(orphan):
            taken = _segments(first)
            number = (taken[-1] + 1) if taken else FIRST_SEGMENT
            os.replace(os.path.join(orphan, f"{_PREFIX}{segment:010d}{_SUFFIX}"), os.path.join(first, f"{_PREFIX}{number:010d}{_SUFFIX}"))
            moved += 1
        if not os.listdir(orphan):
            os.rmdir(orphan)
    if moved:
        log.warning("%d spill segment(s) of workers this pod does not have were moved to worker 1's spill", moved)
    return moved


class SpillFull(Exception):
    """The spill holds its maximum number of bytes."""


def check_spill_dir(path: str, min_free_bytes: int, setting: str = "CALLPULSE_SPILL_DIR") -> None:
    """Make sure `path` is a directory the spill can use: it exists (or is created), is a directory,
    takes a file (created, fsynced and removed) and its file system has `min_free_bytes` free.

    Raises ConfigError naming `setting`, the path and what is wrong.
    """

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{setting}={path}: {what}")

    if os.path.lexists(path) and not os.path.isdir(path):
        raise bad("is a regular file, not a directory" if os.path.isfile(path) else "is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        blocker = _first_non_directory_ancestor(path)
        if blocker is not None:
            raise bad(f"cannot be created: {blocker} is not a directory") from None
        raise bad(f"cannot be created: {exc.strerror or exc}") from None
    probe = os.path.join(path, f".write-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.remove(probe)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise bad("the file system is full") from None
        raise bad(f"is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise bad(f"only {free // (1 << 20)} MiB free on its file system, at least {-(-min_free_bytes // (1 << 20))} MiB needed")


def _first_non_directory_ancestor(path: str) -> str | None:
    """The nearest existing ancestor of `path` when it is not a directory (why it cannot be created)."""
    current = os.path.abspath(path)
    while True:
        parent = os.path.dirname(current)
        if os.path.lexists(current):
            return None if os.path.isdir(current) else current
        if parent == current:
            return None
        current = parent


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
        # The syncer thread takes duplicates of the descriptors to fsync while holding _file_lock,
        # which the loop also holds while it replaces or closes the writer (never while it appends),
        # and fsyncs them after releasing it: it never fsyncs a closed or reused descriptor, and the
        # loop never waits for an fsync. _unsynced guards the counters and the file list.
        self._file_lock = threading.Lock()
        self._retired: list[int] = []  # duplicated descriptors of segments closed for appending, not fsynced yet
        self._unsynced = threading.Condition()
        self._appended = 0  # appends so far, and how many of them the syncer has fsynced
        self._synced = 0
        self._unsynced_files: list[str] = []  # files written by `prepend`, for the syncer to fsync
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
        return _segments(self.directory)

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"{_PREFIX}{segment:010d}{_SUFFIX}")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record at the end: in the operating system when this returns (a crash of the process
        cannot lose it), fsynced by the syncer thread right after. Raises SpillFull when it does not fit,
        and OSError when it cannot be written (nothing of it stays in the spill then)."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        if self._bytes + len(line) > self.max_bytes:
            raise SpillFull(f"disk spill full ({self._bytes} of {self.max_bytes} bytes)")
        if self._writer is None or self._writer.tell() >= self._segment_bytes:
            with self._file_lock:
                if self._writer is not None:
                    self._retire_writer()
                segment = self._next_segment
                self._writer = open(self._path(segment), "ab", buffering=0)
                self._next_segment += 1
                self._segments.append(segment)
        self._write_line(line)
        self._bytes += len(line)
        self._pending += 1
        self._note_unsynced()

    def _write_line(self, line: bytes) -> None:
        """Write all of `line` to the open segment, unbuffered; on failure cut the segment back to its last
        whole record and close it, so that the next append starts a new one."""
        assert self._writer is not None
        start = self._writer.tell()
        view = memoryview(line)
        try:
            while view:
                view = view[self._writer.write(view):]
        except OSError:
            with self._file_lock:
                try:
                    os.ftruncate(self._writer.fileno(), start)
                except OSError as exc:  # a half line at a segment's end is skipped when it is read
                    log.error("could not cut back a failed write to the disk spill: %s", exc)
                self._retire_writer()
            raise

    def _retire_writer(self) -> None:
        """Close the open segment for appending, leaving its fsync to the syncer (the caller holds _file_lock)."""
        assert self._writer is not None
        try:
            self._retired.append(os.dup(self._writer.fileno()))
        except OSError:
            self._fsync_writer()
        self._writer.close()
        self._writer = None

    def _note_unsynced(self, path: str | None = None) -> None:
        """Count one more write for the syncer (and a file of its own to fsync), starting it if needed."""
        with self._unsynced:
            self._appended += 1
            if path is not None:
                self._unsynced_files.append(path)
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
                files, self._unsynced_files = self._unsynced_files, []
            with self._file_lock:
                descriptors, self._retired = self._retired, []
                if self._writer is not None:
                    try:
                        descriptors.append(os.dup(self._writer.fileno()))
                    except OSError:
                        self._fsync_writer()
            for path in files:
                _fsync_path(path)
            for fd in descriptors:
                _fsync_and_close(fd)
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
        """Put records in front of everything on disk, in their order (what the publisher still holds in
        memory is older than what was spilled). Like `append`: in the operating system when this returns,
        fsynced by the syncer thread. Raises SpillFull or OSError, writing nothing, if they do not fit or
        cannot be written."""
        lines = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        if not lines:
            return
        if self._bytes + len(lines) > self.max_bytes:
            raise SpillFull(f"disk spill full ({self._bytes} of {self.max_bytes} bytes)")
        if self._reader is not None:
            self._drop_taken_front()
        segment = (self._segments[0] - 1) if self._segments else self._next_segment
        path = self._path(segment)
        try:
            with open(path, "wb", buffering=0) as fh:
                view = memoryview(lines)
                while view:
                    view = view[fh.write(view):]
        except OSError:
            try:
                os.remove(path)
            except OSError:
                pass
            raise
        if not self._segments:
            self._next_segment += 1
        self._segments.appendleft(segment)
        self._bytes += len(lines)
        self._pending += len(records)
        self._note_unsynced(path)

    def _drop_taken_front(self) -> None:
        """Rewrite the front segment without the records already taken from it (so that records put in
        front of it come before the untaken ones), and read it again from its start."""
        # Only reached when records are prepended while this spill is being read, which the publisher
        # does only at shutdown (while it reads the spill, new events go behind it): the inline fsync
        # does not hold up calls.
        assert self._reader is not None
        taken = self._reader.tell() - (len(self._head) if self._head is not None else 0)
        self._reader.close()
        self._reader = None
        self._head = None
        front = self._segments[0]
        path = self._path(front)
        with self._file_lock:
            if self._is_writing(front):  # its file is replaced below (fsynced): appends go to a new segment
                self._writer.close()
                self._writer = None
        with open(path, "rb") as fh:
            fh.seek(taken)
            rest = fh.read()
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(rest)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._bytes -= taken

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
        self._close_files(sync=False)  # what is removed needs no fsync
        with self._unsynced:
            self._unsynced_files.clear()
        while self._segments:
            self._remove(self._segments.popleft())
        self._bytes = 0

    def _close_files(self, sync: bool = True) -> None:
        with self._file_lock:
            with self._unsynced:
                target = self._appended
            descriptors, self._retired = self._retired, []
            for fd in descriptors:
                if sync:
                    _fsync_and_close(fd)
                else:
                    os.close(fd)
            if sync and self._synced < target:
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


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        log.error("could not fsync the disk spill: %s", exc)
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    """fsync a file by name (one the spill wrote and closed); a file already removed needs none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.error("could not open a disk spill file to fsync it: %s", exc)
        return
    _fsync_and_close(fd)
