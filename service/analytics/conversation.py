"""Call-level turn-taking from the per-frame VAD flags of every channel: dead air, over-talk, interruptions
and back-channels.

Definitions (per channel, in VAD frames of `frame_ms` from the call start):
  * A channel *speaks* in a frame if the VAD marks it voiced or it is within `hangover_ms` after the
    channel's last voiced frame; the hangover bridges the short unvoiced gaps inside and between words.
  * A *talk spurt* is a run of voiced frames whose gaps are at most `hangover_ms`. It ends at its last
    voiced frame: a hangover that runs out without new voice is not talk, so talk time, dead air and
    over-talk are measured up to the last voiced frame, never over the trailing hangover.
  * *Dead air* is mutual silence: nobody says anything. A spurt with fewer than `min_speech_ms` of voiced
    frames (a click, a breath, a burst of line noise) does not end it: dead air ends at the start of the
    first spurt that reaches `min_speech_ms`, so a 6.7 s silence with a 240 ms noise burst inside is one
    6.7 s stretch. A stretch is dated from the last voiced frame of such speech (or from the start of the
    call, or the end of a pause), so a 6 s silence reads 6000 ms, but it only shows once the hangover has
    run out: pauses up to `hangover_ms` are not dead air. While a spurt is still shorter than
    `min_speech_ms` the current run holds at its length where the spurt started (it may be speech, so a
    4.8 s silence followed by speech never reads 5 s); if it proves a blip the run goes on from the full
    length, blip included, and if it proves speech the stretch ends at its start.
  * *Over-talk* (stereo) is two talk spurts overlapping; the current run is the overlap confirmed so
    far (both spurts reached it), reported while both channels speak.
  * A spurt that starts while the other channel speaks is a *newcomer*; the two spurts are then either:
      - an *interruption*: the newcomer takes the floor (the other speaker's spurt ends while the
        newcomer still speaks) after an overlap of at least `min_interruption_ms`, or the overlap reaches
        `contest_ms` whoever goes on (a contested floor). It is confirmed at that moment, dated at the
        newcomer's start; its overlap_ms keeps growing while the overlap lasts.
      - a *back-channel* ("mm-hm", "right"): the newcomer's spurt ends while the other speaker goes on,
        before the overlap reached `contest_ms`, after at least `min_speech_ms` of voice (shorter is a
        blip: a cough, a click). Counted separately, never as an interruption.
      - neither: both stop (or the audio pauses) before either happens, or the other speaker yields
        after a shorter overlap than `min_interruption_ms` (an ordinary change of turn).

Everything depends only on the sequence of frames, never on how the bridge splits it into pushes; the
snapshots at every `tick_ms` boundary of call time let call-level rules be evaluated on that clock.
The per-frame loop is plain Python (50 frames/s per call) doing a few integer operations per frame;
memory is bounded by `max_listed` and `history_ms`, whatever the call length.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np

from service.domain import Role

PAUSE_TICKS_MS = 5000  # ticks of a pause evaluated one by one (see `skip`)
# "Never voiced": far enough in the past that every hangover has run out.
_NEVER = -(1 << 62)


@dataclass(frozen=True)
class Interruption:
    """One confirmed interruption."""

    at_ms: int
    """Call offset where the interrupter started speaking."""
    by: Role
    """Who interrupted."""
    of: Role
    """Who was speaking and got interrupted."""
    overlap_ms: int
    """How long both spoke at once; grows while the overlap lasts and is final when it ends."""


@dataclass(frozen=True)
class Silence:
    """A stretch of dead air."""

    start_ms: int
    """Call offset where the last voice before it ended (or where the call or a pause ended)."""
    duration_ms: int
    """Length of the mutual silence."""


@dataclass(frozen=True)
class ConversationSnapshot:
    """The conversation's state at one point of call time."""

    now_ms: int
    """Call offset of the snapshot."""
    dead_air_ms: int
    """Current run in which nobody speaks (0 while anyone speaks)."""
    overtalk_ms: int
    """Current run in which two speakers speak at once."""
    overtalk_by: Role | None
    """In the current over-talk, who started speaking second (None if no over-talk, or if both started in the same frame)."""
    recent_interruptions: tuple[Interruption, ...]
    """Confirmed interruptions in the last `history_ms`, oldest first."""
    hold_ms: int = 0
    """Current run in which a channel has been playing steady sound (hold music, tones); the longest if both."""
    hold_channel: Role | None = None
    """Whose channel plays it (None if none does)."""

    def interruptions_by(self, role: Role, within_ms: int) -> tuple[Interruption, ...]:
        """The recent interruptions by `role` with at_ms > now_ms - within_ms, oldest first."""
        since = self.now_ms - within_ms
        return tuple(e for e in self.recent_interruptions if e.by is role and e.at_ms > since)


