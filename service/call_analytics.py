"""What one call's decided audio says: steady sound and not-speech per channel, crosstalk, each speaker's prosody,
turn-taking, the transcripts' character rate, and the figures each cut window carries to the rules.

The session hands CallAnalytics the frames the VAD decided (`analyse`, a block at a time), stretches without audio
(`skip_tracks`, then `skip_conversation` once the windows the stretch cut are measured) and every cut window
(`measure`); it answers with the conversation's ticks, the windows' figures and the summary's parts. It knows nothing
of the model, the rules or the transport.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from service.analytics.conversation import ConversationSnapshot, ConversationTracker
from service.analytics.crosstalk import speaking_frames
from service.analytics.gate import BLOCK_FRAMES, FLAT_RANGE_DB, FLAT_SPAN_MS
from service.analytics.prosody import ProsodyFigures, ProsodyTrack
from service.analytics.sound import ChannelSounds
from service.analytics.transcript import TranscriptRate, count_characters
from service.audio.channel import AnalysisWindow
from service.config import AnalyticsConfig, WindowConfig
from service.domain import Role, TranscriptSegment

# Prosody and turn-taking run on the frames the VAD decided when a window is cut (its figures and the
# conversation must include them) and every analysis_ms of frames (ending on a conversation tick the rules look
# at, so that tick alerts fire with the chunk that completes it), never holding more than this many frames;
# results do not depend on how frames are grouped (tests/test_session_blocks.py).
HELD_FRAMES_MAX = 50


@dataclass(frozen=True)
class WindowAnalytics:
    """What was measured over a window when it was cut."""

    prosody: ProsodyFigures
    conversation: ConversationSnapshot
    speech_ms: int
    """The speaker's voiced speech so far in the call."""


