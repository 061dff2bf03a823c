"""The disk spill: a bounded FIFO of records that keeps its order across segments, prepends and restarts."""

import os

import pytest

from service.spill import DiskSpill, SpillFull


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
