"""Conversion of native-rate int16 windows into the model's 16 kHz float32 input (soxr resampler)."""

from __future__ import annotations

import numpy as np
import soxr

MODEL_SAMPLE_RATE = 16000


def to_model_input(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Scale int16 samples to [-1, 1) float32 and resample them to 16 kHz with soxr (high quality)."""
    audio = samples.astype(np.float32) / 32768.0
    if sample_rate == MODEL_SAMPLE_RATE:
        return audio
    return soxr.resample(audio, sample_rate, MODEL_SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
