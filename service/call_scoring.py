"""The model traffic of one call: cut windows to the scorer, load shedding, the engine's speech check, and each
window's outcome (scores, a skip, a drop) handed back to the session in the order the windows were cut.

Live calls shed load instead of falling behind: a channel keeps at most one window waiting for the model (a newer
window replaces it and, in incremental scoring, takes over its audio up to one window's worth), a window whose
deadline passes before the model reaches it is dropped, and every drop is counted and marks the next updates and
alerts `degraded`. A replay (and a call that is ending) keeps every window and waits for the model instead.

CallScoring knows no transport and no rule: it gives each window's outcome to the three callables of its session
(`evaluate`: the rules on a window, with or without scores; `answered`: what the speech check made of it; `emit`:
an event for the bridge).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from service import metrics
from service.analytics.frames import FrameTrack
from service.analytics.prosody import ProsodyFigures
from service.analytics.timeline import ChannelTimeline
from service.audio.channel import AnalysisWindow
from service.audio.resample import to_model_input
from service.config import WindowConfig
from service.domain import CallEvent, EmotionUpdate, Role, Warning
from service.inference.base import MODEL_SAMPLE_RATE, NotSpeech, Spoken, StreamSpan, WindowScores
from service.inference.batcher import QueueFull, StaleWindow
from service.inference.scoring import EngineUnavailable, ScoringClient

log = logging.getLogger(__name__)

Evaluate = Callable[..., None]
"""evaluate(window, scores: dict[str, float] | None, degraded: bool, heard: bool = True): the rules on one window."""
Answered = Callable[[AnalysisWindow, "bool | None"], None]
"""answered(window, speech): the speech check heard speech (True), not speech (False) or gave no answer (None)."""


@dataclass(frozen=True)
class _Skipped:
    """A scored speaker's window that is not sent to the model, queued behind the windows ahead of it (waiting to be
    sent or being scored) so that the rules see each speaker's windows in order."""

    window: AnalysisWindow
    outcome: str
    heard: bool = True


