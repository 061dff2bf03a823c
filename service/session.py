"""One call: decode -> reorder -> per-speaker VAD, prosody and windows -> inference -> rules -> alerts and events.

A CallSession never sees a transport. A transport adapter calls `start`, then `push_audio` (interleaved
chunks) or `push_track` (separate mono tracks) and `await flow_control()` after each, `skip_audio`
for audio that will never come, `touch` for other signs of life, then `finish` (or `abort` when the
bridge goes away, `fail` when its input was bad) and forwards what `events()` yields. The server
ends calls too (`shut_down`, `end_for_limit`, and the session's own idle watchdog): the call
finishes as at EndOfCall, later input is dropped, and the event stream ends with the reason right
after the summary. Audio is processed on the event loop a slice at a time (decoding and VAD as it
arrives, prosody and turn-taking on blocks of the decided frames in service/call_analytics.py; holes cost
nothing); scoring happens on the inference worker, and results are handled in window order by one task per call
(service/call_scoring.py). Each window carries what was measured over
it when it was cut (prosody, the conversation at that moment), so rule outcomes do not depend on how
fast the model answers; conversation rules run on the call clock (ticks of the turn-taking tracker).
Windows of speakers who are not scored skip the model and go to the rules with their prosody. The rules and the
alerts they raise are the call's CallRules (service/call_rules.py); its summary is built in service/call_summary.py.

Live calls (`realtime`) are paced: past a burst allowance they are read at most `pacing_factor` x
real time; when the model is behind they shed load instead of falling behind (service/call_scoring.py,
which holds the call's model traffic). Ingest never waits for the model. Replays are read as fast as the
model allows: reading waits for the model instead of dropping anything.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import numpy as np

from service import metrics
from service.alerts import EventSink
from service.analytics.conversation import ConversationSnapshot
from service.analytics.gate import BLOCK_FRAMES
from service.audio.channel import AnalysisWindow, ChannelPipeline
from service.audio.ingest import Notice, Silence
from service.audio.intake import CallIntake
from service.call_analytics import CallAnalytics
from service.call_rules import CallRules
from service.call_scoring import CallScoring
from service.call_summary import build_summary, lifecycle_document
from service.config import AnalyticsConfig, IngestConfig, VadConfig, WindowConfig
from service.domain import (
    CallConfig,
    CallEvent,
    CallSummary,
    EmotionUpdate,
    SessionStarted,
    TranscriptSegment,
    Warning,
)
from service.errors import CallLimitExceeded, CallPulseError, InvalidArgument, ServiceUnavailable
from service.inference.scoring import ScoringClient
from service.rules import RuleEngine

log = logging.getLogger(__name__)

_STREAM_IDS = itertools.count(1)
"""Each channel of each call in this process gets its own: the scorer's per-channel state (the speech check) is keyed by it."""

EVENT_BUFFER = 256
SHUTDOWN_MESSAGE = "the server is shutting down; the call was ended and its summary published (reconnect to go on)"
WARNING_INTERVAL_MS = 5000  # at most one warning of a kind per this much call time
SLICE_MS = 500  # audio worked through between yields to the event loop (a few ms of CPU)
# A replay whose model checks for speech waits for every answer each this much of its audio and applies them there
# (ChannelSounds.apply): the same frames in every run, and several windows of a call scored at once; after every
# push instead while a channel is unsettled (may be playing music), as a live call takes each answer when it comes.
REPLAY_SYNC_MS = 2000
# A call's ingest metrics (audio ingested, time per push) are updated after this much audio or this many
# pushes, whichever comes first, and at its end.
METRICS_EVERY_MS = 1000
METRICS_EVERY_PUSHES = 50


