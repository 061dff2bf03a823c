"""Fakes of the model interface (named as fakes): for batching, overload and rule-timing tests only."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from service.inference.base import EmotionModel, WindowScores

LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
POISON = 123.0  # a window whose first sample is this value fails in the fake model


def one_hot(label: str, level: float = 0.9) -> np.ndarray:
    scores = np.full(len(LABELS), (1 - level) / (len(LABELS) - 1), dtype=np.float32)
    scores[LABELS.index(label)] = level
    return scores


class FakeEmotionModel(EmotionModel):
    """FAKE model: scores come from `script(audio)`; records batch sizes; can be made slow (per batch, window or second of audio)."""

    def __init__(self, script: Callable[[np.ndarray], np.ndarray] | None = None, delay_s: float = 0.0,
                 per_window_s: float = 0.0, per_audio_s: float = 0.0) -> None:
        self.name = "FAKE scripted model"
        self.labels = LABELS
        self._script = script or (lambda audio: one_hot("neutral"))
        self.delay_s = delay_s
        self.per_window_s = per_window_s
        self.per_audio_s = per_audio_s
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | Exception]:
        self.entered.set()
        self.gate.wait(30)
        self.batch_sizes.append(len(windows))
        audio_s = sum(len(w) for w in windows) / 16000
        if self.delay_s or self.per_window_s or self.per_audio_s:
            time.sleep(self.delay_s + self.per_window_s * len(windows) + self.per_audio_s * audio_s)
        out: list[WindowScores | Exception] = []
        for audio in windows:
            if len(audio) and audio[0] == POISON:
                out.append(RuntimeError("fake model failure on a poisoned window"))
                continue
            scores = self._script(audio)
            frames = max(1, len(audio) // 320)
            out.append(WindowScores(scores=scores, frame_logits=np.tile(np.log(scores), (frames, 1))))
        return out