class CallScoring:
    """Sends one call's windows to the scorer and hands their outcomes back in window order (one task per call)."""

    def __init__(self, roles: tuple[Role, ...], streams: dict[Role, int], scorer: ScoringClient, windows: WindowConfig,
                 labels: tuple[str, ...], deadline_s: float, realtime: bool, *, evaluate: Evaluate, answered: Answered,
                 emit: Callable[[CallEvent], None]) -> None:
        self._scorer = scorer
        self._windows = windows
        self._labels = labels
        self._deadline_s = deadline_s
        self._realtime = realtime
        self._ending = False
        self._evaluate = evaluate
        self._answered = answered
        self._emit = emit
        self._streams = streams
        self._timelines = {role: ChannelTimeline(role) for role in roles}
        track_frames = (windows.window_ms + 2 * windows.hop_ms) // 20
        self._frames = {role: FrameTrack(track_frames) for role in roles}
        self._skipped = {role: 0 for role in roles}
        self._not_speech = {role: 0 for role in roles}  # skipped by the engine's speech check
        # Frame ranges of the new audio of recently skipped windows (enough to cover one window).
        self._unspoken: dict[Role, deque[tuple[int, int]]] = {
            role: deque(maxlen=windows.window_ms // windows.hop_ms + 2) for role in roles
        }
        self._pending: asyncio.Queue[tuple[AnalysisWindow, asyncio.Future] | _Skipped | None] = asyncio.Queue()
        self._ready: deque[AnalysisWindow | _Skipped] = deque()
        self._waiting: dict[Role, tuple[AnalysisWindow, concurrent.futures.Future]] = {}
        self._superseded: set[int] = set()
        self._merged: set[int] = set()
        self._in_flight = 0
        self._checks = 0  # unscored windows out to the engine's speech check (check)
        self._capacity = asyncio.Event()
        self._overloaded = False
        self._closed = False
        self._task: asyncio.Task | None = None

    # -- the session's side ----------------------------------------------------------------

    def start(self) -> None:
        """Start the call's scoring task (on the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="call-scorer")

    def enqueue(self, window: AnalysisWindow) -> None:
        """A scored window for the model, sent with `submit_ready`."""
        self._ready.append(window)

    def skip(self, window: AnalysisWindow, outcome: str, heard: bool = True) -> None:
        """A scored speaker's window that the model will not see (`outcome` its metric): it goes to the rules behind
        the windows cut before it, at once when none is waiting (`heard` False: without its prosody, as for a window
        that is mostly a tone or music)."""
        if self._ready or self._in_flight:
            self._ready.append(_Skipped(window, outcome, heard))
        else:
            self._skip(window, outcome, heard)

    @property
    def has_ready(self) -> bool:
        """Windows wait to be sent."""
        return bool(self._ready)

    def ending(self) -> None:
        """The call is ending: from now on nothing is shed, every window waits for the model."""
        self._ending = True

    async def wait_for_room(self, limit: int) -> bool:
        """Send what is ready and wait until every window is sent and fewer than `limit` windows and checks are out
        (a replay's flow control). Returns False, early, once the call is ending or closed."""
        while self._ready or self._in_flight + self._checks >= limit:
            if self._ending or self._closed:
                return False
            self._capacity.clear()
            self.submit_ready()
            if self._ready or self._in_flight + self._checks >= limit:
                try:  # woken by a finished window; the timeout retries a full inference queue
                    await asyncio.wait_for(self._capacity.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
        return True

    async def drain(self) -> None:
        """At the end of the call (after `ending`): send every window, wait for every outcome and, in a replay, every
        answer of the speech check."""
        while self._ready:
            self.submit_ready()
            if self._ready:
                await asyncio.sleep(0.005)
        self._pending.put_nowait(None)
        if self._task is not None:
            await self._task
        while self._checks and not self._realtime:  # a replay counts every answer of the speech check
            self._capacity.clear()
            try:
                await asyncio.wait_for(self._capacity.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        """The call is over: stop the task, cancel what waits for the model; later answers are ignored."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        while not self._pending.empty():
            item = self._pending.get_nowait()
            if isinstance(item, tuple):
                item[1].cancel()

    def timeline(self, role: Role) -> ChannelTimeline:
        """The speaker's scored updates (summary, trajectory, peaks)."""
        return self._timelines[role]

    def skipped_windows(self, role: Role) -> int:
        """The speaker's scored windows that were not sent to the model or found not to be speech."""
        return self._skipped[role]

    def not_speech_windows(self, role: Role) -> int:
        """The speaker's windows the engine's speech check found not to be speech."""
        return self._not_speech[role]

    def memory_report(self) -> dict[str, int]:
        """Sizes of the call's scoring buffers (all bounded)."""
        return {
            "ready_windows": len(self._ready),
            "pending_windows": self._in_flight,
            "timeline_updates": sum(len(t.recent) for t in self._timelines.values()),
            "trajectory_seconds": sum(t.trajectory_points for t in self._timelines.values()),
            "frame_track": sum(len(t) for t in self._frames.values()),
        }

    # -- sending ---------------------------------------------------------------------------

    def submit_ready(self) -> None:
        """Send cut windows to the model. Live: shed what does not fit. Replay (and call end): keep it for later."""
        live = self._realtime and not self._ending
        while self._ready:
            window = self._ready[0]
            if isinstance(window, _Skipped):  # costs the model nothing: it only keeps its place in the order
                self._ready.popleft()
                self._pending.put_nowait(window)
                continue
            timeline = self._timelines[window.role]
            if live:
                window = self._supersede(window)
            if self._in_flight >= self._windows.max_pending_windows:
                if not live:
                    return
                self._ready.popleft()
                self._drop(timeline, "dropped_call_backlog")
                self._answered(window, None)
                continue
            deadline = window.arrival + self._deadline_s if live else None
            try:
                span = StreamSpan(self._streams[window.role], window.encode_from_sample * MODEL_SAMPLE_RATE // window.sample_rate)
                future = self._scorer.submit(to_model_input(window.samples, window.sample_rate), deadline=deadline, span=span)
            except (QueueFull, EngineUnavailable) as refused:
                # A full queue keeps a replay's window for later; without an engine the window is dropped, live or not
                # (the call goes on without scores until the engine is back).
                full = isinstance(refused, QueueFull)
                if full and not live:
                    return
                self._ready.popleft()
                self._drop(timeline, "dropped_queue_full" if full else "dropped_engine_unavailable")
                self._answered(window, None)
                continue
            self._ready.popleft()
            self._waiting[window.role] = (window, future)
            self._in_flight += 1
            self._pending.put_nowait((window, asyncio.wrap_future(future)))

    def check(self, window: AnalysisWindow) -> None:
        """Send an unscored speaker's window to the engine's speech check only (never scored): its answer goes to
        `answered` as the answers on scored windows do. No answer (a full queue, no engine) is answered None."""
        span = StreamSpan(self._streams[window.role], window.encode_from_sample * MODEL_SAMPLE_RATE // window.sample_rate,
                          check_only=True)
        try:
            future = self._scorer.submit(to_model_input(window.samples, window.sample_rate),
                                         deadline=window.arrival + self._deadline_s if self._realtime else None, span=span)
        except (QueueFull, EngineUnavailable):
            self._answered(window, None)
            return
        self._checks += 1
        asyncio.wrap_future(future).add_done_callback(lambda done: self._checked(window, done))

    def _checked(self, window: AnalysisWindow, done: asyncio.Future) -> None:
        """The engine's speech check answered on an unscored window (on the event loop)."""
        self._checks -= 1
        self._capacity.set()
        if self._closed:
            return
        result = None if done.cancelled() or done.exception() is not None else done.result()
        if isinstance(result, NotSpeech):
            self._not_speech[window.role] += 1
            metrics.window("checked_not_speech")
        self._answered(window, False if isinstance(result, NotSpeech) else True if isinstance(result, Spoken) else None)

    def _supersede(self, window: AnalysisWindow) -> AnalysisWindow:
        """If this channel's previous window is still waiting for the model, replace it by `window`,
        which in incremental scoring also carries the replaced window's new audio (up to a window)."""
        waiting = self._waiting.get(window.role)
        if waiting is None or not waiting[1].cancel():
            return window
        old, _ = waiting
        self._superseded.add(id(old))
        if self._windows.scoring != "incremental" or old.segment_index != window.segment_index:
            return window
        if not old.encode_from_sample < window.encode_from_sample <= old.end_sample:
            return window
        limit = (self._windows.window_ms + self._windows.context_ms) * window.sample_rate // 1000
        samples = np.concatenate([old.samples[: window.encode_from_sample - old.encode_from_sample], window.samples])[-limit:]
        merged = dataclasses.replace(window, encode_from_sample=window.end_sample - len(samples), samples=samples)
        if merged.encode_from_sample <= old.new_from_sample:
            self._superseded.discard(id(old))
            self._merged.add(id(old))  # every new frame of the old window is in the merged one
        return merged

    def _drop(self, timeline: ChannelTimeline, outcome: str) -> None:
        timeline.dropped()
        metrics.window(outcome)
        if not self._overloaded:
            self._overloaded = True
            self._emit(Warning("WINDOWS_DROPPED", "the emotion model is behind; some analysis windows were skipped and "
                                                  "the next updates are marked degraded"))

    # -- outcomes, in window order ---------------------------------------------------------

    def _skip(self, window: AnalysisWindow, outcome: str, heard: bool = True) -> None:
        """A scored speaker's window that is not scored: its new audio counts as never encoded, and the rules see
        it without scores (and without prosody when it was not `heard` as speech: the speech check found none in it, or
        its audio is mostly a tone or music, whose level is no raised voice)."""
        self._skipped[window.role] += 1
        step = window.frame_samples
        self._unspoken[window.role].append((window.new_from_sample // step, window.end_sample // step))
        metrics.window(outcome)
        self._evaluate(window, None, degraded=False, heard=heard)

    def _not_speech_window(self, window: AnalysisWindow) -> None:
        """A window the engine's speech check found not to be speech (music the gate let through): skipped, the rules
        see no prosody for it, and the session hears the answer (its channel's not-speech latch)."""
        self._not_speech[window.role] += 1
        self._skip(window, "skipped_not_speech", heard=False)
        self._answered(window, False)

    async def _run(self) -> None:
        while True:
            item = await self._pending.get()
            if item is None:
                return
            if isinstance(item, _Skipped):
                self._skip(item.window, item.outcome, item.heard)
                continue
            window, future = item
            outcome = "failed"
            try:
                result: Any = await future
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    raise
                result = None  # only the window's future was cancelled: a newer window replaced it
                if id(window) in self._merged:
                    outcome = "merged"
                elif id(window) in self._superseded:
                    outcome = "dropped_superseded"
                self._superseded.discard(id(window))
                self._merged.discard(id(window))
            except StaleWindow:
                result = None
                outcome = "dropped_stale"
            except EngineUnavailable:
                result = None
                outcome = "dropped_engine_unavailable"
            except Exception as exc:  # noqa: BLE001 - one window's model error fails only that window
                log.warning("a %s window failed in the model: %s", window.role.value, exc)
                result = None
            finally:
                self._in_flight -= 1
                self._capacity.set()
            if isinstance(result, NotSpeech):
                self._not_speech_window(window)
                continue
            if result is None:
                if outcome == "failed":
                    self._timelines[window.role].failed()
                    metrics.window("failed")
                elif outcome == "merged":
                    self._timelines[window.role].merged()
                    metrics.window("merged")
                else:
                    self._drop(self._timelines[window.role], outcome)
                if outcome not in ("merged", "dropped_superseded"):  # a newer window carries the verdict otherwise
                    self._answered(window, None)
                continue
            self._answered(window, True)
            self._handle_scores(window, result)

    def _window_scores(self, window: AnalysisWindow, result: WindowScores) -> tuple[np.ndarray, bool]:
        """The window's scores and whether some of its audio was never scored (frames missing)."""
        if self._windows.scoring == "full":
            return result.scores, False
        step = window.frame_samples
        track = self._frames[window.role]
        track.add(window.segment_index, window.encode_from_sample // step, result.frame_logits)
        first, end = window.start_sample // step, window.end_sample // step
        scores, held = track.scores(first, end)
        if scores is None:
            return result.scores, True
        # The last 20 ms slot never has a frame yet; the new audio of skipped windows (no speech of the
        # speaker's own) was never encoded and is not missing either.
        expected = end - first - 1 - self._unspoken_frames(window.role, first, end - 1)
        return scores, held < expected

    def _unspoken_frames(self, role: Role, first: int, end: int) -> int:
        """How many frames of [first, end) lie in the new audio of this speaker's skipped windows."""
        covered = np.zeros(max(0, end - first), bool)
        for low, high in self._unspoken[role]:
            covered[max(low, first) - first:max(0, min(high, end) - first)] = True
        return int(np.count_nonzero(covered))

    def _handle_scores(self, window: AnalysisWindow, result: WindowScores) -> None:
        began = time.perf_counter()
        labels = self._labels
        timeline = self._timelines[window.role]
        window_scores, missing = self._window_scores(window, result)
        scores = [float(s) for s in window_scores]
        top = int(np.argmax(window_scores))
        degraded = timeline.dropped_since_update > 0 or missing
        prosody: ProsodyFigures = window.analytics.prosody
        latency_s = time.monotonic() - window.arrival
        update = EmotionUpdate(
            speaker=window.role,
            window_start_ms=window.start_ms,
            window_end_ms=window.end_ms,
            labels=labels,
            scores=tuple(scores),
            top_label=labels[top],
            top_score=scores[top],
            segment_final=window.final,
            degraded=degraded,
            latency_ms=latency_s * 1000,
            loudness_dbfs=prosody.loudness_dbfs,
            completed_ms=window.cut_sample * 1000 // window.sample_rate,
            loudness_over_baseline_db=prosody.loudness_over_baseline_db,
            pitch_hz=prosody.pitch_hz,
            pitch_range_st=prosody.pitch_range_st,
            speech_rate_spm=prosody.speech_rate_spm,
            speech_rate_cpm=prosody.speech_rate_cpm,
            embedding=result.embedding if self._windows.scoring == "full" else None,
        )
        timeline.add(update, new_from_ms=window.new_from_sample * 1000 // window.sample_rate)
        self._overloaded = False
        metrics.window("scored")
        metrics.emotion_update_latency(latency_s)
        self._emit(update)
        self._evaluate(window, dict(zip(labels, scores)), degraded)
        metrics.stage("score", time.perf_counter() - began)
