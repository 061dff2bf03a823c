"""The disk spill: a bounded FIFO of records that keeps its order across segments, prepends, failed writes and restarts,
and the start-up check of its directory."""

import errno
import os
import re

import pytest

from service.errors import ConfigError
from service.spill import DiskSpill, SpillFull, check_spill_dir


def drain(spill):
    out = []
    while (record := spill.peek()) is not None:
        out.append(record["n"])
        spill.take()
    return out


def test_records_come_back_in_order_across_segments(tmp_path):
    """Records written over many small segments are read back in the order written, and the files go away."""
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20, segment_bytes=200)
    for n in range(50):
        spill.append({"n": n, "pad": "x" * 20})
    assert len(spill) == 50 and len(os.listdir(tmp_path)) > 5
    assert drain(spill) == list(range(50))
    assert len(spill) == 0 and spill.bytes == 0 and os.listdir(tmp_path) == []


def test_reading_and_writing_interleave(tmp_path):
    """Records appended while older ones are being taken keep their place behind them."""
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20, segment_bytes=100)
    out = []
    for n in range(30):
        spill.append({"n": n})
        if n % 3 == 2:
            out.append(spill.peek()["n"])
            spill.take()
    out += drain(spill)
    assert out == list(range(30))


def test_peek_without_take_returns_the_same_record(tmp_path):
    """peek is idempotent until take confirms the record."""
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20)
    spill.append({"n": 1})
    spill.append({"n": 2})
    assert spill.peek() == spill.peek() == {"n": 1}
    spill.take()
    assert spill.peek() == {"n": 2}


def test_a_full_spill_refuses_and_changes_nothing(tmp_path):
    """A record that does not fit raises SpillFull; what is already there is intact."""
    spill = DiskSpill(str(tmp_path), max_bytes=100)
    spill.append({"n": 0, "pad": "x" * 40})
    with pytest.raises(SpillFull):
        spill.append({"n": 1, "pad": "x" * 60})
    assert len(spill) == 1 and drain(spill) == [0]


def test_records_survive_a_restart_and_prepend_goes_first(tmp_path):
    """A new DiskSpill on the same directory finds the unsent records, with prepended ones (older) first."""
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20, segment_bytes=100)
    for n in range(10, 20):
        spill.append({"n": n})
    assert spill.peek()["n"] == 10
    spill.take()  # 10 is delivered
    assert spill.peek()["n"] == 11  # 11 is in flight, not confirmed
    spill.prepend([{"n": 5}, {"n": 6}])
    spill.close()
    again = DiskSpill(str(tmp_path), max_bytes=1 << 20, segment_bytes=100)
    assert len(again) == 11
    assert drain(again) == [5, 6] + list(range(11, 20))
    assert os.listdir(tmp_path) == []


def test_prepend_while_reading_the_segment_being_written_keeps_every_record(tmp_path):
    """Records put in front of a spill whose only segment is being read and written come first; the taken record does
    not come back, and records appended afterwards follow, in this process and after a restart."""
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20)
    for n in (10, 11, 12):
        spill.append({"n": n})
    assert spill.peek()["n"] == 10
    spill.take()
    assert spill.peek()["n"] == 11
    spill.prepend([{"n": 5}])
    spill.append({"n": 13})
    assert len(spill) == 4
    spill.close()
    assert drain(DiskSpill(str(tmp_path), max_bytes=1 << 20)) == [5, 11, 12, 13]
    again = DiskSpill(str(tmp_path), max_bytes=1 << 20)
    assert len(again) == 0