class CallAnalytics:
    """The per-call analytics state: one ChannelSounds, a ProsodyTrack and TranscriptRate per speaker, the
    ConversationTracker, and the frames each channel spoke and lost as crosstalk."""

    def __init__(self, roles: tuple[Role, ...], sample_rate: int, frame_ms: int, windows: WindowConfig,
                 analytics: AnalyticsConfig) -> None:
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self._margin_db = analytics.crosstalk_margin_db
        history_ms = windows.window_ms + 2 * windows.hop_ms + 1000
        self._prosody = {
            role: ProsodyTrack(sample_rate, frame_ms, history_ms=history_ms, warmup_ms=analytics.baseline_warmup_ms,
                               laughter=analytics.laughter)
            for role in roles
        }
        # Per channel, in channel order: the prosody tracks again, and the frames each channel spoke and lost as crosstalk.
        self._channel_of = {role: index for index, role in enumerate(roles)}
        self._channel_prosody = [self._prosody[role] for role in roles]
        self._voiced_frames = [0] * len(roles)
        self._crosstalk_frames = [0] * len(roles)
        self._transcripts = {role: TranscriptRate() for role in roles}
        self.sounds: ChannelSounds | None = ChannelSounds(
            len(roles), self.frame_samples, frame_ms, analytics.hold_min_ms, history_ms // frame_ms,
        ) if analytics.steady_gate else None
        """Tones, music and what the speech check found not to be speech are no one's speech (service/analytics/sound.py);
        None with the steady-sound gate off."""
        self._conversation = ConversationTracker(
            roles, frame_ms, hangover_ms=analytics.hangover_ms, min_interruption_ms=analytics.interruption_min_overlap_ms,
            contest_ms=analytics.interruption_contest_ms, min_speech_ms=analytics.min_speech_ms,
            turn_pause_ms=analytics.turn_pause_ms, min_silence_ms=analytics.min_silence_ms, tick_ms=analytics.tick_ms,
        )
        self._analysis_frames = max(1, analytics.analysis_ms // frame_ms)
        self._tick_frames = max(1, analytics.tick_ms // frame_ms)

    def analyse(self, blocks: list[np.ndarray], vad: np.ndarray) -> list[ConversationSnapshot]:
        """Prosody and turn-taking for the next whole VAD frames of every channel (`blocks`: each channel's int16
        samples; `vad`: (frames, channels) decisions), steady sound, near silence and crosstalk removed; returns the
        conversation ticks these frames completed."""
        present = state = None
        if self.sounds:
            vad, present, state = self.sounds.separate(blocks, vad)
        speaking, crosstalk = speaking_frames(blocks, vad, self.frame_samples, self._margin_db)
        for index, track in enumerate(self._channel_prosody):
            column = speaking[:, index]
            track.push(blocks[index], column)
            self._voiced_frames[index] += int(np.count_nonzero(column))
            self._crosstalk_frames[index] += int(np.count_nonzero(crosstalk[:, index]))
        if self.sounds:
            latched = self.sounds.last_latched
            latched_speaking = None
            if latched is not None:
                # What of the latched frames would have been the speaker's speech (a release may give it back): rare
                # enough (only while a channel is latched) to decide who is speaking twice.
                would, _ = speaking_frames(blocks, vad | latched, self.frame_samples, self._margin_db)
                latched_speaking = would & latched
            self.sounds.mark(speaking, latched_speaking)
        return self._conversation.push(speaking, present, state)

    def apply_answers(self) -> None:
        """Let the speech check's answers so far take effect (ChannelSounds.apply); the speech frames a new latch takes
        back leave their speaker's talk time and voiced speech, and those a release gives back return to it."""
        if not self.sounds:
            return
        self.sounds.apply()
        for index, frames in enumerate(self.sounds.take_retracted()):
            if frames:
                self._conversation.retract_talk(index, frames)
                self._voiced_frames[index] = max(0, self._voiced_frames[index] - frames)
        for index, frames in enumerate(self.sounds.take_restored()):
            if frames:
                self._conversation.restore_talk(index, frames)
                self._voiced_frames[index] += frames

    def measure(self, windows: list[AnalysisWindow]) -> list[AnalysisWindow]:
        """The windows with what was measured over each when it was cut (WindowAnalytics; all of them see the
        conversation as it is now)."""
        snapshot = self._conversation.snapshot()
        measured = []
        for window in windows:
            figures = self._prosody[window.role].figures(window.start_sample, window.end_sample, window.new_from_sample)
            cpm = self._transcripts[window.role].rate(window.end_ms)
            if cpm is not None:
                figures = dataclasses.replace(figures, speech_rate_cpm=cpm)
            speech_ms = self._voiced_frames[self._channel_of[window.role]] * self.frame_ms
            measured.append(dataclasses.replace(window, analytics=WindowAnalytics(figures, snapshot, speech_ms)))
        return measured

    def level_steady(self, window: AnalysisWindow) -> bool:
        """The level of the window's channel moved less than FLAT_RANGE_DB over the window's last FLAT_SPAN_MS (music
        on a channel suspect of it: see service/analytics/gate.py)."""
        span = FLAT_SPAN_MS * window.sample_rate // 1000
        moved = self._prosody[window.role].level_range_db(max(0, window.end_sample - span), window.end_sample)
        return moved is not None and moved < FLAT_RANGE_DB

    def skip_tracks(self, frames: int) -> None:
        """A stretch of `frames` frames without audio, for the prosody tracks and the gates (before the windows it cut
        are measured): their streaming state starts afresh after it."""
        for track in self._channel_prosody:
            track.skip(frames)
        if self.sounds:
            self.sounds.skip(frames)

    def skip_conversation(self, frames: int) -> list[ConversationSnapshot]:
        """The same stretch for the turn-taking clock (after the windows it cut were measured); returns its ticks."""
        return self._conversation.skip(frames)

    def hold_limit(self, deferring: bool, needs_ticks: bool) -> int:
        """How many decided frames may be held before the next analysis: analysis_ms of them (at most HELD_FRAMES_MAX;
        a gate's block while windows wait for a gate to decide), ending on the last conversation tick in that span when
        the rules look at ticks, so that the span's tick alerts fire with the chunk that completes its last tick."""
        limit = min(HELD_FRAMES_MAX, self._analysis_frames)
        if deferring:
            limit = min(limit, BLOCK_FRAMES)  # the gate decides a block at a time; the windows wait for it
        if needs_ticks:
            conversation = self._conversation
            to_tick = max(1, -(-(conversation.next_tick_ms - conversation.now_ms) // self.frame_ms))
            if to_tick <= limit:
                limit = to_tick + (limit - to_tick) // self._tick_frames * self._tick_frames
        return limit

    def has_speaker(self, role: Role) -> bool:
        """The call has a channel for this speaker."""
        return role in self._transcripts

    def add_transcript(self, segment: TranscriptSegment) -> None:
        """Count a final transcript segment of a speaker the call has (has_speaker) towards their character rate."""
        self._transcripts[segment.speaker].add(segment.start_ms, segment.end_ms, count_characters(segment.text))

    def speaker_summary(self, role: Role) -> dict:
        """The speaker's part of the call summary: prosody totals (with the transcripts' rate), crosstalk, and what the
        gates heard on the channel."""
        index = self._channel_of[role]
        return {
            "prosody": {**self._prosody[role].totals(), **self._transcripts[role].totals()},
            "crosstalk_ms": self._crosstalk_frames[index] * self.frame_ms,
            **(self.sounds.summary(index) if self.sounds else {}),
        }

    def conversation_summary(self) -> dict:
        """Turn-taking over the whole call, with holds."""
        summary = self._conversation.summary()
        if self.sounds:
            summary["hold"] = self.sounds.hold()
        return summary
