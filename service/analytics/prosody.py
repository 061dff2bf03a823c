"""Per-speaker prosody computed inline on the CPU: frame levels, YIN pitch, syllable nuclei and the loudness baseline.

Everything here runs for every channel of every call in the process, so the work is vectorised with
numpy over a block of VAD frames (a push); Python-level loops only run per push or per handful of
frames, never per sample. Memory per channel is bounded by `history_ms` plus fixed-size histograms,
whatever the call length.

References:
  A. de Cheveigné, H. Kawahara (2002), "YIN, a fundamental frequency estimator for speech and music",
  J. Acoust. Soc. Am. 111(4), 1917-1930.
  N. H. de Jong, T. Wempe (2009), "Praat script to detect syllable nuclei and measure speech rate
  automatically", Behavior Research Methods 41(2), 385-390.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from service.analytics.laughter import CEPSTRA, ENVELOPE_MS, LaughterRuns, envelopes

SILENCE_DBFS = -96.0

FULL_SCALE = 32768.0
# Mean-square power relative to full scale below which a level reads as SILENCE_DBFS.
_FLOOR_POWER = 10.0 ** (SILENCE_DBFS / 10.0)

# Level histograms (baseline, nucleus threshold): fixed 0.25 dB bins centred on SILENCE_DBFS .. 0 dBFS.
LEVEL_BIN_DB = 0.25
BASELINE_BLOCK_MS = 500
"""The baseline is the median level of consecutive blocks of this much voiced speech (each block's level
is the power mean of its frames), the same statistic as a window's loudness of its new speech."""
_LEVEL_BINS = int(round(-SILENCE_DBFS / LEVEL_BIN_DB)) + 1

# Pitch search range of the tracker and its whole-call pitch histogram (0.1 semitone bins from PITCH_FMIN_HZ).
PITCH_FMIN_HZ = 60.0
PITCH_FMAX_HZ = 400.0
PITCH_BIN_ST = 0.1
_PITCH_BINS = int(round(12.0 * math.log2(PITCH_FMAX_HZ / PITCH_FMIN_HZ) / PITCH_BIN_ST)) + 1

# The tracker estimates pitch at 8 kHz (16 kHz audio is decimated) over a window that ends at the
# frame end; 40 ms holds two periods of the lowest F0 searched plus the lags, as yin_f0 requires.
PITCH_RATE = 8000
PITCH_WINDOW_MS = 40
# Speech is low-passed to this before YIN: the higher harmonics and formant transitions make d'(tau)
# ragged within a 40 ms window, so without it many plainly voiced frames miss the 0.15 threshold.
PITCH_LOWPASS_HZ = 1000.0
# YIN on phone speech sometimes locks onto a harmonic for a frame or three (F0 read 1.8-3x too high).
# A pitched frame more than PITCH_JUMP_ST from the median F0 of the speaker's previous
# PITCH_REFERENCE_FRAMES pitched frames is such an error and gets no F0 (it stays pitched for the
# syllable detector). A real, sustained jump is accepted once half the reference has moved (~100 ms).
PITCH_JUMP_ST = 9.0
PITCH_REFERENCE_FRAMES = 9
PITCH_MIN_REFERENCE = 3
# The intensity contour for syllable nuclei is the Hann-weighted level over this much audio ending at each
# frame end: it smooths the ripple within a vowel (a 40 ms flat window split long vowels into two nuclei)
# as Praat's intensity analysis in the de Jong & Wempe script does (a Kaiser window of 3.2 / 50 Hz = 64 ms).
CONTOUR_WINDOW_MS = 64
# YIN's cumulative mean normalised difference below which a frame is voiced enough to hold a syllable
# nucleus. The script checks that Praat finds a pitch at the peak with a permissive voicing threshold
# (0.25 where Praat's default is 0.45); YIN's strict 0.15, right for the F0 itself, missed about a third
# of the nuclei of fast speech (espeak-ng at 230 words/min: 10 of 17 syllables found; 0.35: 16).
NUCLEUS_VOICING = 0.35
# The syllable detector's intensity threshold is refreshed at multiples of this much call time.
THRESHOLD_UPDATE_MS = 500
# ProsodyTrack analyses queued frames once this much audio is queued (or when a result is read).
BATCH_MS = 1000
# Raw audio kept from one analysed block to the next for the laughter check's envelopes: a nucleus is confirmed in the
# block where the contour dips after its peak, at most a few frames into the next block (the peak's 64 ms must still
# be there; a peak older than that breaks a run). 4.8 KB per channel at 8 kHz.
RECENT_MS = 300
LAUGH_REACH_MS = 100  # voiced frames this close to a burst of laughter are the laugh's, not speech (half its period)


def loudness_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    if len(samples) == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    if rms <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * np.log10(rms / 32768.0))


def _power_db(power: np.ndarray) -> np.ndarray:
    """dBFS of mean-square powers relative to full scale, floored at SILENCE_DBFS."""
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(power), SILENCE_DBFS)


def _positive_power_db(power: np.ndarray) -> np.ndarray:
    """_power_db of powers known to be > 0 (no division-by-zero warning to silence)."""
    return np.maximum(10.0 * np.log10(power), SILENCE_DBFS)


def _strided_rows(signal: np.ndarray, width: int, step: int) -> np.ndarray:
    """Read-only view of the windows signal[k*step : k*step + width] for every whole window
    (sliding_window_view(signal, width)[::step] without its overhead)."""
    count = (len(signal) - width) // step + 1
    stride = signal.strides[0]
    return np.lib.stride_tricks.as_strided(signal, shape=(max(count, 0), width), strides=(step * stride, stride), writeable=False)


def _frame_power(frames: np.ndarray) -> np.ndarray:
    """Mean-square power of each row relative to full scale (float64)."""
    x = frames.astype(np.float64, copy=False)
    width = max(x.shape[1], 1)
    return np.einsum("ij,ij->i", x, x) / (width * FULL_SCALE * FULL_SCALE)


def frame_levels_db(frames: np.ndarray) -> np.ndarray:
    """RMS level of each int16 frame of `frames` (shape (n, L)) in dBFS as float64, floored at SILENCE_DBFS.

    Same scale as loudness_dbfs: a full-scale square wave is 0 dBFS, a sine of amplitude A is
    20*log10(A / sqrt(2) / 32768).
    """
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"frames must have shape (n, L), got {frames.shape}")
    return _power_db(_frame_power(frames))


