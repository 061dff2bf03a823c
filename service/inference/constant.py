"""A BENCHMARK-ONLY stand-in for the emotion model: constant scores, almost no compute.

It recognises nothing. It exists to measure how many calls the rest of the pipeline (transport,
decoding, VAD, windows, batching, rules, publishing) carries in one process when the model costs
nothing; select it with `--model builtin:constant`. Every event and alert names it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from service.inference.base import EmotionModel, WindowScores

BUILTIN_CONSTANT = "builtin:constant"
LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")


class ConstantEmotionModel(EmotionModel):
    """Uniform scores for every window (no emotion recognition)."""

    def __init__(self) -> None:
        self.name = "CONSTANT MODEL (benchmark only, no emotion recognition)"
        self.labels = LABELS

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | Exception]:
        out: list[WindowScores | Exception] = []
        uniform = np.full(len(self.labels), 1 / len(self.labels), dtype=np.float32)
        for audio in windows:
            frames = max(1, len(audio) // 320 - 1)
            out.append(WindowScores(scores=uniform, frame_logits=np.zeros((frames, len(self.labels)), dtype=np.float32)))
        return out
