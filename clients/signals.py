"""Generated non-speech signals with known answers: call-progress and DTMF tones, and music (chords, a melody, drums),
for the tests and clients.eval_signal."""

import numpy as np

RATE = 8000


def tones(*hz: float, seconds: float, level: float = 8000.0, rate: int = RATE) -> np.ndarray:
    """The sum of sinusoids at `hz` (float, peak `level` in int16 units)."""
    t = np.arange(int(seconds * rate)) / rate
    return level * sum(np.sin(2 * np.pi * f * t) for f in hz) / len(hz)


def cadence(hz: tuple[float, ...], on_s: float, off_s: float, seconds: float, rate: int = RATE) -> np.ndarray:
    """A tone switched on and off, as a ringback (US: 440+480 Hz, 2 s on, 4 s off) or a busy signal."""
    period = np.concatenate([tones(*hz, seconds=on_s, rate=rate), np.zeros(int(off_s * rate))])
    return np.resize(period, int(seconds * rate))


DTMF = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
        "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "*": (941, 1209), "0": (941, 1336), "#": (941, 1477)}


def dtmf(digits: str, on_s: float = 0.5, off_s: float = 0.3, rate: int = RATE) -> np.ndarray:
    """DTMF digits as a caller holding each key (`on_s` each, `off_s` apart)."""
    parts = []
    for digit in digits:
        parts += [tones(*DTMF[digit], seconds=on_s, rate=rate), np.zeros(int(off_s * rate))]
    return np.concatenate(parts)


def music(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Hold music: a triad (three notes with two overtones each) per bar of 1 s, a decaying melody note every 250 ms,
    a kick drum every 500 ms and a snare (noise burst) on the off-beats."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    t = np.arange(n) / rate
    roots = (220.0, 246.9, 261.6, 293.7, 329.6, 196.0)
    for bar in range(int(np.ceil(seconds))):
        part = slice(bar * rate, min(n, (bar + 1) * rate))
        root = roots[rng.integers(len(roots))]
        for ratio in (1.0, 1.26, 1.498):  # a major triad
            for harmonic, weight in ((1, 1.0), (2, 0.5), (3, 0.25)):
                out[part] += 1500 * weight * np.sin(2 * np.pi * root * ratio * harmonic * t[part])
    step = rate // 4
    for start in range(0, n, step):
        end = min(n, start + step)
        local = t[start:end] - t[start]
        note = 440.0 * 2 ** (rng.integers(0, 12) / 12)
        out[start:end] += (2500 * np.sin(2 * np.pi * note * local) + 800 * np.sin(4 * np.pi * note * local)) * np.exp(-3 * local)
    for beat, start in enumerate(range(0, n, rate // 2)):
        end = min(n, start + int(0.08 * rate))
        local = t[start:end] - t[start]
        out[start:end] += 6000 * np.sin(2 * np.pi * 60 * local) * np.exp(-30 * local)
        if beat % 2:
            out[start:end] += 3000 * rng.normal(0, 1, end - start) * np.exp(-40 * local)
    return out


def fast_notes(seconds: float, seed: int = 3, shortest_s: float = 0.05, longest_s: float = 0.09, decay_per_s: float = 8.0,
               rate: int = RATE) -> np.ndarray:
    """Fast notes (each `shortest_s`..`longest_s`, five harmonics, decaying at `decay_per_s`; 0: at one loudness), one after
    another on random semitones over two octaves from 220 Hz, peak 8000: each 80 ms block sounds unlike the last, so the
    steady-sound gate cannot hold them."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out, pos = np.zeros(n), 0
    while pos < n:
        m = min(n - pos, int(rng.uniform(shortest_s, longest_s) * rate))
        f = 220 * 2 ** (rng.integers(0, 24) / 12)
        t = np.arange(m) / rate
        out[pos : pos + m] = sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) * np.exp(-t * decay_per_s)
        pos += m
    return out / np.abs(out).max() * 8000


def int16(x: np.ndarray, noise: float = 30.0, seed: int = 1) -> np.ndarray:
    """`x` with a little line noise, as int16."""
    noisy = x + np.random.default_rng(seed).normal(0, noise, len(x))
    return np.clip(noisy, -32768, 32767).astype(np.int16)


# Formants (Hz) of five vowels, from Peterson & Barney's averages for a man's voice, rounded.
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480), "o": (570, 840, 2410)}


def vowel(name: str, seconds: float, f0_start: float, f0_end: float, rate: int = RATE) -> np.ndarray:
    """A sung vowel: the harmonics of an F0 gliding from `f0_start` to `f0_end`, each weighted by the vowel's formant
    resonances (peak about 1.0)."""
    n = int(seconds * rate)
    f0 = np.linspace(f0_start, f0_end, n)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    out = np.zeros(n)
    for harmonic in range(1, int(rate / 2 / max(f0_start, f0_end))):
        freq = harmonic * f0
        gain = sum(1.0 / (1.0 + ((freq - formant) / 80.0) ** 2) / (k + 1) for k, formant in enumerate(VOWELS[name]))
        out += gain / np.sqrt(harmonic) * np.sin(harmonic * phase)
    return out / max(1e-9, np.max(np.abs(out)))


def bursts(vowels: str, burst_s: float = 0.11, period_s: float = 0.2, f0: float = 240.0, level: float = 9000.0,
           seed: int = 0, rate: int = RATE) -> np.ndarray:
    """A train of voiced bursts, one per letter of `vowels` (keys of VOWELS), `period_s` apart, each with a breathy
    onset ("h", noise) and a falling F0: "aaaaaa" is a laugh ("ha-ha-ha"), "aiuoe..." syllables of speech that move
    from vowel to vowel at the same pace."""
    rng = np.random.default_rng(seed)
    period, burst = int(period_s * rate), int(burst_s * rate)
    out = np.zeros(period * len(vowels) + period)
    ramp = np.hanning(burst)
    for i, name in enumerate(vowels):
        start = i * period + period // 4
        pitch = f0 * (1.0 - 0.01 * i)
        out[start : start + burst] += level * ramp * vowel(name, burst_s, pitch, pitch * 0.92, rate)
        breath = int(0.04 * rate)
        out[start - breath : start] += 0.06 * level * rng.normal(0, 1, breath) * np.hanning(breath)
    return out
