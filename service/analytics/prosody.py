"""Cheap per-window prosody figures computed inline on the CPU."""

from __future__ import annotations

import numpy as np

SILENCE_DBFS = -96.0


def loudness_dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    if len(samples) == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    if rms <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * np.log10(rms / 32768.0))
