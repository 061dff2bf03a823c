"""What each channel of a call plays that is not speech: its steady-sound gate (tones, music), the engine speech
check's not-speech latch, and per-frame marks that let a window tell its speaker's speech from that sound.

The call session feeds every decided frame through `separate` (before prosody and turn-taking look at speech), then
`mark` with the frames that counted as speech; it asks about a window's new audio by channel frame range
[first, end) and reports the speech check's answers (`not_speech`, `heard`), which take effect when it calls
`apply` (a live call at once; a replay at fixed points of its audio, so that they fall on the same frames in
every run however fast the model answers). See service/analytics/gate.py for the
gate and the latch, README "Tones and music are not speech" and "The engine's speech check" for the figures.
"""

from __future__ import annotations

import numpy as np

from service.analytics.gate import SUSPECT_MS, UNSPOKEN_MIN_DBFS, UNSPOKEN_VERDICTS, FrameMarks, SteadyGate

NOT_SPEECH, SPEECH, UNANSWERED = "not speech", "speech", "unanswered"  # the speech check's answers on a window


class ChannelSounds:
    """The steady-sound gates of a call's channels (one per channel, in channel order) and what they decided."""

    def __init__(self, channels: int, frame_samples: int, frame_ms: int, hold_min_ms: int, history_frames: int) -> None:
        if channels <= 0:
            raise ValueError(f"channels must be > 0, got {channels}")
        self.frame_ms = frame_ms
        self.gates = [SteadyGate(frame_samples, frame_ms, hold_min_ms) for _ in range(channels)]
        self._marks = [FrameMarks(history_frames) for _ in range(channels)]
        self._steady = [0] * channels  # voiced frames taken as steady sound by the gate
        self._latched = [0] * channels  # voiced frames taken out of speech by the speech check's latch
        self._unheard = [0] * channels  # loud windows in a row the check found not to be speech
        self._unheard_from = [0] * channels  # the first frame of the first of them
        self._retracted = [0] * channels  # speech frames taken back by the latch since take_retracted
        self._heard = [0] * channels  # windows in a row the check found to be speech
        self._heard_from = [0] * channels  # the first frame of the first of them
        self._restored = [0] * channels  # latched frames given back to speech since take_restored
        self._suspect_frames = SUSPECT_MS // frame_ms
        # Until apply(): (channel, kind, the window's first frame, end frame and loudness); kind is NOT_SPEECH, SPEECH
        # or UNANSWERED.
        self._answers: list[tuple[int, str, int, int, float]] = []
        # What `separate` decided for the frames that `mark` marks next: steady sound and latched frames per channel.
        self._last: tuple[np.ndarray | None, np.ndarray | None] = (None, None)

    def separate(self, blocks: list[np.ndarray], vad: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The next frames of every channel (int16 samples per channel, VAD flags (frames, channels)) through its gate.
        Returns the VAD flags without the frames that are steady sound or latched as not speech, the frames in which
        such a sound plays (the line is not dead; None if none), and each channel's state per frame (None if none)."""
        states = [gate.push(block, len(vad), vad[:, index]) for index, (gate, block) in enumerate(zip(self.gates, blocks))]
        if not any(state.any() for state in states):
            self._last = (None, None)
            return vad, None, None
        state = np.stack(states, axis=1)
        steady = state & vad
        latched = None
        for index, gate in enumerate(self.gates):
            column = steady[:, index]
            if gate.last_unspoken.any():  # latched by the engine's speech check, not steady to the gate itself
                latched = np.zeros_like(steady) if latched is None else latched
                latched[:, index] = column & gate.last_unspoken
                self._latched[index] += int(np.count_nonzero(latched[:, index]))
                column = column & ~latched[:, index]
            self._steady[index] += int(np.count_nonzero(column))
        self._last = (steady if latched is None else steady & ~latched, latched)
        return vad & ~steady, steady.any(axis=1), state

    @property
    def last_latched(self) -> np.ndarray | None:
        """(frames, channels): the voiced frames that the last `separate` took out of speech only because the speech
        check latched their channel (None if none)."""
        return self._last[1]

    def mark(self, speaking: np.ndarray, latched_speaking: np.ndarray | None = None) -> None:
        """Mark the frames `separate` just took: which counted as the speaker's speech (`speaking`, (frames, channels)
        after near silence and crosstalk were removed), which were steady sound, which were latched, and which of those
        would have counted as speech but for the latch (`latched_speaking`: those a release may give back)."""
        steady, latched = self._last
        none = np.zeros(len(speaking), dtype=bool)
        for index, marks in enumerate(self._marks):
            marks.push(speaking[:, index], none if steady is None else steady[:, index],
                       None if latched is None else latched[:, index],
                       None if latched_speaking is None else latched_speaking[:, index])
            for first, end in self.gates[index].take_entries():
                marks.mark_steady(first, end)  # the start of a tone or music, taken for speech until the gate knew
        self._last = (None, None)

    def skip(self, frames: int) -> None:
        """`frames` frames of audio that will never come, on every channel: nothing carries across them."""
        for gate, marks in zip(self.gates, self._marks):
            gate.skip(frames)
            marks.skip(frames)

    def deciding(self, index: int, first: int, end: int) -> bool:
        """The channel's gate may still take enough of frames [first, end) as steady sound (re-marking its speech
        frames) to make them mostly steady: a window over them must wait for the gate to decide."""
        earliest = self.gates[index].earliest_entry_frame()
        if earliest is None or max(earliest, first) >= end:
            return False
        marks = self._marks[index]
        speech, steady = marks.count(first, end)
        could, _ = marks.count(max(earliest, first), end)
        return steady + could > 0 and steady + could >= speech - could

    def mostly_steady(self, index: int, first: int, end: int) -> bool:
        """At least as much of frames [first, end) was steady sound (tone, music) as speech."""
        speech, steady = self._marks[index].count(first, end)
        return steady > 0 and steady >= speech

    def latched(self, index: int, first: int, end: int) -> bool:
        """Some of frames [first, end) were voiced but taken out of speech by the speech check's latch."""
        return self._marks[index].unspoken(first, end) > 0

    def not_speech(self, index: int, first: int, end: int, loudness_dbfs: float) -> None:
        """The speech check (or, on a channel suspect of music, the level test: CallAnalytics.level_steady) found a window
        over frames [first, end) not to be speech. Once applied: latch the channel
        when UNSPOKEN_VERDICTS such windows in a row had new audio that counted as speech (or was latched already) and
        was at least UNSPOKEN_MIN_DBFS loud (near silence and the other side's bleed, which it also holds back, never);
        the frames from the first of those windows on that counted as speech become the latch's (take_retracted)."""
        self._answers.append((index, NOT_SPEECH, first, end, loudness_dbfs))

    def heard(self, index: int, answered: bool = True, first: int = 0) -> None:
        """The speech check heard speech in a window whose new audio begins at frame `first` of the channel
        (`answered`), or gave no answer (a window dropped or failed). Once applied: release its latch after
        UNSPOKEN_VERDICTS speech answers in a row (one window of music that the check takes for speech among windows it
        does not must not restart the music as talk), giving back to speech what the latch took since the first of them
        that would have counted as speech (take_restored: the speaker's first words after the music); or at once
        when there was no answer (a voice counts as speech when unsure), giving nothing back."""
        self._answers.append((index, SPEECH if answered else UNANSWERED, first, 0, 0.0))

    @property
    def unsettled(self) -> bool:
        """Some channel may be playing music (suspect), is latched, or had a loud window the check found not to be
        speech: its next answers may change what counts as speech."""
        return any(self._unheard) or any(self.suspect(index) for index in range(len(self.gates)))

    @property
    def answers(self) -> int:
        """Speech-check answers not applied yet."""
        return len(self._answers)

    def apply(self) -> None:
        """Let the answers so far take effect, each channel's in the order of its audio (by the window's first frame)."""
        answers, self._answers = self._answers, []
        # In the order of the channel's audio: the level test answers when a window is cut, the check when the engine
        # has run it, so the arrival order of the two kinds depends on the engine's speed.
        answers.sort(key=lambda answer: (answer[0], answer[2]))
        for index, kind, first, end, loudness_dbfs in answers:
            marks, gate = self._marks[index], self.gates[index]
            if kind != NOT_SPEECH:
                self._unheard[index] = 0
                if kind == SPEECH and not self._heard[index]:
                    self._heard_from[index] = first
                self._heard[index] += 1
                if kind == SPEECH and gate.unspoken and self._heard[index] >= UNSPOKEN_VERDICTS:
                    # The latch took the speaker's first words too: from the first of these windows on, what would have
                    # been speech is given back (the session adds its talk back, take_restored).
                    given = marks.give_back(self._heard_from[index], marks.end)
                    self._latched[index] -= given
                    self._restored[index] += given
                    gate.give_back(max(0, marks.end - self._heard_from[index]))
                elif kind == UNANSWERED or self._heard[index] >= UNSPOKEN_VERDICTS or not gate.unspoken:
                    gate.hear(speech=True)
                continue
            if (marks.count(first, end)[0] or marks.unspoken(first, end)) and loudness_dbfs >= UNSPOKEN_MIN_DBFS:
                self._heard[index] = 0
                if not self._unheard[index]:
                    self._unheard_from[index] = first
                self._unheard[index] += 1
                if self._unheard[index] >= UNSPOKEN_VERDICTS:
                    if not gate.unspoken:
                        # The frames since the first of these windows counted as speech until now: they are the latch's
                        # too (the session takes their talk back, take_retracted).
                        taken = marks.mark_unspoken(self._unheard_from[index], marks.end)
                        self._latched[index] += taken
                        self._retracted[index] += taken
                    gate.hear(speech=False)

    def take_retracted(self) -> list[int]:
        """Per channel, the frames that counted as the speaker's speech before the latch took them back (the new audio
        of the windows that latched it, and the frames decided since) since the last call."""
        retracted, self._retracted = self._retracted, [0] * len(self._retracted)
        return retracted

    def take_restored(self) -> list[int]:
        """Per channel, the latched frames given back to the speaker's speech by a release (see heard) since the last
        call."""
        restored, self._restored = self._restored, [0] * len(self._restored)
        return restored

    def suspect(self, index: int) -> bool:
        """The channel may be playing music: windows of a speaker who is not scored go to the speech check."""
        return self.gates[index].suspect(self._suspect_frames)

    def summary(self, index: int) -> dict:
        """A speaker's steady sound taken out of their speech, the voiced sound the speech check latched as not speech,
        and their holds."""
        gate = self.gates[index]
        return {"steady_sound_ms": self._steady[index] * self.frame_ms, "not_speech_ms": self._latched[index] * self.frame_ms,
                "hold": {"ms": gate.hold_frames * self.frame_ms, "count": gate.holds}}

    def hold(self) -> dict:
        """The call's holds: every channel's together."""
        return {"ms": sum(g.hold_frames for g in self.gates) * self.frame_ms, "count": sum(g.holds for g in self.gates)}
