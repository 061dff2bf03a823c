"""emotion2vec (FunASR) behind the batch interface: one backbone pass per window, a frame-level logit track.

The classifier head `proj` is affine and funasr applies it to the mean of the frame features, so
proj(mean(frames)) == mean(proj(frame)): applying proj to every 50 Hz frame gives a logit track from
which the scores of any span are softmax(mean(logits over the span)); for the whole window this
equals funasr's utterance-level result.

funasr's padding_mask does not reproduce an unpadded item's result, so only windows of equal length
share a forward pass.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Sequence

import numpy as np

from service import metrics
from service.errors import ModelLoadError
from service.inference.base import MASKED_LABEL_PREFIX, EmotionModel, WindowScores, english_label

log = logging.getLogger(__name__)

# The conv feature encoder's receptive field: shorter input yields no frame at all.
MIN_SAMPLES = 400
TEST_MODEL_MARKER = "callpulse_test_model.json"


class Emotion2vecModel(EmotionModel):
    """An emotion2vec checkpoint loaded through funasr AutoModel."""

    def __init__(self, automodel, name: str, device: str) -> None:
        import torch

        self._torch = torch
        self._net = automodel.model
        self._device = torch.device(device)
        tokens = list(automodel.kwargs["tokenizer"].token_list)
        self._keep = [i for i, tok in enumerate(tokens) if not tok.startswith(MASKED_LABEL_PREFIX)]
        self._keep_index = torch.tensor(self._keep, device=self._device)
        self.tokens = tuple(tokens)
        self.labels = tuple(english_label(tokens[i]) for i in self._keep)
        self.name = name
        self._normalize = bool(self._net.cfg.get("normalize", False))
        self.largest_forward = 0

    @classmethod
    def load(cls, model: str, hub: str = "ms", device: str = "cpu", threads: int = 0) -> "Emotion2vecModel":
        """Load a hub id or a local funasr model directory through funasr AutoModel."""
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} was requested but CUDA is not available here")
        if threads > 0:
            torch.set_num_threads(threads)
        is_local = os.path.isdir(model)
        if is_local:
            missing = [f for f in ("config.yaml", "model.pt", "tokens.txt") if not os.path.exists(os.path.join(model, f))]
            if missing:
                raise ModelLoadError(f"model directory {model!r} lacks {', '.join(missing)} (expected funasr's layout: config.yaml, model.pt, tokens.txt)")
        try:
            from funasr import AutoModel

            automodel = AutoModel(
                model=model,
                hub=hub,
                device=device,
                ncpu=threads or torch.get_num_threads(),
                disable_update=True,
                disable_pbar=True,
                log_level="WARNING",
            )
        except Exception as exc:
            if is_local:
                raise ModelLoadError(f"could not load the emotion model in {model!r}: {type(exc).__name__}: {exc}") from exc
            raise ModelLoadError(
                f"could not load emotion model {model!r}: it is not a local directory, and fetching it from hub {hub!r} "
                f"failed or gave no funasr model ({type(exc).__name__}: {exc}). Run `make model` where a model hub is "
                "reachable, or pass --model DIR of a downloaded model."
            ) from exc
        net = automodel.model
        if type(net).__name__ != "Emotion2vec":
            raise ModelLoadError(f"{model!r} is a {type(net).__name__}, not an emotion2vec model")
        if getattr(net, "proj", None) is None:
            raise ModelLoadError(f"{model!r} has no classification head (proj); use an emotion2vec_plus_* or *_finetuned model")
        _check_checkpoint_complete(automodel.kwargs.get("init_param"), net)
        name = _model_name(model, automodel.kwargs.get("model_path") or model)
        instance = cls(automodel, name=name, device=device)
        log.info("emotion model loaded: %s on %s, labels=%s", name, device, ",".join(instance.labels))
        return instance

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | Exception]:
        results: list[WindowScores | Exception | None] = [None] * len(windows)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, audio in enumerate(windows):
            problem = _validate(audio)
            if problem:
                results[i] = ValueError(problem)
            else:
                groups[len(audio)].append(i)
        for indices in groups.values():
            try:
                scored = self._forward([windows[i] for i in indices])
            except Exception:  # isolate the item that broke the shared pass
                scored = []
                for i in indices:
                    try:
                        scored.extend(self._forward([windows[i]]))
                    except Exception as exc:  # noqa: BLE001 - reported per item
                        scored.append(exc)
            for i, result in zip(indices, scored):
                results[i] = result
        return results  # type: ignore[return-value]

    def _forward(self, batch: list[np.ndarray]) -> list[WindowScores]:
        torch = self._torch
        metrics.inference_forward(len(batch))
        self.largest_forward = max(self.largest_forward, len(batch))
        with torch.inference_mode():
            source = torch.from_numpy(np.stack(batch)).to(self._device, non_blocking=True)
            if self._normalize:
                source = torch.nn.functional.layer_norm(source, source.shape[-1:])
            feats = self._net.extract_features(source, padding_mask=None)["x"]
            logits = self._net.proj(feats).index_select(-1, self._keep_index).float()
            scores = torch.softmax(logits.mean(dim=1), dim=-1)
        logits_np = logits.cpu().numpy()
        scores_np = scores.cpu().numpy()
        return [WindowScores(scores=scores_np[i], frame_logits=logits_np[i]) for i in range(len(batch))]


def _validate(audio: np.ndarray) -> str | None:
    if not isinstance(audio, np.ndarray) or audio.ndim != 1 or audio.dtype != np.float32:
        return "window must be a 1-D float32 array"
    if len(audio) < MIN_SAMPLES:
        return f"window of {len(audio)} samples is shorter than the model's {MIN_SAMPLES}-sample receptive field"
    if not np.isfinite(audio).all():
        return "window contains NaN or infinite samples"
    return None


def _model_name(requested: str, path: str) -> str:
    marker = os.path.join(path, TEST_MODEL_MARKER) if os.path.isdir(path) else ""
    if marker and os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            info = json.load(fh)
        favor = f", favor={info['favor']}" if info.get("favor") else ""
        return f"TEST MODEL (untrained emotion2vec, {info.get('size', '?')}{favor})"
    return os.path.basename(os.path.normpath(requested)) if os.path.isdir(requested) else requested


def _check_checkpoint_complete(init_param: str | None, net) -> None:
    """funasr fills parameters missing from a checkpoint with random values and only prints a warning."""
    if not init_param or not os.path.exists(init_param):
        return
    import torch

    try:
        state = torch.load(init_param, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - legacy formats cannot be mapped; funasr already loaded them
        return
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    names = {k[len("module.") :] if k.startswith("module.") else k for k in state}
    missing = [k for k in net.state_dict() if k not in names and not k.startswith(("ema.", "modality_encoders.AUDIO.decoder."))]
    if missing:
        raise ModelLoadError(f"checkpoint {init_param!r} lacks {len(missing)} parameters the model needs (first: {missing[0]})")
