"""Steady sounds are not speech: call-progress and signalling tones, and hold music, found per channel.

webrtcvad marks a ringback, a DTMF digit, a fax tone or a bar of hold music as speech (about 95% of
music frames), so without this gate they would count as someone talking, their windows would reach
the emotion model and could raise alerts. What sets them apart from a voice is that their spectrum
holds still: a tone is one or two fixed lines, a note or a chord keeps its partials for a beat or
longer, while a voice's harmonics glide with its pitch and its formants move from sound to sound.

The measure, per channel, on consecutive 80 ms blocks (4 VAD frames, Hann window, 12.5 Hz bins): the
overlap of the two blocks' normalised power spectra (sum of the bin-wise minimum; 1 for the same
sound, near 0 for unrelated ones). Measured (tests/test_gate.py, README "Tones and music are not
speech"): tones about 1.0, generated music (chords, melody, drums) median 0.84, the speech of the bundled
call and of the real call in ../shared/audio median 0.21-0.25 with 2% of blocks above 0.7. A channel
enters the steady state when STEADY_ENTER_BLOCKS of its last STEADY_ENTER_OF blocks are at or above
STEADY_ENTER (a tone after 400 ms: a melody note or a drum beat may break a comparison or two), and
leaves it after STEADY_EXIT_BLOCKS loud blocks in a row below STEADY_EXIT
(a beat of drums does not end it) or 2 s too quiet to compare (a pause between DTMF digits or notes
does not). While steady, the channel's VAD-voiced frames are not speech. A channel steady for at
least `hold_min_ms` is on hold.

What it does not catch: music with singing (the voice glides like speech), fast passages, and music under
someone speaking on the same channel (the speech wins, which is right). For the first two the model engine's
speech check (silero-vad, service/inference/speech.py) answers per window; its "not speech" on loud windows
latches the channel into the steady state (`hear`) until it hears speech again. Cost: one FFT of an 80 ms block (640 points at 8 kHz) per block with a voiced frame,
vectorised over the blocks analysed together; about 1 ms of CPU per second of a stereo call.
"""

from __future__ import annotations

from collections import deque

import numpy as np

STEADY_ENTER = 0.6
"""Spectral overlap of consecutive blocks at or above which a block is steady."""
STEADY_EXIT = 0.4
"""Spectral overlap below which a block counts towards leaving the steady state."""
STEADY_ENTER_BLOCKS = 4
"""Steady blocks among the last STEADY_ENTER_OF that make the channel steady."""
STEADY_ENTER_OF = 6
STEADY_EXIT_BLOCKS = 3
"""Loud blocks in a row below STEADY_EXIT that end the steady state."""
QUIET_EXIT_BLOCKS = 25
"""Quiet blocks in a row (2 s) that end the steady state: the pause between DTMF digits, notes or the
bursts of a busy signal does not."""
BLOCK_FRAMES = 4
"""VAD frames per compared block (80 ms of 20 ms frames)."""
QUIET_DBFS = -55.0
"""Blocks at or below this level are too quiet to compare (they count towards leaving)."""
UNSPOKEN_MIN_DBFS = -35.0
"""A window the engine's speech check finds not to be speech latches its channel as not speech (`hear`) only if its
new speech is at least this loud: music is played at speech level, while the windows of real calls that the check
holds back are near silence or the other side's bleed (-63 and -57 dBFS medians on the real call in ../shared/audio;
of its windows louder than -35 dBFS the check held back 1 in 200 per channel). Blocks fainter than this, or without a
voiced frame, count towards releasing the latch (UNSPOKEN_RELEASE_BLOCKS)."""
UNSPOKEN_VERDICTS = 2
"""Loud windows in a row that the speech check finds not to be speech before the channel is latched: music goes on,
while a misread window of speech is one among windows of speech."""
UNSPOKEN_RELEASE_BLOCKS = 12
"""Faint or unvoiced blocks in a row (about 1 s) that release the not-speech latch: the music stopped, or what the
channel carries now is a pause or the other side's bleed, which the latch must not turn into a hold."""
SUSPECT_MS = 30_000
"""A channel whose speech is not scored is checked by the engine's speech check only while it is suspect of playing
music: the gate heard a steady stretch of at least SUSPECT_STRETCH_MS on it in this much of the channel's most recent
audio, or the check latched it (most music the gate misses comes between the passages it catches)."""
SUSPECT_STRETCH_MS = 1000
"""Steady stretches shorter than this make no channel suspect: real speech is steady in 0.5% of its frames, in
stretches of a few hundred ms (a held vowel, a hum)."""
FLAT_RANGE_DB = 10.0
"""A window on a channel suspect of music (see SUSPECT_MS) whose level moved less than this over its last FLAT_SPAN_MS
(the 10th to the 90th percentile of its frame levels) is taken as music: not sent to the model, and with the engine's
speech check on, a not-speech answer to the channel's latch (an unscored speaker's window is answered so instead of
going to the check). Speech pauses between words and dips at its consonants (36 dB median over a second of the speech
of the development set, 2% of its seconds below 10 dB), while loudness-compressed music holds its level (8.8 dB median
in the Debian game music that silero-vad takes for speech). Only on a suspect channel, where music has just been
playing: a held vowel or a hum elsewhere is speech."""
FLAT_SPAN_MS = 1000
_FULL_SCALE = 32768.0