class ConversationTracker:
    """Turn-taking of one call from the VAD flags of its channels (one or two, one role each)."""

    def __init__(
        self,
        roles: tuple[Role, ...],
        frame_ms: int = 20,
        hangover_ms: int = 200,
        min_interruption_ms: int = 500,
        min_silence_ms: int = 2000,
        tick_ms: int = 100,
        history_ms: int = 600_000,
        max_listed: int = 200,
        contest_ms: int = 1500,
        min_speech_ms: int = 300,
        turn_pause_ms: int = 0,
    ) -> None:
        roles = tuple(roles)
        if len(roles) not in (1, 2) or len(set(roles)) != len(roles):
            raise ValueError(f"roles must be one or two distinct roles, got {roles!r}")
        if frame_ms <= 0 or hangover_ms < 0 or min_interruption_ms <= 0 or min_silence_ms <= 0:
            raise ValueError("frame_ms, min_interruption_ms and min_silence_ms must be > 0 and hangover_ms >= 0")
        if tick_ms <= 0 or history_ms <= 0 or max_listed < 1:
            raise ValueError("tick_ms and history_ms must be > 0 and max_listed >= 1")
        if turn_pause_ms < 0:
            raise ValueError(f"turn_pause_ms must be >= 0, got {turn_pause_ms}")
        if contest_ms < min_interruption_ms or min_speech_ms < 0:
            raise ValueError(f"contest_ms ({contest_ms}) must be >= min_interruption_ms ({min_interruption_ms}) and min_speech_ms >= 0")
        self.roles = roles
        self.frame_ms = frame_ms
        self.hangover_ms = hangover_ms
        self.min_interruption_ms = min_interruption_ms
        self.min_silence_ms = min_silence_ms
        self.tick_ms = tick_ms
        self.history_ms = history_ms
        self.max_listed = max_listed
        self.contest_ms = contest_ms
        self.min_speech_ms = min_speech_ms
        self._stereo = len(roles) == 2
        self._hang = hangover_ms // frame_ms  # frames after the last voiced one that still speak
        self._min_overlap = -(-min_interruption_ms // frame_ms)
        self._contest = -(-contest_ms // frame_ms)
        self._min_speech = max(1, -(-min_speech_ms // frame_ms))  # voiced frames that make a spurt speech
        self.turn_pause_ms = turn_pause_ms
        # Silent frames after which a speaker of an overlapping pair has stopped (yielded, or ended a back-channel);
        # a shorter pause keeps the pair, and the speaker's resumption continues it.
        self._yield = max(self._hang, turn_pause_ms // frame_ms)
        self._frame = 0  # frames processed (pushed or skipped)
        self._origin = 0  # first frame after the call start or the last pause
        self._next_tick = tick_ms
        self._last = [_NEVER] * len(roles)  # last voiced frame per channel
        self._start = [_NEVER] * len(roles)  # first frame of each channel's latest talk spurt
        self._talk = [0] * len(roles)  # talk frames per channel
        self._voiced = [0] * len(roles)  # voiced frames in each channel's latest talk spurt
        self._last_any = _NEVER  # last voiced frame of a spurt that proved to be speech (any channel)
        self._dead_frames = 0
        self._silences: list[tuple[int, int, Silence]] = []  # min-heap of the longest listed silences
        self._silences_total = 0
        self._overtalk_frames = 0
        # The latest pair of talk spurts (one per channel): overlap counted so far, the newcomer (index of
        # the channel whose spurt started while the other spoke, if one did), and whether the pair has been
        # confirmed as an interruption or counted as a back-channel.
        self._pair_counted = 0
        self._pair_base = 0  # overlap of the pair before a speaker's resumption after a pause under turn_pause_ms
        self._pair_by: int | None = None
        self._pair_confirmed = False
        self._pair_resolved = False
        self._count = 0
        self._by_count = [0] * len(roles)
        self._backchannels = [0] * len(roles)
        self._events: deque[Interruption] = deque(maxlen=max_listed)
        # Confirmed interruptions start at least min_interruption_ms apart, which bounds this deque.
        self._recent: deque[Interruption] = deque(maxlen=history_ms // min_interruption_ms + 2)
        self._recent_tuple: tuple[Interruption, ...] | None = ()
        self._steady_run = [0] * len(roles)  # frames in a row each channel has been in the steady state

    @property
    def now_ms(self) -> int:
        """Call offset of the end of the frames processed so far."""
        return self._frame * self.frame_ms

    @property
    def next_tick_ms(self) -> int:
        """Call offset of the next tick boundary: frames that reach it make `push` return a snapshot."""
        return self._next_tick

    def push(self, voiced: np.ndarray, present: np.ndarray | None = None,
             steady: np.ndarray | None = None) -> list[ConversationSnapshot]:
        """Process the next frames: `voiced` has shape (n_frames, len(roles)) (or (n_frames,) for one
        channel), one VAD flag per frame and channel; `present` (n_frames,), optional: frames in which
        something that is not speech plays on the line (a tone, hold music), during which there is no
        dead air; `steady` (n_frames, len(roles)), optional: frames in which a channel is in the steady
        state (service/analytics/gate.py), whose runs the snapshots report as hold_ms. Returns a snapshot
        for every tick boundary (multiple of tick_ms of call time) crossed, in order; a boundary inside a
        frame is reported with the state at the end of that frame."""
        flags = np.asarray(voiced, dtype=bool)
        if flags.ndim == 1 and not self._stereo:
            flags = flags[:, None]
        if flags.ndim != 2 or flags.shape[1] != len(self.roles):
            raise ValueError(f"voiced must have shape (n_frames, {len(self.roles)}), got {flags.shape}")
        out: list[ConversationSnapshot] = []
        frame_ms = self.frame_ms
        playing = present is not None and bool(np.count_nonzero(present))
        if (steady is not None and np.count_nonzero(steady)) or playing:
            return self._push_with_sound(flags, present, steady)
        if any(self._steady_run):
            self._steady_run = [0] * len(self.roles)
        if self._stereo:
            for v0, v1 in flags.tolist():
                if v0 or v1:
                    self._voice_pair(self._frame, v0, v1)
                self._frame += 1
                if self._frame * frame_ms >= self._next_tick:
                    self._ticks(out)
        else:
            for (v0,) in flags.tolist():
                if v0:
                    k = self._frame
                    self._voice(0, k)
                    self._speech(0, k)
                self._frame += 1
                if self._frame * frame_ms >= self._next_tick:
                    self._ticks(out)
        return out

    def _push_with_sound(self, flags: np.ndarray, present: np.ndarray | None,
                         steady: np.ndarray | None) -> list[ConversationSnapshot]:
        """push() for frames in which something that is not speech plays, frame by frame (see push)."""
        n = len(flags)
        present = np.zeros(n, bool) if present is None else np.asarray(present, dtype=bool)
        if len(present) != n:
            raise ValueError(f"present must have one flag per frame ({n}), got {len(present)}")
        steady = np.zeros((n, len(self.roles)), bool) if steady is None else np.asarray(steady, dtype=bool).reshape(n, len(self.roles))
        out: list[ConversationSnapshot] = []
        frame_ms = self.frame_ms
        runs = self._steady_run
        for row, playing, states in zip(flags.tolist(), present.tolist(), steady.tolist()):
            k = self._frame
            for c, state in enumerate(states):
                runs[c] = runs[c] + 1 if state else 0
            if playing:
                self._present(k)
            if self._stereo:
                if row[0] or row[1]:
                    self._voice_pair(k, row[0], row[1])
            elif row[0]:
                self._voice(0, k)
                self._speech(0, k)
            self._frame += 1
            if self._frame * frame_ms >= self._next_tick:
                self._ticks(out)
        return out

    def skip(self, frames: int) -> list[ConversationSnapshot]:
        """Advance the clock over `frames` frames of audio that will never come (a pause). The current
        runs end where the audio stopped (what happened before counts as usual; the pause itself is
        neither dead air nor over-talk, and no hangover or talk spurt carries across it). Returns the
        tick snapshots crossed, with dead_air_ms and overtalk_ms 0."""
        if frames < 0:
            raise ValueError(f"cannot skip a negative number of frames ({frames})")
        out: list[ConversationSnapshot] = []
        if frames == 0:
            return out
        gap = self._dead_run()
        if gap:
            self._record_silence(self._frame - gap, gap)
        self._last = [_NEVER] * len(self.roles)
        self._start = [_NEVER] * len(self.roles)
        self._voiced = [0] * len(self.roles)
        self._last_any = _NEVER
        self._new_pair(None)
        self._steady_run = [0] * len(self.roles)
        self._frame += frames
        self._origin = self._frame
        end_ms = self._frame * self.frame_ms
        # Nothing is measured in a pause (no dead air, no over-talk); only interruptions from before it
        # age. The first PAUSE_TICKS_MS of it are ticked as usual, then one tick (the last) stands for
        # the rest, so a pause of hours costs as much as one of seconds.
        horizon = min(end_ms, self._next_tick + PAUSE_TICKS_MS)
        while self._next_tick <= horizon:
            out.append(ConversationSnapshot(self._next_tick, 0, 0, None, self._recent_at(self._next_tick)))
            self._next_tick += self.tick_ms
        if self._next_tick <= end_ms:
            last = self._next_tick + (end_ms - self._next_tick) // self.tick_ms * self.tick_ms
            out.append(ConversationSnapshot(last, 0, 0, None, self._recent_at(last)))
            self._next_tick = last + self.tick_ms
        return out

    def retract_talk(self, index: int, frames: int) -> None:
        """Take `frames` frames back from channel `index`'s talk time: they were counted as voice and proved to be
        something else (music the speech check latched). Over-talk, interruptions and dead air already measured stay."""
        if frames < 0:
            raise ValueError(f"cannot retract a negative number of frames ({frames})")
        self._talk[index] = max(0, self._talk[index] - frames)

    def restore_talk(self, index: int, frames: int) -> None:
        """Give `frames` frames back to channel `index`'s talk time: the speech check's latch took them out of speech,
        and they proved to be the speaker's voice after all. Over-talk, interruptions and dead air already measured stay."""
        if frames < 0:
            raise ValueError(f"cannot restore a negative number of frames ({frames})")
        self._talk[index] += frames

    def snapshot(self) -> ConversationSnapshot:
        """The state at the end of the frames processed so far."""
        return self._snapshot(self.now_ms)

    def summary(self) -> dict:
        """Whole-call figures (call it at the end of the call; a dead-air stretch still running counts)."""
        frame_ms = self.frame_ms
        listed = list(self._silences)
        total = self._silences_total
        dead = self._dead_frames
        gap = self._dead_run()
        if gap:
            dead += gap
            duration = gap * frame_ms
            if duration >= self.min_silence_ms:
                total += 1
                silence = Silence((self._frame - gap) * frame_ms, duration)
                listed.append((duration, -silence.start_ms, silence))
                if len(listed) > self.max_listed:
                    listed.remove(min(listed))
        silences = sorted((item[2] for item in listed), key=lambda s: s.start_ms)
        talk_total = sum(self._talk)
        return {
            "stereo": self._stereo,
            "talk_ms": {role.value: talk * frame_ms for role, talk in zip(self.roles, self._talk)},
            "talk_ratio": {
                role.value: round(talk / talk_total, 3) if talk_total else 0.0 for role, talk in zip(self.roles, self._talk)
            },
            "dead_air_ms": dead * frame_ms,
            "silences": [{"start_ms": s.start_ms, "duration_ms": s.duration_ms} for s in silences],
            "silences_total": total,
            "overtalk_ms": self._overtalk_frames * frame_ms,
            "interruptions": {
                "count": self._count,
                "by": {role.value: count for role, count in zip(self.roles, self._by_count)},
                "events": [
                    {"at_ms": e.at_ms, "by": e.by.value, "of": e.of.value, "overlap_ms": e.overlap_ms} for e in self._events
                ],
            },
            "backchannels": {
                "count": sum(self._backchannels),
                "by": {role.value: count for role, count in zip(self.roles, self._backchannels)},
            },
        }

    # -- per-frame work ---------------------------------------------------------------------------

    def _voice(self, c: int, k: int) -> bool:
        """Channel c is voiced in frame k; returns whether that starts a new talk spurt."""
        gap = k - self._last[c] - 1
        self._last[c] = k
        if gap <= self._hang:  # the hangover bridged the gap: it was talk
            self._talk[c] += gap + 1
            self._voiced[c] += 1
            return False
        self._talk[c] += 1
        self._start[c] = k
        self._voiced[c] = 1
        return True

    def _speech(self, c: int, k: int) -> None:
        """After _voice(c, k): once channel c's spurt has min_speech voiced frames it is speech, and the
        dead-air stretch before it ends at its start (a shorter spurt, a blip, leaves the stretch running)."""
        voiced = self._voiced[c]
        if voiced < self._min_speech:
            return
        if voiced == self._min_speech:
            start = max(self._last_any + 1, self._origin)
            if self._start[c] - start > self._hang:
                self._record_silence(start, self._start[c] - start)
        if k > self._last_any:
            self._last_any = k

    def _present(self, k: int) -> None:
        """A sound that is not speech plays in frame k: the line is not dead; a dead-air stretch before it ends."""
        start = max(self._last_any + 1, self._origin)
        if k - start > self._hang:
            self._record_silence(start, k - start)
        if k > self._last_any:
            self._last_any = k

    def _voice_pair(self, k: int, v0: bool, v1: bool) -> None:
        """Stereo frame k with at least one channel voiced."""
        by = self._pair_by
        open_pair = by is not None and not self._pair_resolved and (self._pair_counted or self._pair_base)
        if open_pair:
            self._settle(k, by, v0 if by == 0 else v1, v1 if by == 0 else v0)
            open_pair = not self._pair_resolved
        # A speaker of the undecided pair who resumes after a pause shorter than turn_pause_ms goes on with it.
        resumed0 = open_pair and v0 and self._hang < k - self._last[0] - 1 <= self._yield
        resumed1 = open_pair and v1 and self._hang < k - self._last[1] - 1 <= self._yield
        before = self._voiced[0], self._voiced[1]
        new0 = self._voice(0, k) if v0 else False
        new1 = self._voice(1, k) if v1 else False
        if resumed0:
            self._voiced[0] += before[0]  # its voiced time goes on (a back-channel in two bits is not two blips)
        if resumed1:
            self._voiced[1] += before[1]
        if v0:
            self._speech(0, k)
        if v1:
            self._speech(1, k)
        if resumed0 or resumed1:
            self._pair_base += self._pair_counted  # the overlap so far; what follows is counted from the resumption
            self._pair_counted = 0
            new0, new1 = new0 and not resumed0, new1 and not resumed1
        if new0 or new1:
            # A new pair of spurts. A spurt that starts alone is a newcomer: its overlap with the other
            # channel's latest spurt can only become positive if that spurt still runs, i.e. the other
            # channel was already speaking (voiced or within its hangover).
            self._new_pair(None if new0 == new1 else (0 if new0 else 1))
        last0, last1 = self._last
        start0, start1 = self._start
        overlap = min(last0, last1) - max(start0, start1) + 1
        if overlap > self._pair_counted:
            self._overtalk_frames += overlap - self._pair_counted
            self._pair_counted = overlap
            total = self._pair_base + overlap
            if self._pair_by is not None and (self._pair_confirmed or (total >= self._contest and not self._pair_resolved)):
                self._interruption(total)  # a contested floor, or a confirmed interruption's overlap growing

    def _settle(self, k: int, by: int, newcomer_voiced: bool, other_voiced: bool) -> None:
        """Frame k of an overlapping pair not yet settled (before k's flags are taken in): whoever stopped
        first decides it. The other speaker stopped (their hangover ran out) while the newcomer goes on:
        the newcomer took the floor, an interruption if the overlap reached min_interruption_ms. The
        newcomer stopped while the other goes on: a back-channel."""
        other = 1 - by
        other_stopped = k - self._last[other] - 1 > self._yield
        newcomer_stopped = k - self._last[by] - 1 > self._yield
        if newcomer_voiced and not newcomer_stopped and other_stopped:
            if self._pair_base + self._pair_counted >= self._min_overlap:
                self._interruption(self._pair_base + self._pair_counted)
            self._pair_resolved = True
        elif other_voiced and not other_stopped and newcomer_stopped:
            if self._voiced[by] >= self._min_speech:  # shorter: a blip (a cough, a click), not a back-channel
                self._backchannels[by] += 1
            self._pair_resolved = True

    def _new_pair(self, by: int | None) -> None:
        self._pair_counted = 0
        self._pair_base = 0
        self._pair_by = by
        self._pair_confirmed = False
        self._pair_resolved = False

    def _interruption(self, overlap: int) -> None:
        """The current pair's overlap reached (or grew past) the confirmation length."""
        by = self._pair_by
        event = Interruption(self._start[by] * self.frame_ms, self.roles[by], self.roles[1 - by], overlap * self.frame_ms)
        if not self._pair_confirmed:
            self._pair_confirmed = self._pair_resolved = True
            self._count += 1
            self._by_count[by] += 1
            self._events.append(event)
            self._recent.append(event)
        else:  # the latest event is this pair's: its overlap grew
            self._events[-1] = event
            if self._recent and self._recent[-1].at_ms == event.at_ms:
                self._recent[-1] = event
        self._recent_tuple = None

    def _record_silence(self, start: int, frames: int) -> None:
        self._dead_frames += frames
        duration = frames * self.frame_ms
        if duration >= self.min_silence_ms:
            self._silences_total += 1
            silence = Silence(start * self.frame_ms, duration)
            # Keep the longest (ties: the earliest); the heap's root is the first to go.
            item = (duration, -silence.start_ms, silence)
            if len(self._silences) < self.max_listed:
                heapq.heappush(self._silences, item)
            else:
                heapq.heappushpop(self._silences, item)

    def _dead_run(self, held: bool = False) -> int:
        """Frames of the dead-air stretch running at the end of the processed frames (0 if none); `held`:
        up to the start of a spurt still too short to tell from a blip (what the live snapshots report)."""
        end = self._frame
        if held:
            for c in range(len(self.roles)):
                if 0 < self._voiced[c] < self._min_speech and self._frame - 1 - self._last[c] <= self._hang:
                    end = min(end, self._start[c])
        gap = end - max(self._last_any + 1, self._origin)
        return gap if gap > self._hang else 0

    def _ticks(self, out: list[ConversationSnapshot]) -> None:
        end_ms = self._frame * self.frame_ms
        while self._next_tick <= end_ms:
            out.append(self._snapshot(self._next_tick))
            self._next_tick += self.tick_ms

    def _snapshot(self, now_ms: int) -> ConversationSnapshot:
        dead_ms = self._dead_run(held=True) * self.frame_ms
        overtalk_ms, by = 0, None
        if self._stereo:
            k = self._frame - 1
            last0, last1 = self._last
            if k - last0 <= self._hang and k - last1 <= self._hang:
                start0, start1 = self._start
                overlap = min(last0, last1) - max(start0, start1) + 1
                if overlap > 0:
                    overtalk_ms = overlap * self.frame_ms
                    by = None if start0 == start1 else self.roles[0 if start0 > start1 else 1]
        hold_ms, hold_channel = 0, None
        if any(self._steady_run):
            longest = max(range(len(self.roles)), key=self._steady_run.__getitem__)
            hold_ms, hold_channel = self._steady_run[longest] * self.frame_ms, self.roles[longest]
        return ConversationSnapshot(now_ms, dead_ms, overtalk_ms, by, self._recent_at(now_ms), hold_ms, hold_channel)

    def _recent_at(self, now_ms: int) -> tuple[Interruption, ...]:
        recent = self._recent
        while recent and recent[0].at_ms <= now_ms - self.history_ms:
            recent.popleft()
            self._recent_tuple = None
        if self._recent_tuple is None:
            self._recent_tuple = tuple(recent)
        return self._recent_tuple
