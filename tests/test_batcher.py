"""The inference worker: cross-call batching, per-item errors, the queue bound, cancellation."""

import numpy as np
import pytest

from service.errors import ServiceUnavailable
import time

from service.inference.batcher import InferenceBatcher, QueueFull, StaleWindow
from tests.fakes import POISON, FakeEmotionModel, one_hot


def audio(n=16000, first=0.0):
    a = np.zeros(n, np.float32)
    a[0] = first
    return a


def test_windows_submitted_together_share_a_batch():
    """Windows queued while the worker is busy are scored together in one model call."""
    model = FakeEmotionModel()
    model.gate.clear()  # hold the worker on its first batch
    batcher = InferenceBatcher(model, max_batch=16, max_wait_ms=5, queue_size=64)
    batcher.start()
    first = batcher.submit(audio())
    assert model.entered.wait(5)
    rest = [batcher.submit(audio()) for _ in range(10)]
    model.gate.set()
    for f in [first, *rest]:
        f.result(5)
    batcher.stop()
    assert model.batch_sizes[0] == 1 and max(model.batch_sizes) == 10


def test_each_future_gets_its_own_result():
    """Results are routed back to the window that asked, by position."""
    model = FakeEmotionModel(script=lambda a: one_hot("angry") if a[1] > 0 else one_hot("sad"))
    batcher = InferenceBatcher(model, max_batch=8, max_wait_ms=20)
    batcher.start()
    inputs = [np.array([0.0, 1.0 if i % 2 else 0.0] + [0.0] * 1000, np.float32) for i in range(8)]
    futures = [batcher.submit(a) for a in inputs]
    labels = [model.labels[int(np.argmax(f.result(5).scores))] for f in futures]
    batcher.stop()
    assert labels == ["sad", "angry"] * 4


def test_an_error_on_one_item_fails_only_that_item():
    """A window the model cannot score gets an exception; the rest of its batch succeeds."""
    model = FakeEmotionModel()
    model.gate.clear()
    batcher = InferenceBatcher(model, max_batch=8, max_wait_ms=20)
    batcher.start()
    futures = [batcher.submit(audio(first=POISON if i == 2 else 0.0)) for i in range(5)]
    model.gate.set()
    with pytest.raises(RuntimeError, match="poisoned"):
        futures[2].result(5)
    assert all(futures[i].result(5).scores.shape == (9,) for i in (0, 1, 3, 4))
    batcher.stop()


def test_a_model_that_raises_fails_each_item_and_keeps_serving():
    """If score_batch itself raises, every item of that batch fails and the worker keeps going."""

    class BrokenOnce(FakeEmotionModel):
        calls = 0

        def score_batch(self, windows):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("device lost")
            return super().score_batch(windows)

    batcher = InferenceBatcher(BrokenOnce(), max_batch=4, max_wait_ms=1)
    batcher.start()
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.submit(audio()).result(5)
    assert batcher.submit(audio()).result(5).scores.shape == (9,)
    batcher.stop()


def test_full_queue_refuses_new_windows():
    """At its bound the queue refuses a new window with QueueFull instead of growing."""
    model = FakeEmotionModel()
    model.gate.clear()
    batcher = InferenceBatcher(model, max_batch=1, max_wait_ms=0, queue_size=3)
    batcher.start()
    batcher.submit(audio())  # taken by the worker, which then blocks
    assert model.entered.wait(5)
    for _ in range(3):
        batcher.submit(audio())
    with pytest.raises(QueueFull):
        batcher.submit(audio())
    model.gate.set()
    batcher.stop()


def test_cancelled_windows_are_skipped():
    """A window whose call went away (future cancelled) is never sent to the model."""
    model = FakeEmotionModel()
    model.gate.clear()
    batcher = InferenceBatcher(model, max_batch=8, max_wait_ms=20)
    batcher.start()
    blocker = batcher.submit(audio())
    assert model.entered.wait(5)
    doomed = [batcher.submit(audio()) for _ in range(3)]
    kept = batcher.submit(audio())
    for f in doomed:
        assert f.cancel()
    model.gate.set()
    blocker.result(5)
    kept.result(5)
    batcher.stop()
    assert model.batch_sizes == [1, 1]


def test_stop_finishes_queued_work_then_refuses():
    """stop() scores what was queued, and later submissions are refused as unavailable."""
    batcher = InferenceBatcher(FakeEmotionModel(delay_s=0.01), max_batch=2, max_wait_ms=1)
    batcher.start()
    futures = [batcher.submit(audio()) for _ in range(6)]
    batcher.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(ServiceUnavailable):
        batcher.submit(audio())


def test_windows_past_their_deadline_are_dropped_unscored():
    """A window whose deadline passed while it waited fails with StaleWindow and costs no model time."""
    model = FakeEmotionModel()
    model.gate.clear()
    batcher = InferenceBatcher(model, max_batch=8, max_wait_ms=1)
    batcher.start()
    blocker = batcher.submit(audio())
    assert model.entered.wait(5)
    stale = batcher.submit(audio(), deadline=time.monotonic() + 0.05)
    fresh = batcher.submit(audio(), deadline=time.monotonic() + 60)
    time.sleep(0.1)
    model.gate.set()
    blocker.result(5)
    with pytest.raises(StaleWindow):
        stale.result(5)
    assert fresh.result(5).scores.shape == (9,)
    batcher.stop()
    assert model.batch_sizes == [1, 1] and batcher.stale == 1