@dataclass(frozen=True)
class SessionContext:
    """What every session shares: configuration and the service-wide components."""

    vad: VadConfig
    windows: WindowConfig
    ingest: IngestConfig
    scorer: ScoringClient
    """Scores windows: the model in this process, or the pod's engine."""
    rules: Callable[[], RuleEngine]
    """Returns the current rule engine (rules may be replaced while calls run)."""
    publisher: EventSink
    model_name: str
    labels: tuple[str, ...]
    deadline_s: float = 1.0
    """A live window not started by the model this long after its audio arrived is dropped."""
    analytics: AnalyticsConfig = AnalyticsConfig()
    """Prosody, turn-taking and summary settings."""
    on_summary: Callable[[dict], None] | None = None
    """Called with every call summary document (writes the QA report when configured); must not block."""
    speech_check: bool = False
    """The scorer's model checks each window for speech (service/inference/speech.py). A replay then waits for every
    answer at each REPLAY_SYNC_MS of its audio and lets them take effect there, so that a not-speech latch
    (SteadyGate.hear) falls on the same frames in every run; a live call takes each answer when it comes."""


class EventBuffer:
    """Bounded outbound events of one call.

    Policy when full: a new EmotionUpdate is dropped; any other event evicts the oldest queued
    EmotionUpdate (alerts and summaries also reach Redis, updates are superseded by the next one).
    Every drop is counted. The final summary is always accepted.
    """

    def __init__(self, maxsize: int = EVENT_BUFFER) -> None:
        self._items: deque[CallEvent] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: CallEvent, final: bool = False) -> None:
        if self._closed:
            return
        if len(self._items) >= self._maxsize and not final:
            if isinstance(event, EmotionUpdate):
                metrics.event_dropped("emotion_update")
                return
            victim = next((e for e in self._items if isinstance(e, EmotionUpdate)), None)
            if victim is None:
                metrics.event_dropped(type(event).__name__.lower())
                log.error("event buffer full of non-update events; a %s was not sent to the bridge", type(event).__name__)
                return
            self._items.remove(victim)
            metrics.event_dropped("emotion_update")
        self._items.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._closed = True
        self._wakeup.set()

    async def __aiter__(self) -> AsyncIterator[CallEvent]:
        while True:
            if self._items:
                yield self._items.popleft()
                continue
            if self._error is not None:
                raise self._error
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()