def yin_min_samples(sample_rate: int, fmin: float = PITCH_FMIN_HZ) -> int:
    """Shortest frame yin_f0 accepts: 2 * ceil(sample_rate / fmin) + 2 samples (33.5-34 ms at fmin 60 Hz)."""
    return 2 * int(math.ceil(sample_rate / fmin)) + 2


@functools.lru_cache(maxsize=64)
def _fft_size(n: int) -> int:
    """Smallest 2^a * 3^b * 5^c >= n (fast sizes for numpy's FFT)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def yin_f0(
    frames: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 400.0, threshold: float = 0.15
) -> np.ndarray:
    """YIN fundamental frequency of each frame (de Cheveigné & Kawahara 2002): yin() without its voicing flags."""
    return yin(frames, sample_rate, fmin, fmax, threshold)[0]


def yin(
    frames: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 400.0, threshold: float = 0.15,
    voicing_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """YIN fundamental frequency of each frame (de Cheveigné & Kawahara 2002), vectorised over the frames, and
    whether each frame is periodic by the looser `voicing_threshold` (d' below it somewhere in the lag range;
    `threshold` when None).

    `frames`: shape (n, L), float or int16, one analysis window per row. Steps of the paper: the
    difference function d(tau) over an integration window of W = L - tau_max - 1 samples (computed for
    all frames at once through the FFT cross-correlation and running energies), the cumulative mean
    normalised difference d'(tau), the absolute threshold (the first lag in [sr/fmax, sr/fmin] where
    d' < `threshold`, followed down to its local minimum) and parabolic interpolation of the raw d(tau)
    around that lag. Where d' never drops below the threshold (unvoiced, aperiodic or silent frames) the
    frame has no period and gets NaN; the paper's fallback to the global minimum is not used.

    L must be at least yin_min_samples(sample_rate, fmin) = 2 * ceil(sample_rate / fmin) + 2 samples
    (270 at 8 kHz, 536 at 16 kHz with fmin 60 Hz): the lags up to one period of fmin plus an integration
    window at least that long. Returns float64 Hz per frame and the bool voicing flags.
    """
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"frames must have shape (n, L), got {x.shape}")
    if not 0 < fmin < fmax < sample_rate / 2:
        raise ValueError(f"need 0 < fmin < fmax < sample_rate / 2, got fmin={fmin}, fmax={fmax}")
    n, length = x.shape
    tau_min = max(2, int(sample_rate / fmax))
    tau_max = int(math.ceil(sample_rate / fmin))
    if length < yin_min_samples(sample_rate, fmin):
        raise ValueError(
            f"yin_f0 needs frames of at least {yin_min_samples(sample_rate, fmin)} samples at {sample_rate} Hz "
            f"with fmin {fmin} Hz, got {length}"
        )
    f0 = np.full(n, np.nan)
    if n == 0:
        return f0, np.zeros(0, bool)
    width = length - tau_max - 1
    lags = tau_max + 2  # d(tau) for tau = 0 .. tau_max + 1 (the +1 serves the interpolation)
    nfft = _fft_size(length)  # no circular wrap: j + tau <= width - 1 + tau_max + 1 = length - 1
    spectrum = np.fft.rfft(x, nfft, axis=1)
    head = np.fft.rfft(x[:, :width], nfft, axis=1)
    corr = np.fft.irfft(spectrum * np.conj(head), nfft, axis=1)[:, :lags]
    energy = np.zeros((n, length + 1))
    (x * x).cumsum(axis=1, out=energy[:, 1:])
    tau = _lags(lags)
    # d(tau) = sum_{j<W} x_j^2 + sum_{j<W} x_{j+tau}^2 - 2 sum_{j<W} x_j x_{j+tau}
    diff = energy[:, width : width + 1] + (energy[:, width : width + lags] - energy[:, :lags]) - 2.0 * corr
    np.maximum(diff, 0.0, out=diff)
    diff[:, 0] = 0.0
    running = diff[:, 1:].cumsum(axis=1)
    cmnd = np.ones_like(diff)
    np.divide(diff[:, 1:] * tau[1:], running, out=cmnd[:, 1:], where=running > 0)  # only where defined: no warning
    search = cmnd[:, tau_min : tau_max + 1]
    below = search < threshold
    found = below.any(axis=1)
    loose = threshold if voicing_threshold is None else max(threshold, voicing_threshold)
    periodic = found if loose == threshold else search.min(axis=1) < loose
    if not np.count_nonzero(found):
        return f0, periodic
    rows = np.flatnonzero(found)
    first = below[rows].argmax(axis=1) + tau_min
    # Follow the dip down to its local minimum: the first lag >= first whose successor is not lower.
    sub = cmnd[rows]
    rising = sub[:, 1 : tau_max + 2] >= sub[:, : tau_max + 1]
    rising &= tau[None, : tau_max + 1] >= first[:, None]
    best = np.where(rising.any(axis=1), rising.argmax(axis=1), tau_max)
    d = diff[rows]
    left, mid, right = (d[np.arange(len(rows)), best + k] for k in (-1, 0, 1))
    curve = left - 2.0 * mid + right
    shift = np.zeros(len(rows))
    np.divide(0.5 * (left - right), curve, out=shift, where=curve > 0)
    period = best + np.minimum(np.maximum(shift, -1.0), 1.0)  # np.clip without its wrapper
    estimate = sample_rate / period
    estimate[(estimate < fmin) | (estimate > fmax)] = np.nan
    f0[rows] = estimate
    return f0, periodic


@functools.lru_cache(maxsize=8)
def _lags(count: int) -> np.ndarray:
    """0 .. count-1 as float-free int64 (read-only, shared)."""
    lags = np.arange(count)
    lags.setflags(write=False)
    return lags


def pitch_jumps(previous: np.ndarray, f0: np.ndarray, max_jump_st: float = PITCH_JUMP_ST,
                reference_frames: int = PITCH_REFERENCE_FRAMES, min_reference: int = PITCH_MIN_REFERENCE) -> np.ndarray:
    """Where F0 jumps away from the speaker's recent pitch: True for each pitched (non-NaN) entry of `f0`
    more than `max_jump_st` semitones from the median of the `reference_frames` pitched values before it
    (`previous`, oldest first, then the earlier entries of `f0`), when there are at least `min_reference`
    of them. The reference holds raw values, jumps included, so a sustained change of pitch is accepted
    as soon as it makes up half the reference."""
    f0 = np.asarray(f0, dtype=np.float64)
    jumps = np.zeros(len(f0), bool)
    rows = np.flatnonzero(~np.isnan(f0))
    if not len(rows):
        return jumps
    previous = np.asarray(previous, dtype=np.float64)[-reference_frames:]
    if np.isnan(previous).any():
        return _pitch_jumps_nan(previous, f0, rows, jumps, max_jump_st, reference_frames, min_reference)
    # Row j: the reference_frames values before the j-th new pitched value; the first rows reach back
    # before the call's first pitched frame and hold only the last len(previous) + j of them.
    values = np.concatenate((previous, f0[rows]))
    held = np.minimum(len(previous) + np.arange(len(rows)), reference_frames)
    enough = held >= min_reference
    if not enough.any():
        return jumps
    median = np.empty(len(rows))
    full = np.flatnonzero(held == reference_frames)
    if len(full):
        # The middle value of each sorted row (or the halved sum of the two middle ones) is np.median's and
        # nanmedian's answer when no value is missing, bit for bit, at a tenth of np.median's cost on rows this short.
        reference = np.sort(_strided_rows(values, reference_frames, 1)[full + len(previous) - reference_frames], axis=1)
        half = reference_frames // 2
        median[full] = reference[:, half] if reference_frames % 2 else (reference[:, half - 1] + reference[:, half]) / 2.0
    for j in np.flatnonzero(enough & (held < reference_frames)).tolist():
        median[j] = np.median(values[len(previous) + j - held[j]: len(previous) + j])
    distance = np.abs(12.0 * np.log2(f0[rows[enough]] / median[enough]))
    jumps[rows[enough]] = distance > max_jump_st
    return jumps


def _pitch_jumps_nan(previous: np.ndarray, f0: np.ndarray, rows: np.ndarray, jumps: np.ndarray, max_jump_st: float,
                     reference_frames: int, min_reference: int) -> np.ndarray:
    """pitch_jumps when `previous` itself has missing (NaN) values."""
    sequence = np.concatenate((np.full(reference_frames - len(previous), np.nan), previous, f0[rows]))
    reference = np.lib.stride_tricks.sliding_window_view(sequence, reference_frames)[: len(rows)]
    enough = np.count_nonzero(~np.isnan(reference), axis=1) >= min_reference
    if not enough.any():
        return jumps
    median = np.nanmedian(reference[enough], axis=1)
    distance = np.abs(12.0 * np.log2(f0[rows[enough]] / median))
    jumps[rows[enough]] = distance > max_jump_st
    return jumps


@functools.lru_cache(maxsize=None)
def _pitch_taps(sample_rate: int) -> np.ndarray:
    """Linear-phase low-pass FIR (Hamming window, cutoff PITCH_LOWPASS_HZ) applied before YIN; at 16 kHz it
    is also the anti-alias filter of the decimation to 8 kHz. 31 taps at 8 kHz, 61 at 16 kHz (~2 ms delay)."""
    taps = 31 if sample_rate == PITCH_RATE else 61
    cutoff = PITCH_LOWPASS_HZ / sample_rate
    k = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * k) * np.hamming(taps)
    h = h / h.sum()
    h.setflags(write=False)
    return h


def _lowpass(ext: np.ndarray, taps: np.ndarray, decimation: int, start: int, end: int) -> np.ndarray:
    """Samples [start, end) of the pitch low-pass at 8 kHz of `ext` (the input with the filter's
    len(taps) - 1 samples of history in front). At 16 kHz (decimation 2) output m is the filter ending at
    input sample 2m + 1, as two polyphase branches at 8 kHz. Each output is its own dot product with the
    taps, so a stretch computed alone equals the same stretch of the whole."""
    if decimation == 2:
        y = np.convolve(ext[1 + 2 * start : 2 * end + len(taps) - 1 : 2], taps[0::2], mode="valid")
        y += np.convolve(ext[2 + 2 * start : 2 * end + len(taps) - 1 : 2], taps[1::2], mode="valid")
        return y
    return np.convolve(ext[start : end + len(taps) - 1], taps, mode="valid")


def _lowpass_spans(ext: np.ndarray, taps: np.ndarray, decimation: int, count: int, spans: list[tuple[int, int]]) -> np.ndarray:
    """The `count` low-pass output samples of `ext`, computed only inside `spans` ((start, end) pairs,
    possibly overlapping); the others are left 0."""
    spans = sorted(spans)
    if spans[0][0] <= 0 and spans[-1][1] >= count and all(a[1] >= b[0] for a, b in zip(spans, spans[1:])):
        return _lowpass(ext, taps, decimation, 0, count)  # one stretch covers everything
    y = np.zeros(count)
    done = 0
    for start, end in spans:
        start = max(start, done)
        if end > start:
            y[start:end] = _lowpass(ext, taps, decimation, start, end)
            done = end
    return y


@functools.lru_cache(maxsize=4)
def _contour_taps(sample_rate: int) -> np.ndarray:
    """Hann weights over CONTOUR_WINDOW_MS of samples, summing to 1 / FULL_SCALE**2 (power relative to full scale)."""
    width = sample_rate * CONTOUR_WINDOW_MS // 1000
    taps = np.hanning(width + 2)[1:-1]
    taps = taps / (taps.sum() * FULL_SCALE * FULL_SCALE)
    taps.setflags(write=False)
    return taps


def sorted_median(values: np.ndarray) -> float:
    """np.median of a sorted, non-empty 1-d array, bit for bit, without its sort and wrappers."""
    n = len(values)
    middle = n // 2
    return float(values[middle]) if n % 2 else float((values[middle - 1] + values[middle]) / 2)


def sorted_quantile(values: np.ndarray, q: float) -> float:
    """np.quantile(values, q) (its default linear method) of a sorted, non-empty 1-d array, bit for bit: the same
    virtual index and the same two-sided interpolation (numpy's _lerp), without its sort and wrappers."""
    n = len(values)
    virtual = (n - 1) * q
    below = math.floor(virtual)
    low, high = min(max(below, 0), n - 1), min(max(below + 1, 0), n - 1)
    if virtual >= n - 1:
        low = high = n - 1
    a, b = values[low], values[high]
    t = virtual - below
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


def _level_bins(levels: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(np.rint((levels - SILENCE_DBFS) / LEVEL_BIN_DB), 0), _LEVEL_BINS - 1).astype(np.intp)


def _hist_quantile(hist: np.ndarray, q: float) -> int:
    """Bin index of the q-quantile of a histogram with at least one count."""
    cumulative = hist.cumsum()
    return int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))


