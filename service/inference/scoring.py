"""The scoring-client interface a call session depends on, and its in-process implementation.

A session hands 16 kHz windows to a ScoringClient and gets a future per window. In-process
(batch analysis, tests, and the model engine itself) the client is the model behind an
InferenceBatcher; in the served pod it is `service.inference.remote.RemoteScoringClient`, which
talks to the engine process over ZeroMQ. Either way: one result per window, an error on one window
fails only that window, a full queue refuses the window at once (QueueFull), and an engine that is
not there refuses it at once too (EngineUnavailable) - never a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from abc import ABC, abstractmethod

import numpy as np

from service.errors import ServiceUnavailable
from service.inference.base import EmotionModel, StreamSpan
from service.inference.batcher import InferenceBatcher


class EngineUnavailable(ServiceUnavailable):
    """The model engine is not there (not started yet, restarting): windows are refused, pending ones failed."""


class ScoringClient(ABC):
    """Scores windows for the sessions of one process."""

    name: str = ""
    """The model's name, reported in events and alerts."""
    labels: tuple[str, ...] = ()
    """English labels in the model's order."""

    @abstractmethod
    def submit(self, audio: np.ndarray, deadline: float | None = None,
               span: StreamSpan | None = None) -> concurrent.futures.Future:
        """Queue one 16 kHz float32 window; its future resolves to WindowScores (or NotSpeech) or fails with the
        window's error (StaleWindow past `deadline`, a time.monotonic() value). `span` says where the window lies in
        its channel (`stream` unique in this process), for a model that carries per-channel state. Raises QueueFull or
        EngineUnavailable at once when the window cannot be taken. Cancelling the future before the
        model started on it withdraws the window."""

    @property
    def available(self) -> bool:
        """Whether windows are taken now."""
        return True

    async def start(self) -> None:
        """Connect to wherever the model is."""

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the model is there (`name` and `labels` known)."""

    async def close(self) -> None:
        """Stop taking windows; pending ones are finished or failed."""


class LocalScoringClient(ScoringClient):
    """The model in this process behind an InferenceBatcher (one worker thread)."""

    def __init__(self, model: EmotionModel, batcher: InferenceBatcher) -> None:
        self.model = model
        self.batcher = batcher
        self.name = model.name
        self.labels = model.labels

    def submit(self, audio: np.ndarray, deadline: float | None = None,
               span: StreamSpan | None = None) -> concurrent.futures.Future:
        return self.batcher.submit(audio, deadline=deadline, span=span)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