def test_appends_do_not_wait_for_the_disk_and_share_fsyncs(tmp_path, monkeypatch):
    """append returns while an fsync is still running; the appends made meanwhile are covered by one later fsync on the
    syncer thread, and close waits until everything is synced."""
    import threading

    import service.spill as spill_module

    gate = threading.Event()
    calls: list[tuple[int, bool]] = []  # (thread id, whether the gate was open when the fsync finished)
    real_fsync = os.fsync

    def slow_fsync(fd):
        opened = gate.wait(5)
        calls.append((threading.get_ident(), opened))
        real_fsync(fd)

    monkeypatch.setattr(spill_module.os, "fsync", slow_fsync)
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20)
    spill.append({"n": 0})
    for n in range(1, 4):  # the first fsync is held at the gate: these appends must not wait for it
        spill.append({"n": n})
    assert not gate.is_set() and not spill.wait_synced(timeout=0.05)
    gate.set()
    assert spill.wait_synced(timeout=5)
    assert calls and all(opened for _, opened in calls)  # no append ever waited out the 5 s gate
    assert len(calls) <= 2 and all(thread != threading.get_ident() for thread, _ in calls)
    spill.append({"n": 4})
    spill.close()
    assert spill.wait_synced(timeout=0)
    assert drain(DiskSpill(str(tmp_path), max_bytes=1 << 20)) == [0, 1, 2, 3, 4]


class FailingWrites:
    """Wraps a spill segment's file: the next write puts half of its bytes on disk, then fails as a full disk does."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.armed = True

    def write(self, data):
        if self.armed:
            self.armed = False
            self._raw.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._raw.write(data)

    def __getattr__(self, name):
        return getattr(self._raw, name)


def test_a_failed_append_leaves_no_partial_record_and_the_next_one_works(tmp_path):
    """An append that fails half-way raises OSError and leaves nothing of its record; later appends are read back whole,
    in this process and after a restart."""
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20)
    spill.append({"n": 0})
    spill._writer = FailingWrites(spill._writer)
    with pytest.raises(OSError, match="No space left"):
        spill.append({"n": 1, "pad": "x" * 100})
    spill.append({"n": 2})
    assert len(spill) == 2
    spill.close()
    assert drain(DiskSpill(str(tmp_path), max_bytes=1 << 20)) == [0, 2]


def test_prepend_and_new_segments_are_fsynced_off_the_calling_thread(tmp_path, monkeypatch):
    """Records put in front are in the file when prepend returns; their fsync, and that of segments filled up, runs on the
    syncer thread, never on the caller's."""
    import threading

    import service.spill as spill_module

    threads = []
    real_fsync = os.fsync
    monkeypatch.setattr(spill_module.os, "fsync", lambda fd: (threads.append(threading.get_ident()), real_fsync(fd)))
    spill = DiskSpill(str(tmp_path), max_bytes=1 << 20, segment_bytes=16)  # two records a segment
    for n in range(3, 8):
        spill.append({"n": n})
    spill.prepend([{"n": 1}, {"n": 2}])
    on_disk = [line for name in sorted(os.listdir(tmp_path)) for line in (tmp_path / name).read_text().splitlines()]
    assert on_disk == [f'{{"n":{n}}}' for n in range(1, 8)]
    assert spill.wait_synced(timeout=5)
    assert len(threads) >= 4 and threading.get_ident() not in threads  # the prepended file and three segments
    spill.close()
    assert drain(DiskSpill(str(tmp_path), max_bytes=1 << 20)) == list(range(1, 8))


def test_check_spill_dir_creates_a_missing_directory_and_leaves_it_empty(tmp_path):
    """A spill directory that does not exist yet is created; the write probe leaves nothing behind."""
    target = tmp_path / "a" / "spill"
    check_spill_dir(str(target), min_free_bytes=1)
    assert target.is_dir() and list(target.iterdir()) == []


