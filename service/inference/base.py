"""The emotion model's batch interface (Triton-style: one result per input; one bad item never fails the batch)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

MODEL_SAMPLE_RATE = 16000
MASKED_LABEL_PREFIX = "unuse"


@dataclass(frozen=True)
class WindowScores:
    """The model's output for one window."""

    scores: np.ndarray
    """Probabilities over the model's labels: softmax of the mean frame logit."""
    frame_logits: np.ndarray
    """(frames, labels) logits at 50 Hz; the emotion of any span is softmax(mean over its frames)."""
    embedding: np.ndarray | None = None
    """Mean of the backbone's frame features over the encoded audio (funasr's utterance `feats`),
    when the model was asked for embeddings."""


@dataclass(frozen=True)
class NotSpeech:
    """A window the speech check (service/inference/speech.py) found not to be speech: it was not scored."""

    speech: float
    """Share of the window's 32 ms chunks that the detector took for speech (below the check's minimum)."""


@dataclass(frozen=True)
class Spoken:
    """A window sent only to be checked for speech (StreamSpan.check_only) that the check found to be speech."""

    speech: float
    """Share of the window's 32 ms chunks that the detector took for speech."""


@dataclass(frozen=True)
class StreamSpan:
    """Where a window lies in its channel's audio, so that a model with per-channel state (the speech check) can carry
    that state from one window of the channel to the next, as Triton's sequence batcher does with a correlation id."""

    stream: Hashable
    """The channel: unique among the channels whose windows reach this model (a call's channel, and in the engine the
    worker it came from)."""
    start: int
    """The window's first sample in the channel's 16 kHz timeline (samples since the call started)."""
    check_only: bool = False
    """Only check the window for speech, never score it: a model with a speech check answers Spoken or NotSpeech
    (a speaker whose emotion is not scored, whose channel may be playing music)."""


class EmotionModel(ABC):
    """A speech-emotion model scoring 16 kHz float32 windows in batches."""

    name: str
    """Human-readable model name reported in events and alerts."""
    labels: tuple[str, ...]
    """English labels in the model's own order (masked labels removed)."""
    return_embeddings: bool = False
    """Also return each window's embedding (set before scoring starts; costs a copy per window)."""
    checks_speech: bool = False
    """The model answers NotSpeech for windows it finds no speech in (service/inference/speech.py)."""

    @abstractmethod
    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | NotSpeech | Exception]:
        """Score every window; item i of the result is window i's scores, NotSpeech (a model that checks for speech
        first), or the error it caused."""

    def score_spans(self, windows: Sequence[np.ndarray],
                    spans: Sequence[StreamSpan | None]) -> list[WindowScores | NotSpeech | Exception]:
        """score_batch for windows that say where they lie in their channels (None: a window on its own). A model
        that keeps per-channel state uses `spans`; the others score the windows alone."""
        return self.score_batch(windows)

    def warm_up(self, max_batch: int = 1, cuda_graphs: bool = False) -> None:
        """Run one forward pass so the first call does not pay for lazy initialisation. A model that can capture
        its forward as CUDA graphs does so when `cuda_graphs`, for batches of up to `max_batch` windows."""
        result = self.score_batch([np.zeros(MODEL_SAMPLE_RATE, dtype=np.float32)])[0]
        if isinstance(result, Exception):
            raise result

    def close(self) -> None:
        """Release the model's resources."""


def english_label(token: str) -> str:
    """Map a funasr emotion token to its English label: '生气/angry' -> 'angry', '<unk>' -> 'unknown'."""
    token = token.strip()
    if token == "<unk>":
        return "unknown"
    return token.rsplit("/", 1)[-1].strip().lower()


def softmax_mean(frame_logits: np.ndarray) -> np.ndarray:
    """Scores of a span of frames: softmax of their mean logit."""
    mean = frame_logits.astype(np.float64).mean(axis=0)
    exp = np.exp(mean - mean.max())
    return (exp / exp.sum()).astype(np.float32)