class SyllableNuclei:
    """Streaming syllable-nucleus detector after de Jong & Wempe (2009), "Praat script to detect syllable
    nuclei and measure speech rate automatically", Behavior Research Methods 41(2), 385-390.

    Works on the intensity contour (dB per frame) and a per-frame "pitched" flag, as the paper's script:
      * the intensity threshold is the 0.99 quantile of the speaker's intensity so far plus `silence_db`
        (-25 dB), but never below the minimum intensity so far; the statistics are a fixed 0.25 dB-bin
        histogram of every frame seen, refreshed at multiples of `update_frames` of call time so that the
        result does not depend on how the frames are split into pushes;
      * a peak is a local maximum of the contour above the threshold;
      * a peak counts only if the contour dips more than `min_dip_db` (2 dB) below it before the next peak
        (the script compares each peak with the minimum between it and the following peak, which is the
        dip that separates two consecutive peaks);
      * a counted peak must be voiced: a pitch was found at the peak frame;
      * not in the script: a peak within `rise_frames` (200 ms) of the nucleus before it counts only if the contour
        also dipped more than `min_rise_db` (0.5 dB) below it since the peak before it (counted or not). A long vowel
        whose intensity sags and swells again (slow speech, a Mandarin tone contour) has a second peak just above the
        sag: the script counts it, and over-counts slow speech (espeak-ng at 120 words per minute: English 1.19,
        Mandarin 1.40 of the syllables). Figures: README "Speech rate".
    A nucleus is confirmed as soon as the contour has dipped that far below its peak, and is reported
    with the frame index of the peak; a confirmed nucleus never moves. State is a handful of scalars and
    the histogram, so memory is constant.
    """

    def __init__(self, silence_db: float = -25.0, min_dip_db: float = 2.0, quantile: float = 0.99, update_frames: int = 25,
                 min_rise_db: float = 0.5, rise_frames: int = 10) -> None:
        if update_frames < 1:
            raise ValueError("update_frames must be >= 1")
        if min_rise_db < 0 or rise_frames < 0:
            raise ValueError(f"min_rise_db and rise_frames must be >= 0, got {min_rise_db} and {rise_frames}")
        self.silence_db = silence_db
        self.min_dip_db = min_dip_db
        self.min_rise_db = min_rise_db
        self.rise_frames = rise_frames
        self.quantile = quantile
        self._update = update_frames
        self._hist = np.zeros(_LEVEL_BINS, np.int64)
        self._min = math.inf
        self._threshold = -math.inf  # until the first refresh every local maximum is above it
        self.reset()

    def reset(self) -> None:
        """Forget the peak search (the audio has a gap); the speaker's intensity statistics are kept."""
        self._prev2 = -math.inf
        self._prev1 = -math.inf
        self._prev1_threshold = math.inf
        self._prev1_pitched = False
        # (frame, contour dB, pitched, the dip before it) awaiting its dip after it
        self._pending: tuple[int, float, bool, float] | None = None
        # The lowest contour since the last peak, up to the frame before the last one seen (that one may still be a peak);
        # -inf until the first peak: the first peak after a start or a gap has no peak before it to rise from.
        self._floor = -math.inf
        self._last_nucleus = -(1 << 62)  # the peak frame of the last nucleus the script's rules confirmed

    def push(self, first_frame: int, contour_db: np.ndarray, pitched: np.ndarray) -> np.ndarray:
        """Feed the contour of frames first_frame.. (contiguous with the previous push unless reset);
        returns the peak frame indices of the nuclei confirmed by these frames (int64, ascending)."""
        n = len(contour_db)
        if n == 0:
            return np.zeros(0, np.int64)
        thresholds = self._thresholds(first_frame, contour_db)
        ext = np.empty(n + 2)
        ext[0], ext[1] = self._prev2, self._prev1
        ext[2:] = contour_db
        mid = ext[1 : n + 1]
        # Local maxima among the frames first_frame-1 .. first_frame+n-2 (one frame of look-ahead).
        peak_threshold = np.empty(n)
        peak_threshold[0] = self._prev1_threshold
        peak_threshold[1:] = thresholds[:-1]
        is_peak = (ext[:n] < mid) & (mid >= ext[2:]) & (mid > peak_threshold)
        peaks = np.flatnonzero(is_peak) + 1  # positions in ext
        peak_pitched = np.empty(n, bool)
        peak_pitched[0] = self._prev1_pitched
        peak_pitched[1:] = pitched[:-1]

        starts = peaks + 1
        values = ext[peaks]
        frames = first_frame - 2 + peaks.astype(np.int64)
        voiced = peak_pitched[peaks - 1]
        # The dip before each peak: since the peak before it (ext[1] is the first frame not in the floor yet).
        rises = np.empty(len(peaks))
        if len(peaks):
            rises[0] = min(self._floor, float(ext[1 : peaks[0]].min())) if peaks[0] > 1 else self._floor
            if len(peaks) > 1:
                bounds = np.empty(2 * len(peaks) - 2, np.intp)
                bounds[0::2], bounds[1::2] = peaks[:-1] + 1, peaks[1:]
                rises[1:] = np.minimum.reduceat(ext, bounds)[::2]
            self._floor = float(ext[peaks[-1] + 1 : n + 1].min()) if peaks[-1] < n else math.inf
        else:
            self._floor = min(self._floor, float(ext[1 : n + 1].min()))
        if self._pending is not None and (len(peaks) == 0 or peaks[0] > 1):
            # The pending peak's dip is sought from this push's first frame up to the next peak.
            frame, value, was_pitched, rise = self._pending
            starts = np.concatenate(([2], starts))
            values = np.concatenate(([value], values))
            frames = np.concatenate(([frame], frames))
            voiced = np.concatenate(([was_pitched], voiced))
            rises = np.concatenate(([rise], rises))
        self._pending = None
        self._prev2, self._prev1 = float(ext[n]), float(ext[n + 1])
        self._prev1_threshold = float(thresholds[-1])
        self._prev1_pitched = bool(pitched[-1])
        if len(starts) == 0:
            return np.zeros(0, np.int64)
        dips = np.minimum.reduceat(ext, starts)  # each peak's lowest point before the next peak (or so far)
        deep = dips < values - self.min_dip_db
        if not deep[-1]:
            self._pending = (int(frames[-1]), float(values[-1]), bool(voiced[-1]), float(rises[-1]))
        confirmed = deep & voiced
        found, risen = frames[confirmed], values[confirmed] - rises[confirmed] > self.min_rise_db
        if not len(found):
            return found
        previous = np.empty(len(found), np.int64)
        previous[0] = self._last_nucleus
        previous[1:] = found[:-1]
        self._last_nucleus = int(found[-1])
        return found[risen | (found - previous > self.rise_frames)]

    def _thresholds(self, first_frame: int, contour_db: np.ndarray) -> np.ndarray:
        """Threshold in force at each frame; adds the frames to the statistics."""
        n = len(contour_db)
        out = np.empty(n)
        pos = 0
        while pos < n:
            frame = first_frame + pos
            end = min(n, pos + self._update - frame % self._update)
            out[pos:end] = self._threshold
            block = contour_db[pos:end]
            self._hist += np.bincount(_level_bins(block), minlength=_LEVEL_BINS)
            self._min = min(self._min, float(block.min()))
            if (first_frame + end) % self._update == 0:
                top = SILENCE_DBFS + LEVEL_BIN_DB * _hist_quantile(self._hist, self.quantile)
                self._threshold = max(top + self.silence_db, self._min)
            pos = end
        return out