@pytest.mark.parametrize("case,message", [
    ("file", "is a regular file, not a directory"),
    ("under-file", "cannot be created: {root}/file.txt is not a directory"),
])
def test_check_spill_dir_refuses_a_path_that_cannot_be_a_directory(tmp_path, case, message):
    """A regular file, or a path under one, is refused with ConfigError naming CALLPULSE_SPILL_DIR, the path and why."""
    (tmp_path / "file.txt").write_text("x")
    path = str(tmp_path / "file.txt") if case == "file" else str(tmp_path / "file.txt" / "sub")
    with pytest.raises(ConfigError) as caught:
        check_spill_dir(path, min_free_bytes=1)
    assert str(caught.value) == f"CALLPULSE_SPILL_DIR={path}: " + message.format(root=tmp_path)


def test_check_spill_dir_refuses_a_read_only_file_system(tmp_path):
    """A directory on a read-only mount is refused as not writable (skipped where the tests may not mount)."""
    import shutil
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only file system here (needs root)")
    try:
        with pytest.raises(ConfigError, match=f"^CALLPULSE_SPILL_DIR={re.escape(str(mount))}: is not writable: Read-only file system$"):
            check_spill_dir(str(mount), min_free_bytes=1)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_check_spill_dir_refuses_a_directory_that_takes_no_file(tmp_path, monkeypatch):
    """A directory where the probe file cannot be created is refused as not writable, wherever the tests run."""
    # The tests run as root, for whom chmod does not make a directory read-only, and a read-only mount needs
    # privileges a test machine may lack: here the probe's open fails as it does on a read-only file system.
    import service.spill as spill_module

    real_open = os.open

    def read_only(path, flags, *args):
        if os.path.basename(path).startswith(".write-probe"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(spill_module.os, "open", read_only)
    with pytest.raises(ConfigError, match=f"^CALLPULSE_SPILL_DIR={re.escape(str(tmp_path))}: is not writable: Read-only file system$"):
        check_spill_dir(str(tmp_path), min_free_bytes=1)


def test_check_spill_dir_refuses_a_file_system_without_room(tmp_path):
    """A directory on a file system with less free space than required is refused, saying how much there is."""
    with pytest.raises(ConfigError, match=rf"^CALLPULSE_SPILL_DIR={re.escape(str(tmp_path))}: only \d+ MiB free on its file system, "
                                          rf"at least \d+ MiB needed$"):
        check_spill_dir(str(tmp_path), min_free_bytes=1 << 60)


def test_serve_with_a_regular_file_as_spill_dir_exits_with_a_clear_error(tmp_path):
    """`python -m service serve` with CALLPULSE_SPILL_DIR naming a regular file exits non-zero with one error line
    naming the setting, and no traceback."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    spill = tmp_path / "spill.txt"
    spill.write_text("not a directory")
    env = dict(os.environ, CALLPULSE_SPILL_DIR=str(spill), CALLPULSE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
               CALLPULSE_MODEL=str(tmp_path / "no-model"), CALLPULSE_GRPC_PORT="0", CALLPULSE_WS_PORT="0",
               CALLPULSE_METRICS_PORT="-1")
    done = subprocess.run([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert f"error: CALLPULSE_SPILL_DIR={spill}: is a regular file, not a directory\n" in done.stderr
    assert "Traceback" not in done.stderr and "Errno 17" not in done.stderr


def test_spills_of_workers_a_pod_does_not_have_move_behind_worker_one(tmp_path):
    """A pod of one worker adopts the spills an earlier pod's workers 2 and 3 left: worker 1 reads its own records first,
    then theirs, each in its order, and nothing is left in the orphan directories."""
    from service.spill import adopt_orphan_spills

    for worker, numbers in ((1, range(0, 3)), (2, range(10, 14)), (3, range(20, 22))):
        spill = DiskSpill(str(tmp_path / f"worker-{worker}"), max_bytes=1 << 20, segment_bytes=40)
        for n in numbers:
            spill.append({"n": n, "pad": "x" * 10})
        spill.close()
    assert adopt_orphan_spills(str(tmp_path), workers=1) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-1"]
    assert drain(DiskSpill(str(tmp_path / "worker-1"), max_bytes=1 << 20)) == [0, 1, 2, 10, 11, 12, 13, 20, 21]
