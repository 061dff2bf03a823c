"""Cross-call micro-batching: one worker thread owns the model and batches windows from every call.

Windows wait in one bounded queue. When it is full, `submit` refuses the new window with QueueFull
(the caller decides: a live call drops it, a replay waits). The worker takes the first waiting
window, gathers more for at most `max_wait_ms` or until `max_batch` or `max_batch_audio_s`, and
hands them to the model in one call; each window's future gets its own result or error. A window
whose future was cancelled (its call went away, or a newer window of its channel replaced it) is
skipped; a window with a deadline that has passed when the worker reaches it fails with
StaleWindow instead of costing model time.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from service import metrics
from service.errors import ServiceUnavailable
from service.inference.base import EmotionModel, StreamSpan, WindowScores

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The inference queue is at its bound; the window was not accepted."""


class StaleWindow(Exception):
    """The window's deadline passed before the model could start on it."""


@dataclass
class _Item:
    audio: np.ndarray
    deadline: float | None = None
    span: StreamSpan | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()


class InferenceBatcher:
    """Feeds an EmotionModel from a bounded queue on a single worker thread."""

    def __init__(self, model: EmotionModel, max_batch: int = 32, max_wait_ms: float = 5.0, queue_size: int = 1024,
                 max_batch_audio_s: float = 120.0) -> None:
        self.model = model
        self._max_batch = max_batch
        self._max_batch_samples = int(max_batch_audio_s * 16000)
        self._max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.largest_batch = 0
        self.stale = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
            self._thread.start()

    def submit(self, audio: np.ndarray, deadline: float | None = None,
               span: StreamSpan | None = None) -> concurrent.futures.Future:
        """Queue one 16 kHz window; its future resolves to WindowScores. `deadline` (time.monotonic())
        is when it stops being worth scoring; `span` says where it lies in its channel. Raises QueueFull when at
        the bound."""
        if self._stopping:
            raise ServiceUnavailable("inference worker is stopping")
        item = _Item(audio, deadline, span)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise QueueFull(f"inference queue is full ({self._queue.maxsize} windows)") from None
        metrics.inference_queue_depth(self._queue.qsize())
        return item.future

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the windows already queued, then stop the worker."""
        self._stopping = True
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("inference worker did not stop within %.1fs", timeout)
        self._thread = None

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            samples = len(first.audio)
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self._max_batch and samples < self._max_batch_samples:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                samples += len(item.audio)
            self._process(batch)
        self._fail_remaining()

    def _process(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                continue
            if item.deadline is not None and started > item.deadline:
                self.stale += 1
                item.future.set_exception(StaleWindow(f"window waited {started - item.enqueued:.3f} s, past its deadline"))
                continue
            live.append(item)
        metrics.inference_queue_depth(self._queue.qsize())
        if not live:
            return
        for item in live:
            metrics.inference_queue_wait(started - item.enqueued)
        try:
            results: list[WindowScores | Exception] = self.model.score_spans([item.audio for item in live], [item.span for item in live])
            if len(results) != len(live):
                raise RuntimeError(f"model returned {len(results)} results for {len(live)} windows")
        except Exception as exc:  # noqa: BLE001 - the contract says per item; a broken model fails each item
            log.exception("emotion model failed a whole batch")
            results = [exc] * len(live)
        elapsed = time.monotonic() - started
        metrics.inference_batch(len(live), elapsed)
        self.largest_batch = max(self.largest_batch, len(live))
        for item, result in zip(live, results):
            if isinstance(result, Exception):
                metrics.error("inference_item")
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _fail_remaining(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(ServiceUnavailable("inference worker stopped"))