class SteadyGate:
    """One channel's steady-sound detector: feed it every decided frame in order."""

    def __init__(self, frame_samples: int, frame_ms: int = 20, hold_min_ms: int = 3000) -> None:
        if frame_samples <= 0 or frame_ms <= 0 or hold_min_ms < 0:
            raise ValueError("frame_samples and frame_ms must be > 0 and hold_min_ms >= 0")
        self.frame_samples = frame_samples
        self.frame_ms = frame_ms
        self.hold_min_ms = hold_min_ms
        self._size = BLOCK_FRAMES * frame_samples
        self._window = np.hanning(self._size)
        self._quiet = (10.0 ** (QUIET_DBFS / 10.0)) * (_FULL_SCALE * _FULL_SCALE) * self._size
        self._faint = (10.0 ** (UNSPOKEN_MIN_DBFS / 10.0)) * (_FULL_SCALE * _FULL_SCALE) * self._size
        self._pending = np.zeros(0, dtype=np.int16)  # samples of the block being filled
        self._pending_flags = np.zeros(0, dtype=bool)  # and the VAD flags of its frames
        self._previous: np.ndarray | None = None  # normalised spectrum of the last loud block
        self._steady = False
        self._run = 0  # loud blocks in a row towards leaving the steady state
        self._quiet_run = 0  # quiet blocks in a row towards leaving it
        self._stretch = 0  # frames of the current steady stretch
        self._block_first = 0  # channel frame where the block being filled starts
        self._recent: deque[tuple[bool, int]] = deque(maxlen=STEADY_ENTER_OF)  # (steady?, first frame) of the last blocks
        self._entries: list[tuple[int, int]] = []
        self._unspoken = False  # latched by the engine's speech check (hear)
        self._frames = 0  # frames pushed or skipped
        self._steady_at: int | None = None  # the last push end while a stretch of SUSPECT_STRETCH_MS or more ran
        self._unspoken_quiet = 0  # quiet blocks in a row towards releasing the latch
        self.last_unspoken = np.zeros(0, dtype=bool)
        """Per frame of the last push: in the state only because of the latch (the gate itself not steady)."""
        self.steady_frames = 0
        """Frames decided while steady (voiced or not)."""
        self.hold_frames = 0
        """Frames of steady stretches at least hold_min_ms long."""
        self.holds = 0
        """Steady stretches that reached hold_min_ms."""

    @property
    def steady(self) -> bool:
        """The channel is in the steady state now."""
        return self._steady

    @property
    def unspoken(self) -> bool:
        """The engine's speech check found this channel's last loud window not to be speech (see hear)."""
        return self._unspoken

    def suspect(self, within_frames: int) -> bool:
        """The channel may be playing music: steady now, latched as not speech, or in a steady stretch of at least
        SUSPECT_STRETCH_MS within the last `within_frames` frames."""
        return self._steady or self._unspoken or (self._steady_at is not None and self._frames - self._steady_at <= within_frames)

    def hear(self, speech: bool) -> None:
        """What the engine's speech check (silero-vad, service/inference/speech.py) made of a loud window of this
        channel. Not speech - music the spectral test cannot tell from a voice (a fast passage, singing) - latches the
        channel in the steady state: from the next frame on its voiced frames are not speech and count towards a hold,
        as steady sound does. Speech releases it, and so do UNSPOKEN_RELEASE_BLOCKS faint blocks in a row (the music
        stopped) and a stretch without audio. The caller releases it too when it gets no verdict (a window dropped or
        failed in the engine): unsure, a voice counts as speech."""
        self._unspoken = not speech
        self._unspoken_quiet = 0

    def give_back(self, frames: int) -> None:
        """Release the latch (hear(speech=True)), the last `frames` frames of the channel having been speech after all:
        they leave the current steady stretch, which stays a hold only if it is still hold_min_ms long without them.
        The gate's own steady state (a tone or chord it heard) keeps its stretch."""
        if frames < 0:
            raise ValueError(f"cannot give back a negative number of frames ({frames})")
        self.hear(speech=True)
        if self._steady or not self._stretch:
            return
        frames = min(frames, self._stretch)
        hold_min = max(1, -(-self.hold_min_ms // self.frame_ms))
        if self._stretch >= hold_min:
            if self._stretch - frames >= hold_min:
                self.hold_frames -= frames
            else:
                self.holds -= 1
                self.hold_frames -= self._stretch
        self.steady_frames -= frames
        self._stretch = 0  # the stretch ended where the speech began

    @property
    def deciding(self) -> bool:
        """Some of the last blocks look steady but not yet enough of them: the gate may still take them, and the
        frames before them back to where the steady run began, as steady sound (see take_entries)."""
        return self.earliest_entry_frame() is not None

    def earliest_entry_frame(self) -> int | None:
        """The earliest channel frame that an entry into the steady state could still mark as steady (take_entries),
        given the blocks seen so far; None when no entry can include any of them.

        A steady block among the last STEADY_ENTER_OF can still start an entry only if enough further steady
        blocks can arrive before it leaves them: a lone steady block 400 ms back cannot, so speech with a held
        vowel here and there keeps no window waiting."""
        if self._steady:
            return None
        free = STEADY_ENTER_OF - len(self._recent)
        steady_from = sum(flag for flag, _ in self._recent)  # steady blocks from this one to the newest
        for position, (flag, start) in enumerate(self._recent):
            if flag:
                if STEADY_ENTER_BLOCKS - steady_from <= position + free:  # blocks still to come while it is among the last
                    return max(0, start - BLOCK_FRAMES)
                steady_from -= 1
        return None

    def take_entries(self) -> list[tuple[int, int]]:
        """Channel frame ranges [first, end) of the steady sound that made the gate enter the steady state since the
        last call: those frames were decided before the gate knew (as speech), and a caller may correct its records."""
        entries, self._entries = self._entries, []
        return entries

    @property
    def hold_ms(self) -> int:
        """Length of the current steady stretch once it is a hold (0 otherwise)."""
        return self._stretch * self.frame_ms if self._stretch * self.frame_ms >= self.hold_min_ms else 0

    def push(self, samples: np.ndarray, frames: int, voiced: np.ndarray | None = None) -> np.ndarray:
        """The next `frames` frames (int16 samples of whole frames) and, optionally, the VAD's flag of each (a block
        with no voiced frame is not compared, like a quiet one: it cannot hold speech to take away, and this halves
        the work on a call); returns per frame whether the channel was in the steady state (a steady sound is
        playing, or the channel is latched as not speech: see hear and last_unspoken), each frame with the state the
        block before its own left. The caller takes VAD-voiced frames in that state as not speech."""
        n = frames
        if n == 0:
            self.last_unspoken = np.zeros(0, dtype=bool)
            return np.zeros(0, dtype=bool)
        samples = np.asarray(samples, dtype=np.int16)[: n * self.frame_samples]
        flags = np.ones(n, dtype=bool) if voiced is None else np.asarray(voiced, dtype=bool)[:n]
        fs = self.frame_samples
        filled = len(self._pending) // fs
        data = np.concatenate((self._pending, samples)) if filled else samples
        data_flags = np.concatenate((self._pending_flags, flags)) if filled else flags
        whole = len(data) // self._size
        # Every frame takes the state as it stood when its block began (the state the previous block left), so
        # the decisions do not depend on how the audio is split into pushes.
        decided = np.empty(n, dtype=bool)
        latched = np.zeros(n, dtype=bool)
        index = 0
        if whole:
            spectra = None
            if not data_flags[: whole * BLOCK_FRAMES].any():  # no voiced frame: every block counts as quiet
                loud = np.zeros(whole, dtype=bool)
                strong = loud
            else:
                blocks = data[: whole * self._size].astype(np.float64).reshape(whole, self._size)
                power = np.einsum("bs,bs->b", blocks, blocks)
                loud = (power > self._quiet) & data_flags[: whole * BLOCK_FRAMES].reshape(whole, BLOCK_FRAMES).any(axis=1)
                strong = loud & (power > self._faint)
            if np.count_nonzero(loud):
                spectrum = np.fft.rfft(blocks[loud] * self._window, axis=1)
                spectra = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
                spectra /= np.maximum(spectra.sum(axis=1, keepdims=True), 1e-30)
            row = 0
            for b in range(whole):
                count = BLOCK_FRAMES - filled if b == 0 else BLOCK_FRAMES
                decided[index : index + count] = self._steady
                if self._unspoken and not self._steady:
                    latched[index : index + count] = True
                index += count
                if loud[b]:
                    current = spectra[row]
                    row += 1
                    overlap = float(np.minimum(current, self._previous).sum()) if self._previous is not None else 0.0
                    self._previous = current
                else:
                    overlap = 0.0
                    self._previous = None
                if self._unspoken:
                    self._unspoken_quiet = 0 if strong[b] else self._unspoken_quiet + 1
                    if self._unspoken_quiet >= UNSPOKEN_RELEASE_BLOCKS:
                        self._unspoken, self._unspoken_quiet = False, 0
                self._step(overlap, quiet=not loud[b])
                self._block_first += BLOCK_FRAMES
        decided[index:] = self._steady
        latched[index:] = self._unspoken and not self._steady
        self._pending = data[whole * self._size :].copy()
        self._pending_flags = data_flags[whole * BLOCK_FRAMES :].copy()
        self._frames += n
        if self._unspoken or latched.any():
            decided |= latched
        self.last_unspoken = latched
        self._account(decided)
        if self._stretch * self.frame_ms >= SUSPECT_STRETCH_MS:
            self._steady_at = self._frames
        return decided

    def _step(self, overlap: float, quiet: bool) -> None:
        """The state after the block starting at channel frame self._block_first, whose overlap with the block before
        it is `overlap` (0 when either is `quiet`)."""
        if not self._steady:
            self._recent.append((overlap >= STEADY_ENTER, self._block_first))
            if sum(flag for flag, _ in self._recent) >= STEADY_ENTER_BLOCKS:
                self._steady, self._run = True, 0
                # The steady sound began at the block before the first that matched its predecessor.
                first = next(start for flag, start in self._recent if flag) - BLOCK_FRAMES
                self._entries.append((max(0, first), self._block_first + BLOCK_FRAMES))
                self._recent.clear()
        elif quiet:
            self._quiet_run += 1
            if self._quiet_run >= QUIET_EXIT_BLOCKS:
                self._steady, self._run, self._quiet_run = False, 0, 0
        else:
            self._quiet_run = 0
            self._run = self._run + 1 if overlap < STEADY_EXIT else 0
            if self._run >= STEADY_EXIT_BLOCKS:
                self._steady, self._run = False, 0

    def _account(self, decided: np.ndarray) -> None:
        """Steady and hold time over the decided frames, in order."""
        hold_min = max(1, -(-self.hold_min_ms // self.frame_ms))
        if not self._stretch and not decided.any():
            return
        for state in decided.tolist():
            if state:
                self._stretch += 1
                self.steady_frames += 1
                if self._stretch == hold_min:
                    self.holds += 1
                    self.hold_frames += hold_min
                elif self._stretch > hold_min:
                    self.hold_frames += 1
            else:
                self._stretch = 0

    def skip(self, frames: int) -> None:
        """`frames` frames of audio that will never come: nothing carries across them."""
        self._block_first += len(self._pending) // self.frame_samples + frames
        self._frames += frames
        self._pending = np.zeros(0, dtype=np.int16)
        self._pending_flags = np.zeros(0, dtype=bool)
        self._previous = None
        self._steady = False
        self._run = self._quiet_run = 0
        self._stretch = 0
        self._recent.clear()
        self._unspoken, self._unspoken_quiet = False, 0


class FrameMarks:
    """Per-frame marks of one channel over its recent frames (a ring by absolute frame index): which frames
    were speech and which were steady sound, for the windows cut over them."""

    NONE, SPEECH, STEADY, UNSPOKEN, UNSPOKEN_SPEECH = 0, 1, 2, 3, 4
    """UNSPOKEN: a voiced frame the latch took out of speech; UNSPOKEN_SPEECH: one that would have counted as the speaker's
    speech (not near silence, not the other side's bleed), which `give_back` can make speech again."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self._marks = np.zeros(capacity, dtype=np.uint8)
        self._index = np.full(capacity, -1, dtype=np.int64)
        self._next = 0

    def push(self, speech: np.ndarray, steady: np.ndarray, unspoken: np.ndarray | None = None,
             unspoken_speech: np.ndarray | None = None) -> None:
        """The marks of the next frames (bool arrays of equal length): speech, steady sound, voiced frames taken out of
        speech because the engine's speech check latched the channel (SteadyGate.hear), and those of them that would
        have counted as speech."""
        n = len(speech)
        if not n:
            return
        capacity = len(self._marks)
        keep = min(n, capacity)
        frames = np.arange(self._next + n - keep, self._next + n, dtype=np.int64)
        slots = frames % capacity
        marks = np.asarray(speech[n - keep :], dtype=bool).astype(np.uint8)  # SPEECH = 1, NONE = 0
        marks[np.asarray(steady[n - keep :], dtype=bool)] = self.STEADY
        if unspoken is not None:
            marks[np.asarray(unspoken[n - keep :], dtype=bool)] = self.UNSPOKEN
        if unspoken_speech is not None:
            marks[np.asarray(unspoken_speech[n - keep :], dtype=bool)] = self.UNSPOKEN_SPEECH
        self._marks[slots] = marks
        self._index[slots] = frames
        self._next += n

    def skip(self, frames: int) -> None:
        """Frames that will never come carry no mark."""
        self._next += frames

    def _held(self, first: int, end: int) -> np.ndarray:
        """Ring slots of the frames of [first, end) still held (older ones were overwritten, later ones not marked)."""
        capacity = len(self._marks)
        low, high = max(first, self._next - capacity, 0), min(end, self._next)
        if high <= low:
            return np.zeros(0, dtype=np.int64)
        frames = np.arange(low, high, dtype=np.int64)
        slots = frames % capacity
        return slots[self._index[slots] == frames]

    def _remark_speech(self, first: int, end: int, mark: int) -> int:
        """Held frames of [first, end) marked as speech get `mark`; returns how many changed."""
        slots = self._held(first, end)
        slots = slots[self._marks[slots] == self.SPEECH]
        self._marks[slots] = mark
        return len(slots)

    def mark_steady(self, first: int, end: int) -> None:
        """Held frames of [first, end) marked as speech become steady sound (a decision the gate made late)."""
        self._remark_speech(first, end, self.STEADY)

    def mark_unspoken(self, first: int, end: int) -> int:
        """Held frames of [first, end) marked as speech become the latch's (the speech check found them not to be speech
        before the latch took effect), marked as frames that were speech (a release may give them back); returns how
        many changed."""
        return self._remark_speech(first, end, self.UNSPOKEN_SPEECH)

    def give_back(self, first: int, end: int) -> int:
        """Held frames of [first, end) that the latch took out of speech and that would have counted as speech become
        speech again (the check heard speech there after all); returns how many changed."""
        slots = self._held(first, end)
        slots = slots[self._marks[slots] == self.UNSPOKEN_SPEECH]
        self._marks[slots] = self.SPEECH
        return len(slots)

    @property
    def end(self) -> int:
        """The frame after the last one marked (or skipped)."""
        return self._next

    def count(self, first: int, end: int) -> tuple[int, int]:
        """(speech frames, steady frames) among the held frames of [first, end)."""
        marks = self._marks[self._held(first, end)]
        return int(np.count_nonzero(marks == self.SPEECH)), int(np.count_nonzero(marks == self.STEADY))

    def unspoken(self, first: int, end: int) -> int:
        """Voiced frames among the held frames of [first, end) taken out of speech by the speech check's latch."""
        return int(np.count_nonzero(self._marks[self._held(first, end)] >= self.UNSPOKEN))
