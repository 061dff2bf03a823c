"""Laughter on one channel: runs of syllable nuclei that repeat one sound ("ha-ha-ha"), which are not syllables of speech.

A laugh is a train of bursts of one and the same vowel, a few per second; speech moves from sound to sound, so the
spectra of its consecutive syllables differ. Each confirmed syllable nucleus gets the spectral envelope of the 64 ms
ending at its peak (12 mel-cepstral coefficients, the level left out); a run of at least `min_bursts` nuclei, each
at most `max_gap_ms` after the last and with an envelope within `max_distance` of the last one's, is laughter when at
least `min_broken_share` of its gaps hold an unpitched frame (a laugh breathes out between its bursts; connected
speech keeps voicing through its consonants).
Its nuclei are taken back from the speaker's syllable count (they were counted as they were confirmed, before the
run was long enough to tell), and the summary reports the laughs and their time.

No trained laughter detector that ships its weights in a package can be installed here (the speech detectors that
do, silero-vad among them, take laughter for speech), so this is a signal rule; its thresholds come from the
measurements in README "Laughter is not syllables" (`python -m clients.eval_signal --vocal-dir DIR`). It does not
tell a cough, a sigh or a single chuckle from speech: they are not repeated.
"""

from __future__ import annotations

import functools

import numpy as np

ENVELOPE_MS = 64  # the audio ending at a nucleus's peak frame whose spectrum is compared (the contour's window)
MEL_BANDS = 24
MEL_LOW_HZ, MEL_HIGH_HZ = 100.0, 3800.0  # the telephone band, whatever the sample rate
CEPSTRA = 12  # coefficients 1..12 (0, the level, left out: a laugh fades)


@functools.lru_cache(maxsize=4)
def _envelope_basis(sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Hann window, mel filterbank (bands x bins), DCT-II rows 1..CEPSTRA (orthonormal)) for `sample_rate`."""
    n = sample_rate * ENVELOPE_MS // 1000
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(MEL_LOW_HZ), mel(MEL_HIGH_HZ), MEL_BANDS + 2))
    bins = np.fft.rfftfreq(n, 1.0 / sample_rate)
    bank = np.zeros((MEL_BANDS, len(bins)))
    for band in range(MEL_BANDS):
        low, centre, high = edges[band : band + 3]
        bank[band] = np.maximum(0.0, np.minimum((bins - low) / (centre - low), (high - bins) / (high - centre)))
    k = np.arange(1, CEPSTRA + 1)[:, None]
    m = np.arange(MEL_BANDS)[None, :]
    dct = np.sqrt(2.0 / MEL_BANDS) * np.cos(np.pi * k * (2 * m + 1) / (2 * MEL_BANDS))
    return np.hanning(n), bank, dct


def envelopes(windows: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mel-cepstral envelope (CEPSTRA coefficients) of each row of `windows` (rows of ENVELOPE_MS of samples)."""
    hann, bank, dct = _envelope_basis(sample_rate)
    spectrum = np.abs(np.fft.rfft(windows * hann, axis=1)) ** 2
    return np.log(spectrum @ bank.T + 1.0) @ dct.T


class LaughterRuns:
    """Streaming laughter detector over one channel's confirmed syllable nuclei (frame indices, ascending) and
    their envelopes. State: the run in progress and whole-call counts."""

    def __init__(self, frame_ms: int, min_bursts: int = 4, max_gap_ms: int = 250, max_distance: float = 6.0,
                 min_broken_share: float = 0.5) -> None:
        if min_bursts < 2:
            raise ValueError(f"min_bursts must be >= 2, got {min_bursts}")
        if max_gap_ms < frame_ms:
            raise ValueError(f"max_gap_ms must be at least one frame ({frame_ms} ms), got {max_gap_ms}")
        if max_distance <= 0:
            raise ValueError(f"max_distance must be > 0, got {max_distance}")
        if not 0.0 <= min_broken_share <= 1.0:
            raise ValueError(f"min_broken_share must be within 0..1, got {min_broken_share}")
        self.frame_ms = frame_ms
        self.min_bursts = min_bursts
        self.max_gap = max_gap_ms // frame_ms
        self.max_distance = max_distance
        self.min_broken_share = min_broken_share
        self._run: list[int] = []  # nuclei frames of the run in progress
        self._broken = 0  # gaps of the run with an unpitched frame (the breath between bursts)
        self._taken = False  # the run in progress is laughter
        self._last: np.ndarray | None = None  # the envelope of its last nucleus
        self.laughs = 0
        """Runs taken as laughter, closed so far."""
        self.laughter_frames = 0
        """Frames of those runs (first nucleus to last, plus one gap)."""
        self.nuclei = 0
        """Nuclei taken as laughter."""

    def push(self, frames: np.ndarray, envelope: np.ndarray, broken: np.ndarray | None = None) -> list[int]:
        """The next confirmed nuclei (`envelope[i]` of `frames[i]`; a row of NaN where the audio was not held; `broken[i]`:
        an unpitched frame lies between it and the nucleus before it, all True if None) -> the nuclei frames taken as
        laughter now: a whole run as it becomes laughter, each later nucleus of it as it comes. A run becomes laughter
        once it has `min_bursts` nuclei and at least `min_broken_share` of its gaps are broken: a laugh breathes out
        between its bursts ("ha-ha"), while connected speech often keeps voicing through its consonants (real read speech
        whose consecutive syllables sounded alike: one of its three gaps broken)."""
        taken: list[int] = []
        for i, frame in enumerate(frames.tolist()):
            row = envelope[i]
            usable = not np.isnan(row[0])
            follows = (usable and self._last is not None and frame - self._run[-1] <= self.max_gap
                       and float(np.linalg.norm(row - self._last)) <= self.max_distance)
            if follows:
                self._run.append(frame)
                self._broken += bool(broken is None or broken[i])
                if self._taken:
                    taken.append(frame)
                elif len(self._run) >= self.min_bursts and self._broken >= self.min_broken_share * (len(self._run) - 1):
                    self._taken = True
                    taken.extend(self._run)
            else:
                self._close()
                self._run = [frame]
            self._last = row if usable else None
        self.nuclei += len(taken)
        return taken

    def reset(self) -> None:
        """The audio has a gap: the run in progress ends."""
        self._close()
        self._run, self._last = [], None

    def _close(self) -> None:
        if self._taken:
            self.laughs += 1
            self.laughter_frames += self._span(self._run)
        self._run, self._broken, self._taken = [], 0, False

    def _span(self, run: list[int]) -> int:
        return run[-1] - run[0] + (run[-1] - run[0]) // (len(run) - 1)

    def totals(self) -> tuple[int, int]:
        """(laughs, laughter ms) so far, the run in progress included when it is laughter already."""
        laughs, frames = self.laughs, self.laughter_frames
        if self._taken:
            laughs, frames = laughs + 1, frames + self._span(self._run)
        return laughs, frames * self.frame_ms