@dataclass(frozen=True)
class ProsodyFigures:
    """Prosody of one span of one speaker's channel, as measured when its analysis window was cut."""

    loudness_dbfs: float
    """Level of the span's new speech [new_from_sample, end_sample): power mean of its voiced frames
    (of all its frames if none is voiced); SILENCE_DBFS if no frame is held."""
    loudness_over_baseline_db: float | None
    """loudness_dbfs minus the speaker's baseline (the median level of their voiced speech so far, in
    blocks of BASELINE_BLOCK_MS); None until the baseline is warm or when no new frame is voiced."""
    pitch_hz: float | None
    """Median F0 of the voiced, pitched frames over [start_sample, end_sample); None if there are none."""
    pitch_range_st: float | None
    """(p90 - p10) of F0 over the span in semitones; None with fewer than 5 pitched frames."""
    speech_rate_spm: float | None
    """Syllable nuclei per minute of voiced speech over the span; None with less than 1 s of voiced speech."""
    voiced_ms: int
    """Voiced speech (VAD) in [start_sample, end_sample)."""
    nuclei: int
    """Syllable nuclei whose peak lies in [start_sample, end_sample)."""
    speech_rate_cpm: float | None = None
    """Characters per minute of the speaker's transcribed speech when a transcript comes with the call
    (service/analytics/transcript.py); None without one."""
    speech_rate_over_baseline: float | None = None
    """speech_rate_spm over the speaker's own rate so far in the call (nuclei per minute of all their voiced
    speech): 1.0 is their usual pace, 1.2 a fifth faster. A ratio to the speaker's own count, so a count that
    runs low or high for a voice or a language cancels out. None before `warmup_ms` of voiced speech or
    without a rate."""

    def as_dict(self) -> dict:
        """The figures as a dict, floats rounded to 1 decimal, None kept."""
        return {
            "loudness_dbfs": _round1(self.loudness_dbfs),
            "loudness_over_baseline_db": _round1(self.loudness_over_baseline_db),
            "pitch_hz": _round1(self.pitch_hz),
            "pitch_range_st": _round1(self.pitch_range_st),
            "speech_rate_spm": _round1(self.speech_rate_spm),
            "voiced_ms": int(self.voiced_ms),
            "nuclei": int(self.nuclei),
            "speech_rate_cpm": _round1(self.speech_rate_cpm),
            "speech_rate_over_baseline": None if self.speech_rate_over_baseline is None else round(float(self.speech_rate_over_baseline), 2),
        }


