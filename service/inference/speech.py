"""Is a window speech? silero-vad's pretrained detector in the model engine, batched across calls, before the emotion model.

The steady-sound gate (service/analytics/gate.py) runs on every frame of every call and takes tones and most
music out before anything counts as talk, but it leaves some music as speech (18.9% of the voiced frames of
the Debian game music in `python -m clients.eval_signal`). silero-vad (its weights ship in its wheel, MIT
licence) calls 1.7% of those frames speech, but it loses word edges when run frame by frame on 32 ms chunks
(84.6% of the speech clips' voiced frames kept), so it does not decide talk time: it runs here, once per scored
window, on the 16 kHz audio the emotion model would get, and a window in which less than `min_share` of the
32 ms chunks are speech is answered NotSpeech instead of being scored (the session counts it as not speech,
no update, no emotion alert).

Windows of a batch are cut to whole 512-sample chunks and grouped by length; each group runs through the
detector's recurrent state chunk by chunk as one (windows, 512) batch from a fresh state.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from service.inference.base import MODEL_SAMPLE_RATE, EmotionModel, NotSpeech, WindowScores

log = logging.getLogger(__name__)

CHUNK = 512
"""Samples per detector step at 16 kHz (32 ms): what silero-vad takes at that rate."""
SPEECH_PROBABILITY = 0.5
"""A chunk whose speech probability is at least this is speech (silero-vad's own default)."""


class SpeechDetector:
    """silero-vad over whole windows: the share of each window's 32 ms chunks that are speech."""

    def __init__(self, device: str = "cpu") -> None:
        import torch
        from silero_vad import load_silero_vad

        self._torch = torch
        self.device = device
        self._model = load_silero_vad(onnx=False).to(device)
        self._model.eval()

    def speech_shares(self, windows: Sequence[np.ndarray]) -> list[float]:
        """For each 16 kHz float window, the share of its whole 32 ms chunks that are speech (0.0 for a window
        shorter than one chunk)."""
        torch = self._torch
        shares = [0.0] * len(windows)
        groups: dict[int, list[int]] = {}
        for i, window in enumerate(windows):
            chunks = len(window) // CHUNK
            if chunks:
                groups.setdefault(chunks, []).append(i)
        with torch.inference_mode():
            for chunks, members in groups.items():
                batch = np.stack([np.asarray(windows[i][: chunks * CHUNK], dtype=np.float32) for i in members])
                x = torch.from_numpy(batch).to(self.device)
                self._model.reset_states()
                speech = torch.zeros(len(members), device=self.device)
                for k in range(chunks):
                    probability = self._model(x[:, k * CHUNK : (k + 1) * CHUNK], MODEL_SAMPLE_RATE)
                    speech += (probability.reshape(-1) >= SPEECH_PROBABILITY).float()
                for i, value in zip(members, (speech / chunks).tolist()):
                    shares[i] = float(value)
        return shares


class SpeechCheckedModel(EmotionModel):
    """An EmotionModel whose windows pass the speech detector first: a window with less than `min_share` speech is
    answered NotSpeech and not scored; the others go to `model` in one batch. A detector error scores every window
    (the check is a filter, not a gate the model depends on)."""

    def __init__(self, model: EmotionModel, detector: SpeechDetector, min_share: float) -> None:
        if not 0.0 < min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        self.model = model
        self.detector = detector
        self.min_share = min_share
        self.name = model.name
        self.labels = model.labels

    @property
    def return_embeddings(self) -> bool:  # type: ignore[override]
        return self.model.return_embeddings

    @return_embeddings.setter
    def return_embeddings(self, value: bool) -> None:
        self.model.return_embeddings = value

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | NotSpeech | Exception]:
        try:
            shares = self.detector.speech_shares(windows)
        except Exception:  # noqa: BLE001 - a broken detector must not stop scoring
            log.exception("the speech detector failed a batch; its windows are scored unchecked")
            return self.model.score_batch(windows)
        keep = [i for i, share in enumerate(shares) if share >= self.min_share]
        results: list[WindowScores | NotSpeech | Exception] = [NotSpeech(share) for share in shares]
        if keep:
            scored = self.model.score_batch([windows[i] for i in keep])
            for i, result in zip(keep, scored):
                results[i] = result
        return results

    def warm_up(self, max_batch: int = 1, cuda_graphs: bool = False) -> None:
        self.detector.speech_shares([np.zeros(MODEL_SAMPLE_RATE, dtype=np.float32)])
        self.model.warm_up(max_batch, cuda_graphs)

    def close(self) -> None:
        self.model.close()