class CallSession:
    """The state and processing of one call."""

    def __init__(self, config: CallConfig, ctx: SessionContext) -> None:
        self.config = config
        self._ctx = ctx
        fmt = config.audio
        self._pipelines = [
            ChannelPipeline(role, fmt.sample_rate, ctx.vad, ctx.windows, scored=role in config.score_roles, keep_frames=True)
            for role in fmt.channel_roles
        ]
        self._events = EventBuffer()
        self._rules = CallRules(config, ctx.rules, ctx.publisher, ctx.model_name, self._events.put)
        self._scoring = CallScoring(
            fmt.channel_roles, {role: next(_STREAM_IDS) for role in fmt.channel_roles}, ctx.scorer, ctx.windows, ctx.labels,
            ctx.deadline_s, config.realtime, evaluate=self._rules.evaluate, answered=self._answered, emit=self._events.put,
        )
        analytics, frame_ms = ctx.analytics, ctx.vad.frame_ms
        self._analytics = CallAnalytics(fmt.channel_roles, fmt.sample_rate, frame_ms, ctx.windows, analytics)
        self._sounds = self._analytics.sounds
        self._channel_of = {role: index for index, role in enumerate(fmt.channel_roles)}
        self._frame_samples = self._analytics.frame_samples
        # Scored windows of a channel whose gate is still deciding whether what it hears is steady sound wait
        # here (in order) until it has decided; at most a few blocks of 80 ms.
        self._deferred: list[deque[AnalysisWindow]] = [deque() for _ in fmt.channel_roles]
        self._segments_seen = [0] * len(self._pipelines)
        # Added to their metrics about once a second of audio (_report_ingested): audio frames ingested, and
        # how long each push took.
        self._unreported_frames = 0
        self._ingest_seconds: list[float] = []
        self._analyse_at = 1  # frames held before prosody and turn-taking run (see _plan_analysis)
        self._report_every = METRICS_EVERY_MS * fmt.sample_rate // 1000
        self._intake = CallIntake(fmt, ctx.ingest)
        self._slice = SLICE_MS * fmt.sample_rate // 1000
        # A live call works through its audio once this many frames have queued (IngestConfig.work_block_ms).
        self._work_block = ctx.ingest.work_block_ms * fmt.sample_rate // 1000 if config.realtime else 0
        self._rate = fmt.sample_rate
        self._max_duration_s = ctx.ingest.max_call_duration_s
        self._sync_every = REPLAY_SYNC_MS * fmt.sample_rate // 1000
        self._sync_at = self._sync_every  # call position (samples) of a replay's next sync (flow_control)
        # Unscored channels whose windows the engine's speech check may hear (only while the gate suspects music).
        self._checked_channels = [index for index, p in enumerate(self._pipelines) if not p.scored] \
            if ctx.speech_check and self._sounds and analytics.check_unscored != "none" else []
        self._check_all = analytics.check_unscored == "all"
        for index in self._checked_channels:
            self._pipelines[index].carry_audio = self._check_all
        self._warned_at: dict[str, int] = {}
        self._audio_frames = 0  # call position (received audio plus holes)
        self._first_audio_at: float | None = None
        self._pacing_warned = False
        self.stats = {"gaps": 0, "gap_frames": 0, "duplicates": 0, "late": 0, "pacing_delays": 0}
        self._state = "new"  # new -> open -> ending (finish runs) -> closed
        self._watchdog: asyncio.Task | None = None
        self._finishing: asyncio.Future | None = None
        self._ended_by_server = False  # a shutdown or a limit ends the call: later input is ignored, not refused
        self._ignored_input = 0
        self.started_at = time.monotonic()
        self._last_input = self.started_at

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> SessionStarted:
        """Begin processing; returns the SessionStarted event (also queued for `events()`)."""
        self._state = "open"
        self._scoring.start()
        self._watchdog = asyncio.create_task(self._watch_idle(), name="call-watchdog")
        started = SessionStarted(
            call_id=self.config.call_id,
            model=self._ctx.model_name,
            labels=self._ctx.labels,
            scored_roles=self.config.score_roles,
            window_ms=self._ctx.windows.window_ms,
            hop_ms=self._ctx.windows.hop_ms,
        )
        self._events.put(started)
        self._ctx.publisher.publish_call_event(self._lifecycle_document("call_started"))
        return started

    def events(self) -> AsyncIterator[CallEvent]:
        """Events for the bridge, ending after the CallSummary (or raising the error passed to `fail`)."""
        return self._events.__aiter__()

    # -- input -----------------------------------------------------------------------------
    # Each push decodes and orders its chunk, then, once a live call has `_work_block` frames queued (a replay: at
    # once), works through at most SLICE_MS of audio; what is left (a large chunk, chunks released behind a filled
    # hole) is worked through in `flow_control`, a slice at a time with the event loop free between slices, so no
    # message holds it for long. What is queued is worked through at the end of the call, and before a skip.

    def push_audio(self, seq: int, data: bytes, arrival: float | None = None) -> None:
        """Ingest one interleaved chunk. Raises InvalidArgument (and changes nothing) if the chunk is bad,
        CallLimitExceeded once the call is longer than allowed."""
        began = time.perf_counter()
        if not self._accepts(f"audio chunk seq={seq}"):
            return
        arrival = time.monotonic() if arrival is None else arrival
        notices = self._intake.interleaved(seq, data, arrival)
        if notices:
            self._report_all(notices)
        self._took(arrival, began)

    def push_track(self, track: int, seq: int, data: bytes, arrival: float | None = None, start_ms: int | None = None) -> None:
        """Ingest one chunk of one mono track (track i is channel i). `start_ms`, when the bridge gives
        it, places the chunk on the call's timeline; otherwise chunks follow each other."""
        began = time.perf_counter()
        if not self._accepts(f"audio chunk seq={seq}"):
            return
        arrival = time.monotonic() if arrival is None else arrival
        self._report_all(self._intake.track(track, seq, data, arrival, start_ms))
        self._took(arrival, began)

    def _took(self, arrival: float, began: float) -> None:
        """A chunk was queued (at `began`, perf_counter): the bridge is there; work through a slice of the input and count
        the push in the ingest metrics."""
        self._last_input = arrival
        if self._first_audio_at is None:
            self._first_audio_at = arrival
        if self._due():
            self._work(self._slice)
        self._ingest_seconds.append(time.perf_counter() - began)
        if len(self._ingest_seconds) >= METRICS_EVERY_PUSHES or self._unreported_frames >= self._report_every:
            self._report_ingested()

    def skip_audio(self, duration_ms: int, arrival: float | None = None) -> None:
        """Advance the call clock over audio that will never arrive (a pause whose audio was discarded):
        open speech ends there, nothing is synthesised. Refused beyond `max_gap_s`.

        For interleaved audio; separate tracks place their chunks by timestamp instead."""
        if not self._accepts("audio was skipped"):
            return
        arrival = time.monotonic() if arrival is None else arrival
        self._last_input = arrival
        if self._intake.skip(duration_ms, arrival):
            self._work(self._slice)

    def push_transcript(self, segment: TranscriptSegment) -> bool:
        """Count one final transcript segment towards its speaker's speech rate in characters per minute.
        A segment for a speaker the call has no channel for is refused with a TRANSCRIPT_REJECTED warning
        and changes nothing; returns whether it was counted."""
        if not self._accepts("a transcript segment was sent"):
            return False
        self._last_input = time.monotonic()
        if not self._analytics.has_speaker(segment.speaker):
            roles = ", ".join(r.value for r in self.config.audio.channel_roles)
            self.transcript_rejected(f"transcript.speaker: {segment.speaker.value} has no audio channel in this call ({roles})")
            return False
        self._analytics.add_transcript(segment)
        metrics.transcript_segment("counted")
        return True

    def transcript_rejected(self, reason: str) -> None:
        """A transcript segment could not be used (`reason` names the field, never the text): the bridge gets
        a TRANSCRIPT_REJECTED warning, the call goes on without it."""
        metrics.transcript_segment("rejected")
        self._warn("TRANSCRIPT_REJECTED", f"transcript segment ignored: {reason}")

    def touch(self) -> None:
        """The bridge sent something that is not audio (a keep-alive, a mark): it is still there."""
        self._last_input = time.monotonic()

    def _accepts(self, what: str) -> bool:
        """Whether input is taken now: True while the call is open; False (the input is dropped and
        counted) once the server has begun ending it (shutdown, a limit); InvalidArgument once the
        bridge itself ended it."""
        if self._state == "open" and self._finishing is None:
            return True
        if self._ended_by_server:
            self._ignored_input += 1
            metrics.chunk_dropped("call_ending")
            return False
        raise InvalidArgument(f"{what} after the end of the call")

    async def flow_control(self) -> None:
        """Await this after each push: works through the rest of a large message a slice at a time, paces a
        live call, and makes a replay wait for the model."""
        while self._due() and self._state == "open" and self._finishing is None:
            await asyncio.sleep(0)  # let other calls run between slices
            self._work(self._slice)
        if self.config.realtime:
            delay = self._pacing_delay()
            if delay > 0:
                await asyncio.sleep(delay)
            return
        sync = self._sounds is not None and self._ctx.speech_check and (self._audio_frames >= self._sync_at or self._sounds.unsettled)
        limit = 1 if sync else self._ctx.windows.max_pending_windows  # at a sync: until every window is answered
        if not await self._scoring.wait_for_room(limit):
            return
        if sync:
            assert self._sounds is not None
            self._analytics.apply_answers()
            self._sync_at = self._audio_frames + self._sync_every

    def _due(self) -> bool:
        """Whether queued input is to be worked through now (a live call: once a block of it has queued)."""
        return self._intake.queued_samples >= self._work_block if self._work_block else bool(self._intake)

    def _work(self, budget: int) -> None:
        """Work through queued input: at most `budget` frames of samples (holes cost nothing)."""
        take = self._intake.take
        while budget > 0:
            item = take(budget)
            if item is None:
                break
            block, arrival = item
            if type(block) is Silence:
                self._step_over(block.frames, arrival)
            else:
                self._process(block, arrival)
                budget -= len(block)
        if self._scoring.has_ready:
            self._scoring.submit_ready()
        limit_s = self._max_duration_s
        if self._audio_frames / self._rate > limit_s:
            raise CallLimitExceeded(f"the call passed its maximum duration of {limit_s:g} s", reason="max_duration")

    def _process(self, frames: np.ndarray, arrival: float) -> None:
        """VAD and windows over the next samples of every channel; prosody and turn-taking once the decided
        frames are needed (HELD_FRAMES_MAX, `_plan_analysis`)."""
        self._audio_frames += len(frames)
        self._unreported_frames += len(frames)
        cut: list[AnalysisWindow] = []
        for index, pipeline in enumerate(self._pipelines):
            windows = pipeline.push(frames[:, index], arrival)
            if windows:
                cut.extend(windows)
            if pipeline.segments != self._segments_seen[index]:
                self._count_segments(index)
        ticks = None
        held = self._pipelines[0].kept_frames  # every channel has decided the same frames
        if held and (cut or held >= self._analyse_at):
            ticks = self._analyse_held()
        if cut:
            self._take_windows(cut)
        if self._sounds:
            self._release_deferred()
            if any(self._deferred):  # a window cut just now waits: feed the gate a block at a time from here
                self._analyse_at = min(self._analyse_at, BLOCK_FRAMES)
        if ticks:
            self._rules.on_ticks(ticks, arrival)

    def _plan_analysis(self) -> None:
        """After an analysis: how many decided frames may be held before the next one (CallAnalytics.hold_limit)."""
        self._analyse_at = self._analytics.hold_limit(any(self._deferred), self._ctx.rules().needs_ticks)

    def _step_over(self, samples: int, arrival: float) -> None:
        """A stretch with no audio: open segments end, the clocks advance; no sample is made."""
        self._rules.on_ticks(self._analyse_held(), arrival)
        cut: list[AnalysisWindow] = []
        for index, pipeline in enumerate(self._pipelines):
            cut.extend(pipeline.skip(samples, arrival))
            self._count_segments(index)
        frames = samples // self._frame_samples
        self._analytics.skip_tracks(frames)
        self._take_windows(cut)
        if self._sounds:
            self._release_deferred(final=True)  # nothing carries across a stretch with no audio
        self._rules.on_ticks(self._analytics.skip_conversation(frames), arrival)
        self._plan_analysis()
        self._audio_frames += samples

    def _analyse_held(self) -> list[ConversationSnapshot]:
        """Prosody and turn-taking for the frames the VAD decided that were not analysed yet (the channels
        kept the same frames)."""
        held = self._pipelines[0].kept_frames
        if not held:
            return []
        blocks, flags = zip(*(pipeline.take_frames() for pipeline in self._pipelines))
        vad = np.frombuffer(b"".join(flags), dtype=np.bool_).reshape(len(blocks), held).T
        ticks = self._analyse_frames(list(blocks), vad)
        self._plan_analysis()
        return ticks

    def _analyse_frames(self, blocks: list[np.ndarray], vad: np.ndarray) -> list[ConversationSnapshot]:
        """Prosody and turn-taking for the next whole VAD frames of every channel (CallAnalytics.analyse); an unscored
        channel carries its audio for the speech check while its gate suspects music."""
        ticks = self._analytics.analyse(blocks, vad)
        if self._checked_channels:
            assert self._sounds is not None
            for index in self._checked_channels:
                self._pipelines[index].carry_audio = self._check_all or self._sounds.suspect(index)
        return ticks

    def _report_ingested(self) -> None:
        """Add the audio ingested and the time each push took since the last report to their metrics."""
        rate = self.config.audio.sample_rate
        if self._unreported_frames:
            for pipeline in self._pipelines:
                metrics.audio_ingested(pipeline.role.value, self._unreported_frames / rate)
            self._unreported_frames = 0
        if self._ingest_seconds:
            metrics.stage_times("ingest", self._ingest_seconds)
            self._ingest_seconds.clear()

    def _report_all(self, notices: list[Notice]) -> None:
        for notice in notices:
            self._report(notice)

    def _report(self, notice: Notice) -> None:
        rate = self.config.audio.sample_rate
        if notice.kind == "gap":
            self.stats["gaps"] += 1
            self.stats["gap_frames"] += notice.frames
            metrics.audio_gap(notice.frames / rate)
            self._warn("AUDIO_GAP", f"{notice.chunks} chunk(s) ({notice.frames * 1000 // rate} ms) missing before seq={notice.seq}"
                       f"{' on track ' + str(notice.track) if notice.track else ''}; filled with silence")
        else:
            self.stats["duplicates" if notice.kind == "duplicate" else "late"] += 1
            metrics.chunk_dropped(notice.kind)
            self._warn("CHUNK_DROPPED", f"chunk seq={notice.seq} dropped ({notice.kind})")

    def _warn(self, code: str, message: str) -> None:
        now_ms = self._audio_frames * 1000 // self.config.audio.sample_rate
        last = self._warned_at.get(code)
        if last is not None and now_ms - last < WARNING_INTERVAL_MS:
            return
        self._warned_at[code] = now_ms
        self._events.put(Warning(code, message))

    def _pacing_delay(self) -> float:
        """How long to wait before reading on: only audio that arrived counts (a hole is no reason to wait)."""
        if self._first_audio_at is None:
            return 0.0
        ingest = self._ctx.ingest
        received_ms = self._intake.received_frames * 1000 / self.config.audio.sample_rate
        allowed_ms = ingest.pacing_burst_ms + ingest.pacing_factor * (time.monotonic() - self._first_audio_at) * 1000
        excess_ms = received_ms - allowed_ms
        if excess_ms <= 0:
            return 0.0
        self.stats["pacing_delays"] += 1
        metrics.pacing_delay()
        if not self._pacing_warned:
            self._pacing_warned = True
            self._events.put(Warning(
                "TOO_FAST",
                f"audio arrives faster than {ingest.pacing_factor:g}x real time; reading is now limited to that rate "
                "(declare realtime=false for a replay)",
            ))
        return excess_ms / 1000 / ingest.pacing_factor

    async def _watch_idle(self) -> None:
        """One timer per call: ends it (with its summary) when the bridge has sent nothing for idle_timeout_s."""
        idle_s = self._ctx.ingest.idle_timeout_s
        while self._state == "open" and self._finishing is None:
            wait = self._last_input + idle_s - time.monotonic()
            if wait <= 0:
                self._watchdog = None  # it ends the call itself: nothing to cancel at the end
                await self.end_for_limit(CallLimitExceeded(f"no message for {idle_s:g} s (idle timeout)", reason="idle_timeout"))
                return
            await asyncio.sleep(wait)

    # -- ending ----------------------------------------------------------------------------

    async def finish(self, reason: str = "end_of_call") -> CallSummary:
        """End of call: work through what was received, close open segments, wait for their scores, emit
        and publish the summary. The work runs to its end even if the caller is cancelled (a bridge that
        hangs up after EndOfCall still gets its summary published); while the server is ending the
        call, a later EndOfCall waits for the same summary."""
        if self._finishing is None:
            if self._state != "open":
                raise InvalidArgument("EndOfCall was already received")
            self._finishing = asyncio.ensure_future(self._finish(reason, None))
        elif not self._ended_by_server:
            raise InvalidArgument("EndOfCall was already received")
        return await asyncio.shield(self._finishing)

    async def _end_by_server(self, reason: str, error: CallPulseError) -> None:
        """The server ends the call (shutdown, a limit): input from now on is dropped, the call finishes as
        at EndOfCall, and its event stream ends with `error` right after the summary. A call already
        finishing just finishes."""
        self._ended_by_server = True
        if self._finishing is None and self._state == "open":
            self._finishing = asyncio.ensure_future(self._finish(reason, error))
        if self._finishing is not None:
            await asyncio.shield(self._finishing)

    async def _finish(self, reason: str, error: CallPulseError | None) -> CallSummary:
        arrival = time.monotonic()
        self._report_all(self._intake.flush(arrival))
        try:
            while self._intake:
                self._work(self._slice)
                await asyncio.sleep(0)
        except CallLimitExceeded:
            pass  # the call is ending anyway
        self._rules.on_ticks(self._analyse_held(), arrival)
        self._report_ingested()
        self._state = "ending"
        self._scoring.ending()
        for index, pipeline in enumerate(self._pipelines):
            self._take_windows(pipeline.flush(arrival))
            self._count_segments(index)
        if self._sounds:
            self._release_deferred(final=True)
        await self._scoring.drain()
        self._analytics.apply_answers()  # a replay's last answers (a live call took each as it came)
        summary = self._summary(reason)
        self._ctx.publisher.publish_call_event(summary.document)
        if self._ctx.on_summary is not None:
            self._ctx.on_summary(summary.document)
        self._events.put(summary, final=True)
        if error is None:
            self._events.close()
        else:
            self._events.fail(error)
        self._state = "closed"
        self._scoring.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        return summary

    @property
    def finishing(self) -> asyncio.Future | None:
        """The end-of-call work while it runs (or after it ran); None before."""
        return self._finishing

    def abort(self, reason: str) -> None:
        """The bridge went away or the call was refused mid-stream: drop pending work, free everything.
        A call already being finished is left to finish (its summary is still published)."""
        if self._state == "closed" or self._finishing is not None:
            self._events.close()
            return
        self._state = "closed"
        self._report_ingested()
        self._scoring.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._events.close()
        self._ctx.publisher.publish_call_event(self._lifecycle_document("call_ended", reason=reason))

    def fail(self, error: CallPulseError) -> None:
        """Bad input from the bridge: make `events()` raise `error` (after what is queued) so the transport can report it."""
        self._events.fail(error)

    async def shut_down(self) -> None:
        """The server is stopping: end the call as at EndOfCall (input from now on is dropped, open segments
        scored, summary published and sent), then end the bridge's event stream with UNAVAILABLE so that
        it reconnects elsewhere. A call the bridge was already ending just finishes."""
        await self._end_by_server("server_shutdown", ServiceUnavailable(SHUTDOWN_MESSAGE))

    async def end_for_limit(self, error: CallLimitExceeded) -> None:
        """A time limit ended the call: finish it (the summary says why), then report the error to the bridge."""
        await self._end_by_server(error.reason, error)

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    def memory_report(self) -> dict[str, int]:
        """Sizes of this call's buffers (all bounded regardless of call length)."""
        return {
            "channel_samples": sum(p.buffered_samples for p in self._pipelines),
            "reorder_chunks": self._intake.waiting_chunks,
            "track_frames": self._intake.track_frames,
            "queued_samples": self._intake.queued_samples,
            **self._scoring.memory_report(),
            "queued_events": len(self._events),
            "summary_alerts": len(self._rules.alerts),
        }

    # -- analytics and rules ---------------------------------------------------------------

    def _take_windows(self, windows: list[AnalysisWindow]) -> None:
        """Attach what was measured over each newly cut window; scored ones wait for the model,
        the others go to the rules at once."""
        if not windows:
            return
        for window in self._analytics.measure(windows):
            if not window.scored:
                music = self._music_level(window)
                # Mostly a tone or music: the rules see no prosody of it (as of a scored window skipped as steady sound).
                steady = music or (self._sounds is not None and self._sounds.mostly_steady(*self._new_frames(window)))
                self._rules.evaluate(window, None, degraded=False, heard=not steady)
                # Its channel may be playing music (carry_audio); the windows cut as the call ends are not checked:
                # no audio is left for an answer to change.
                if len(window.samples) and self._state == "open":
                    if music:
                        self._answer_music(window)  # the level test answers for the check
                    else:
                        self._scoring.check(window)
                continue
            index = self._channel_of[window.role]
            if self._sounds and (self._deferred[index] or self._sounds.deciding(*self._new_frames(window))):
                self._deferred[index].append(window)
            else:
                self._route(window)

    def _route(self, window: AnalysisWindow) -> None:
        """A scored window to the model, or to the rules alone when it holds no speech of the speaker's own."""
        sounds = self._sounds
        index, first, end = self._new_frames(window)
        # Mostly a tone or music the gate held; or, on a channel where music was just playing, audio whose level holds
        # still (loudness-compressed music the gate cannot hold and a speech check may take for speech).
        flat = self._music_level(window)
        steady = sounds is not None and (sounds.mostly_steady(index, first, end) or flat)
        if flat:
            self._answer_music(window)
        # A window whose speech the check's latch took out still goes to the check, which is what can release it.
        latched = sounds is not None and sounds.latched(index, first, end)
        if (window.analytics.prosody.voiced_ms == 0 and not latched) or steady:
            # The VAD cut it, but none of it is this speaker's own speech (the other side leaking
            # in, or near silence), or its new audio is mostly a tone or music: the model would score
            # someone else's voice or no voice at all.
            self._scoring.skip(window, "skipped_steady_sound" if steady else "skipped_no_speech", heard=not steady)
        else:
            self._scoring.enqueue(window)

    def _music_level(self, window: AnalysisWindow) -> bool:
        """On a channel suspect of music, the window's level held still (CallAnalytics.level_steady): music."""
        return self._sounds is not None and self._sounds.suspect(self._channel_of[window.role]) and self._analytics.level_steady(window)

    def _answer_music(self, window: AnalysisWindow) -> None:
        """The level test found a window to be music: with the engine's speech check on, that is a not-speech answer to
        the channel's latch, as the check's own would be (its answers are applied where the check's are)."""
        if self._ctx.speech_check:
            self._answered(window, False)

    def _new_frames(self, window: AnalysisWindow) -> tuple[int, int, int]:
        """(channel, first frame, end frame) of the window's new audio."""
        step = window.frame_samples
        return self._channel_of[window.role], window.new_from_sample // step, window.end_sample // step

    def _answered(self, window: AnalysisWindow, speech: bool | None) -> None:
        """What the engine's speech check made of a window (None: no answer, the window dropped or failed and not
        replaced by a newer one) goes to its channel's not-speech latch (ChannelSounds): a live call applies it at once,
        a replay at its next sync point (flow_control)."""
        if not self._sounds:
            return
        if speech is False:
            self._sounds.not_speech(*self._new_frames(window), window.analytics.prosody.loudness_dbfs)
        else:
            self._sounds.heard(self._channel_of[window.role], answered=speech is True, first=self._new_frames(window)[1])
        if self.config.realtime:
            self._analytics.apply_answers()

    def _release_deferred(self, final: bool = False) -> None:
        """Route the deferred windows of every channel whose gate has decided (all of them when `final`)."""
        assert self._sounds is not None
        for deferred in self._deferred:
            while deferred and (final or not self._sounds.deciding(*self._new_frames(deferred[0]))):
                self._route(deferred.popleft())

    # -- VAD segments ----------------------------------------------------------------------

    def _count_segments(self, index: int) -> None:
        pipeline = self._pipelines[index]
        for _ in range(pipeline.segments - self._segments_seen[index]):
            metrics.vad_segment(pipeline.role.value)
        self._segments_seen[index] = pipeline.segments

    # -- documents -------------------------------------------------------------------------

    def _lifecycle_document(self, kind: str, **extra) -> dict:
        return lifecycle_document(self.config, kind, **extra)

    def _summary(self, reason: str) -> CallSummary:
        duration_ms = self._audio_frames * 1000 // self.config.audio.sample_rate
        return build_summary(self.config, self._ctx, reason, duration_ms, self._pipelines, self._scoring, self._analytics,
                             self._rules)