def _round1(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


# Spans need this much voiced speech for a speech rate, and this many pitched frames for a pitch range.
RISE_WITHIN_MS = 200  # a syllable nucleus this close to the one before it needs a rise before its peak (SyllableNuclei)
MIN_RATE_VOICED_MS = 1000
MIN_RANGE_FRAMES = 5


class ProsodyTrack:
    """One channel's prosody tracker: per-frame level, F0 and syllable nuclei, kept for `history_ms`,
    plus whole-call accumulators (loudness baseline, totals) of constant size.

    Frame k covers native samples [k * frame_samples, (k + 1) * frame_samples) from the call start; the
    frames are the channel's VAD frames, and only frames the VAD marks voiced are pitched (and can hold a
    syllable nucleus), which also saves the YIN work on unvoiced frames.
    """

    def __init__(self, sample_rate: int, frame_ms: int = 20, history_ms: int = 8000, warmup_ms: int = 10000,
                 laughter: bool = True) -> None:
        """`laughter`: take runs of bursts of one sound (LaughterRuns) out of the syllables."""
        if sample_rate not in (8000, 16000):
            raise ValueError(f"sample_rate must be 8000 or 16000, got {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30, got {frame_ms}")
        if history_ms < frame_ms:
            raise ValueError(f"history_ms must hold at least one frame, got {history_ms}")
        if warmup_ms < 0:
            raise ValueError(f"warmup_ms must be >= 0, got {warmup_ms}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_samples = sample_rate * frame_ms // 1000
        self.warmup_ms = warmup_ms
        self._decimation = sample_rate // PITCH_RATE
        self._pitch_frame = PITCH_RATE * frame_ms // 1000
        self._pitch_window = PITCH_RATE * PITCH_WINDOW_MS // 1000
        self._contour_window = _contour_taps(sample_rate)
        self._next = 0  # index of the next frame to analyse
        self._batch_frames = max(1, BATCH_MS // frame_ms)
        self._queued_samples: list[np.ndarray] = []
        self._queued_voiced: list[np.ndarray] = []
        self._queued_frames = 0
        # History ring: slot k % capacity holds frame k if _index says so.
        self._capacity = history_ms // frame_ms
        self._index = np.full(self._capacity, -1, np.int64)
        self._level = np.zeros(self._capacity)
        self._f0 = np.full(self._capacity, np.nan)
        self._voiced = np.zeros(self._capacity, bool)
        self._nucleus = np.zeros(self._capacity, bool)
        self._laughing = np.zeros(self._capacity, bool)  # within LAUGH_REACH_MS of a burst of laughter
        self._periodic = np.zeros(self._capacity, bool)  # periodic enough for a nucleus (the laughter check's breaths)
        # Whole-call accumulators.
        self._voiced_frames = 0
        self._laughing_frames = 0  # voiced frames in laughter: not in the speech rate's voiced time
        self._laugh_until = -1  # the last frame within LAUGH_REACH_MS of a burst of laughter so far
        self._voiced_power = 0.0
        self._level_hist = np.zeros(_LEVEL_BINS, np.int64)
        self._baseline: float | None = None  # the histogram's median level, until a new block comes in
        self._block_frames = max(1, BASELINE_BLOCK_MS // frame_ms)
        self._block_power: list[float] = []  # voiced frame powers of the block being filled
        self._pitch_hist = np.zeros(_PITCH_BINS, np.int64)
        self._recent_f0 = np.zeros(0)  # the last PITCH_REFERENCE_FRAMES raw F0 values, for pitch_jumps
        self._pitch_jumps = 0
        self._nuclei = 0
        self._detector = SyllableNuclei(update_frames=max(1, THRESHOLD_UPDATE_MS // frame_ms), rise_frames=RISE_WITHIN_MS // frame_ms)
        self._laughter = LaughterRuns(frame_ms) if laughter else None
        self._envelope_samples = sample_rate * ENVELOPE_MS // 1000
        # Raw samples kept behind the newest block: a nucleus is confirmed at its dip, often in a later block than its peak.
        self._keep_samples = sample_rate * RECENT_MS // 1000
        self._reset_stream()

    def _reset_stream(self) -> None:
        """Forget the audio before a gap: filter state, pitch window tail, contour tail, peak search."""
        self._fir_tail = np.zeros(len(_pitch_taps(self.sample_rate)) - 1)
        self._pitch_tail = np.zeros(self._pitch_window - self._pitch_frame)
        self._square_tail = np.zeros(len(self._contour_window) - self.frame_samples)
        self._recent = np.zeros(0, np.int16)  # the last RECENT_MS of raw samples, ending where the analysed frames end
        self._last_nucleus = -1  # the frame of the last counted nucleus since the gap (-1: none)
        self._detector.reset()
        if self._laughter is not None:
            self._laughter.reset()

    @property
    def frames_seen(self) -> int:
        """Index of the next frame (frames pushed or skipped so far)."""
        return self._next + self._queued_frames

    def push(self, samples: np.ndarray, voiced: np.ndarray) -> None:
        """Add the next whole frames of the channel: int16 `samples` (len(voiced) * frame_samples of them)
        continuing where the previous push or skip ended, and the VAD decision `voiced[i]` of each frame.

        The frames are queued and analysed in blocks of up to BATCH_MS, or before any figure is read, so
        that numpy's per-call overhead is paid per block rather than per (often 20 ms) chunk; the results
        do not depend on how the audio is split into pushes."""
        voiced = np.asarray(voiced, dtype=bool).reshape(-1)
        n = len(voiced)
        samples = np.asarray(samples)
        if samples.ndim != 1 or len(samples) != n * self.frame_samples:
            raise ValueError(f"expected {n} frames of {self.frame_samples} samples, got {samples.shape}")
        if n == 0:
            return
        self._queued_samples.append(samples.astype(np.int16))
        self._queued_voiced.append(voiced.copy())
        self._queued_frames += n
        if self._queued_frames >= self._batch_frames:
            self._flush()

    def _flush(self) -> None:
        """Analyse the queued frames."""
        if not self._queued_frames:
            return
        if len(self._queued_samples) == 1:
            samples, voiced = self._queued_samples[0], self._queued_voiced[0]
        else:
            samples, voiced = np.concatenate(self._queued_samples), np.concatenate(self._queued_voiced)
        self._queued_samples.clear()
        self._queued_voiced.clear()
        self._queued_frames = 0
        self._analyse(samples, voiced)

    def _analyse(self, samples: np.ndarray, voiced: np.ndarray) -> None:
        """Level, F0, contour and nuclei of a block of frames starting at frame self._next."""
        n = len(voiced)
        first = self._next
        x = samples.astype(np.float64)
        power = np.maximum(_frame_power(x.reshape(n, self.frame_samples)), _FLOOR_POWER)
        level = _positive_power_db(power)
        f0, periodic = self._pitch(x, voiced)
        contour = self._contour(x)
        nuclei = self._detector.push(first, contour, periodic)
        raw = f0[~np.isnan(f0)]
        jumps = pitch_jumps(self._recent_f0, f0) if len(raw) else None
        if len(raw):
            self._recent_f0 = np.concatenate((self._recent_f0, raw))[-PITCH_REFERENCE_FRAMES:]
        if jumps is not None and np.count_nonzero(jumps):
            f0[jumps] = np.nan
            self._pitch_jumps += int(np.count_nonzero(jumps))
        self._next = first + n
        self._store(first, level, f0, voiced)
        self._periodic[(first + np.arange(max(0, n - self._capacity), n)) % self._capacity] = periodic[max(0, n - self._capacity) :]
        if self._laugh_until >= first:
            self._mark_laughing(np.arange(first, min(self._laugh_until + 1, first + n), dtype=np.int64))
        if len(nuclei):
            slots = nuclei % self._capacity
            held = self._index[slots] == nuclei
            self._nucleus[slots[held]] = True
            self._nuclei += len(nuclei)
        if self._laughter is not None:
            recent = np.concatenate((self._recent, samples)) if len(self._recent) else samples
            if len(nuclei):
                laughed = self._laughter.push(nuclei, self._envelopes(nuclei, recent), self._broken(nuclei))
                if laughed:
                    self._uncount(np.array(laughed, np.int64))
            self._recent = recent[max(0, len(recent) - self._keep_samples) :].copy()
        count = int(np.count_nonzero(voiced))
        if count:
            self._voiced_frames += count
            voiced_power = power[voiced]
            self._voiced_power += float(voiced_power.sum())
            self._add_to_baseline(voiced_power)
            pitched = f0[~np.isnan(f0)] if len(raw) else raw
            if len(pitched):
                bins = np.minimum(np.maximum(np.rint(12.0 * np.log2(pitched / PITCH_FMIN_HZ) / PITCH_BIN_ST), 0), _PITCH_BINS - 1)
                self._pitch_hist += np.bincount(bins.astype(np.intp), minlength=_PITCH_BINS)

    def _envelopes(self, nuclei: np.ndarray, recent: np.ndarray) -> np.ndarray:
        """The spectral envelope (laughter.envelopes) of the ENVELOPE_MS ending at each nucleus's peak frame; NaN rows
        for peaks whose audio is no longer in `recent` (raw samples ending at frame self._next)."""
        ends = len(recent) - (self._next - 1 - nuclei) * self.frame_samples
        width = self._envelope_samples
        out = np.full((len(nuclei), CEPSTRA), np.nan)
        usable = ends >= width  # a nucleus is never after the analysed frames: its end is in `recent`
        if usable.any():
            rows = np.stack([recent[end - width : end] for end in ends[usable].tolist()]).astype(np.float64)
            out[usable] = envelopes(rows, self.sample_rate)
        return out

    def _broken(self, nuclei: np.ndarray) -> np.ndarray:
        """Per nucleus: an unpitched frame (not periodic, or not held any more) lies between it and the nucleus before it
        (True for the first since a gap)."""
        previous = np.empty(len(nuclei), np.int64)
        previous[0] = self._last_nucleus
        previous[1:] = nuclei[:-1]
        self._last_nucleus = int(nuclei[-1])
        known = previous >= 0
        low = int(previous[known].min()) if known.any() else int(nuclei[0])
        frames = np.arange(low, int(nuclei[-1]), dtype=np.int64)
        slots = frames % self._capacity
        unpitched = np.zeros(len(frames) + 1, np.int64)
        np.cumsum((self._index[slots] != frames) | ~self._periodic[slots], out=unpitched[1:])
        # Unpitched frames strictly between the two nuclei: frames previous+1 .. nucleus-1.
        start = np.minimum(np.maximum(previous + 1 - low, 0), len(frames))  # np.clip costs more on a few values
        end = np.minimum(np.maximum(nuclei - low, 0), len(frames))
        return (previous < 0) | (unpitched[np.maximum(end, start)] > unpitched[start])

    def _uncount(self, nuclei: np.ndarray) -> None:
        """Nuclei found to be bursts of laughter are no syllables: out of the count and of the frames' marks; the voiced
        frames around them (LAUGH_REACH_MS, those still held) leave the speech rate's voiced time."""
        slots = nuclei % self._capacity
        held = self._index[slots] == nuclei
        self._nucleus[slots[held]] = False
        self._nuclei -= len(nuclei)
        reach = LAUGH_REACH_MS // self.frame_ms
        self._mark_laughing(np.unique((nuclei[:, None] + np.arange(-reach, reach + 1)[None, :]).ravel()))
        self._laugh_until = max(self._laugh_until, int(nuclei.max()) + reach)  # frames not analysed yet: as they come

    def _mark_laughing(self, frames: np.ndarray) -> None:
        slots = frames % self._capacity
        slots = slots[(self._index[slots] == frames) & self._voiced[slots] & ~self._laughing[slots]]
        self._laughing[slots] = True
        self._laughing_frames += len(slots)

    def skip(self, frames: int) -> None:
        """Advance the clock over `frames` frames of audio that will never come; they get no figures and
        the streaming state (filters, peak search) starts afresh after them."""
        if frames < 0:
            raise ValueError(f"cannot skip a negative number of frames ({frames})")
        if frames:
            self._flush()
            self._next += frames
            self._reset_stream()

    def _pitch(self, x: np.ndarray, voiced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F0 per frame (NaN where the VAD says unvoiced or YIN finds no period), and whether the frame is periodic
        enough to hold a syllable nucleus (NUCLEUS_VOICING; False where the VAD says unvoiced), over the PITCH_WINDOW_MS of
        audio low-passed to PITCH_LOWPASS_HZ at 8 kHz ending at each frame end (the FIR delays it by ~2 ms).
        Only the low-passed samples YIN reads are computed: the windows of voiced frames, and the block's
        last samples that the next block's first window reaches back to."""
        n = len(voiced)
        taps = _pitch_taps(self.sample_rate)
        ext = np.concatenate((self._fir_tail, x))
        self._fir_tail = ext[len(ext) - (len(taps) - 1) :].copy()
        step, tail = self._pitch_frame, len(self._pitch_tail)
        count = n * step
        rows = np.flatnonzero(voiced)
        # Sample m of this block's low-passed signal y is read by the windows of frames m // step and the
        # following (tail // step) ones: a run of voiced frames k0..k1 reads y[k0*step - tail, (k1+1)*step).
        spans = [(max(0, count - tail), count)]
        if len(rows):
            breaks = np.flatnonzero(np.diff(rows) > 1).tolist()
            firsts = [rows[0]] + [rows[i + 1] for i in breaks]
            lasts = [rows[i] for i in breaks] + [rows[-1]]
            spans = [(max(0, int(k0) * step - tail), (int(k1) + 1) * step) for k0, k1 in zip(firsts, lasts)] + spans
        y = _lowpass_spans(ext, taps, self._decimation, count, spans)
        signal = np.concatenate((self._pitch_tail, y))
        self._pitch_tail = signal[len(signal) - tail :].copy()
        f0 = np.full(n, np.nan)
        periodic = np.zeros(n, bool)
        if len(rows):
            windows = _strided_rows(signal, self._pitch_window, step)
            f0[rows], periodic[rows] = yin(windows[rows], PITCH_RATE, PITCH_FMIN_HZ, PITCH_FMAX_HZ,
                                           voicing_threshold=NUCLEUS_VOICING)
        return f0, periodic

    def _contour(self, x: np.ndarray) -> np.ndarray:
        """Intensity contour: the Hann-weighted power of the last CONTOUR_WINDOW_MS ending at each frame end, in dB."""
        taps = self._contour_window
        ext = np.concatenate((self._square_tail, x * x))
        self._square_tail = ext[len(ext) - (len(taps) - self.frame_samples) :].copy()
        power = _strided_rows(ext, len(taps), self.frame_samples) @ taps
        return _positive_power_db(np.maximum(power, _FLOOR_POWER))

    def _store(self, first: int, level: np.ndarray, f0: np.ndarray, voiced: np.ndarray) -> None:
        n = len(level)
        keep = min(n, self._capacity)
        frames = np.arange(first + n - keep, first + n, dtype=np.int64)
        slots = frames % self._capacity
        self._index[slots] = frames
        self._level[slots] = level[n - keep :]
        self._f0[slots] = f0[n - keep :]
        self._voiced[slots] = voiced[n - keep :]
        self._nucleus[slots] = False
        self._laughing[slots] = False

    @property
    def baseline_dbfs(self) -> float | None:
        """The speaker's loudness baseline: median level of their voiced speech so far, measured in blocks
        of BASELINE_BLOCK_MS (0.25 dB resolution); None until `warmup_ms` of voiced frames were seen."""
        self._flush()
        if self._voiced_frames == 0 or self._voiced_frames * self.frame_ms < self.warmup_ms:
            return None
        if self._baseline is None:
            if not self._level_hist.any():
                return None
            self._baseline = SILENCE_DBFS + LEVEL_BIN_DB * _hist_quantile(self._level_hist, 0.5)
        return self._baseline

    def _add_to_baseline(self, voiced_power: np.ndarray) -> None:
        self._block_power.extend(voiced_power.tolist())
        size = self._block_frames
        while len(self._block_power) >= size:
            block = np.array(self._block_power[:size])
            del self._block_power[:size]
            self._level_hist[_level_bins(_positive_power_db(np.array([block.mean()])))[0]] += 1
            self._baseline = None

    def level_range_db(self, start_sample: int, end_sample: int) -> float | None:
        """How far the level moved over [start_sample, end_sample): the 10th to the 90th percentile of the frame levels
        still held (voiced or not), in dB; None for fewer than MIN_RANGE_FRAMES of them."""
        self._flush()
        fs = self.frame_samples
        low, high = max(start_sample // fs, self._next - self._capacity, 0), min(end_sample // fs, self._next)
        frames = np.arange(low, max(low, high), dtype=np.int64)
        slots = frames % self._capacity
        levels = np.sort(self._level[slots[self._index[slots] == frames]])
        if len(levels) < MIN_RANGE_FRAMES:
            return None
        return sorted_quantile(levels, 0.9) - sorted_quantile(levels, 0.1)

    def figures(self, start_sample: int, end_sample: int, new_from_sample: int) -> ProsodyFigures:
        """Figures for the span [start_sample, end_sample) of this channel (native samples from the call
        start; loudness over [new_from_sample, end_sample)) from the frames still held: frames older than
        `history_ms` may be gone. Positions become frames by integer division: the span is frames
        [start_sample // frame_samples, end_sample // frame_samples)."""
        self._flush()
        fs = self.frame_samples
        start, end, new_from = start_sample // fs, end_sample // fs, new_from_sample // fs
        low = max(min(start, new_from), self._next - self._capacity, 0)
        high = min(end, self._next)
        frames = np.arange(low, max(low, high), dtype=np.int64)
        slots = frames % self._capacity
        held = self._index[slots] == frames
        frames, slots = frames[held], slots[held]

        new = slots[frames >= new_from]
        new_voiced = new[self._voiced[new]]
        chosen = new_voiced if len(new_voiced) else new
        if len(chosen):
            power = np.power(10.0, self._level[chosen] / 10.0)
            loudness = float(_power_db(np.array([power.mean()]))[0])
        else:
            loudness = SILENCE_DBFS
        baseline = self.baseline_dbfs
        over = None if baseline is None or not len(new_voiced) else loudness - baseline

        span = slots[frames >= start]
        voiced = span[self._voiced[span]]
        f0 = self._f0[voiced]
        f0 = f0[~np.isnan(f0)]
        f0 = np.sort(f0)  # one sort for the median and both percentiles (np.median and np.percentile sort each time)
        pitch = sorted_median(f0) if len(f0) else None
        spread = None
        if len(f0) >= MIN_RANGE_FRAMES:
            p10, p90 = sorted_quantile(f0, 0.1), sorted_quantile(f0, 0.9)
            spread = float(12.0 * np.log2(p90 / p10))
        voiced_ms = len(voiced) * self.frame_ms
        nuclei = int(np.count_nonzero(self._nucleus[span]))
        speech_ms = voiced_ms - int(np.count_nonzero(self._laughing[voiced])) * self.frame_ms
        rate = nuclei * 60000.0 / speech_ms if speech_ms >= MIN_RATE_VOICED_MS else None
        relative = None
        total_ms = (self._voiced_frames - self._laughing_frames) * self.frame_ms
        if rate is not None and self._nuclei and total_ms >= max(self.warmup_ms, MIN_RATE_VOICED_MS):
            relative = rate / (self._nuclei * 60000.0 / total_ms)
        return ProsodyFigures(loudness, over, pitch, spread, rate, voiced_ms, nuclei, speech_rate_over_baseline=relative)

    def totals(self) -> dict:
        """Whole-call figures for the summary, floats rounded to 1 decimal: power-mean loudness of voiced
        frames, baseline, median F0, p10-p90 pitch range in semitones, nuclei per minute of voiced speech,
        voiced time, nucleus count, and the pitched frames whose F0 was dropped as a jump (None where there
        is not enough speech)."""
        self._flush()
        voiced_ms = self._voiced_frames * self.frame_ms
        loudness = None
        if self._voiced_frames:
            loudness = float(_power_db(np.array([self._voiced_power / self._voiced_frames]))[0])
        pitched = int(self._pitch_hist.sum())
        pitch = spread = None
        if pitched:
            median = _hist_quantile(self._pitch_hist, 0.5) * PITCH_BIN_ST
            pitch = PITCH_FMIN_HZ * 2.0 ** (median / 12.0)
            if pitched >= MIN_RANGE_FRAMES:
                low, high = (_hist_quantile(self._pitch_hist, q) for q in (0.1, 0.9))
                spread = (high - low) * PITCH_BIN_ST
        speech_ms = voiced_ms - self._laughing_frames * self.frame_ms
        rate = self._nuclei * 60000.0 / speech_ms if speech_ms >= MIN_RATE_VOICED_MS else None
        laughs, laughter_ms = self._laughter.totals() if self._laughter is not None else (0, 0)
        return {
            "loudness_dbfs": _round1(loudness),
            "baseline_dbfs": _round1(self.baseline_dbfs),
            "pitch_hz": _round1(pitch),
            "pitch_range_st": _round1(spread),
            "speech_rate_spm": _round1(rate),
            "voiced_ms": int(voiced_ms),
            "nuclei": int(self._nuclei),
            "pitch_jumps": self._pitch_jumps,
            "laughs": laughs,
            "laughter_ms": int(laughter_ms),
        }
