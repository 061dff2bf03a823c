"""emotion2vec (FunASR) behind the batch interface: one backbone pass per window, a frame-level logit track.

The classifier head `proj` is affine and funasr applies it to the mean of the frame features, so
proj(mean(frames)) == mean(proj(frame)): applying proj to every 50 Hz frame gives a logit track from
which the scores of any span are softmax(mean(logits over the span)); for the whole window this
equals funasr's utterance-level result.

Windows of different lengths share a forward pass, padded. funasr's own padding_mask does not
reproduce an unpadded item's result (it layer-normalises the padded waveform and its convolutional
positional encoder reads the padded frames), so padded batches go through `_padded_features`, which
normalises each window before padding and zeroes padded frames before every positional convolution;
attention already ignores padded keys. The result for each window equals its unpadded result
(tested to 1e-4). Batches without padding use funasr's extract_features unchanged.
"""

from __future__ import annotations

import contextlib
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

    def __init__(self, automodel, name: str, device: str, bucket_ms: int = 500, precision: str = "fp32",
                 warm_lengths_ms: tuple[int, ...] = (1000,)) -> None:
        import torch

        self._torch = torch
        self._net = automodel.model
        self._cuda = device.startswith("cuda")
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._pinned = None  # reusable page-locked staging buffer for host-to-GPU copies
        self._warm_lengths_ms = warm_lengths_ms
        self.precision = precision
        self._encoder = self._net.modality_encoders["AUDIO"]
        self._conv_layers = [(k, stride) for _, k, stride in self._encoder.feature_enc_layers]
        self._bucket = max(1, bucket_ms * 16)  # samples at 16 kHz
        self.padded_samples = 0
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
    def load(cls, model: str, hub: str = "ms", device: str = "cpu", threads: int = 0, bucket_ms: int = 500,
             precision: str = "fp32", warm_lengths_ms: tuple[int, ...] = (1000,)) -> "Emotion2vecModel":
        """Load a hub id or a local funasr model directory through funasr AutoModel."""
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} was requested but CUDA is not available here")
        if precision != "fp32" and not device.startswith("cuda"):
            raise ModelLoadError(f"precision {precision} is only supported on CUDA; use fp32 on {device}")
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
        instance = cls(automodel, name=name, device=device, bucket_ms=bucket_ms, precision=precision,
                       warm_lengths_ms=warm_lengths_ms)
        log.info("emotion model loaded: %s on %s, labels=%s", name, device, ",".join(instance.labels))
        return instance

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | Exception]:
        """Group windows into length buckets (`bucket_ms` wide), pad within a bucket, one pass per bucket."""
        results: list[WindowScores | Exception | None] = [None] * len(windows)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, audio in enumerate(windows):
            problem = _validate(audio)
            if problem:
                results[i] = ValueError(problem)
            else:
                groups[len(audio) // self._bucket].append(i)
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

    def warm_up(self) -> None:
        """One pass per length bucket on CUDA (kernel selection happens per shape), one pass on the CPU."""
        lengths = self._warm_lengths_ms if self._cuda else self._warm_lengths_ms[:1]
        for ms in lengths:
            result = self.score_batch([np.zeros(ms * 16, dtype=np.float32)])[0]
            if isinstance(result, Exception):
                raise result
        if self._cuda:
            self._torch.cuda.synchronize(self._device)

    def _to_device(self, rows: list[np.ndarray]):
        """Stack (zero-padded) windows into one tensor on the model's device; via a pinned buffer on CUDA."""
        torch = self._torch
        longest = max(len(r) for r in rows)
        if not self._cuda:
            if all(len(r) == longest for r in rows):
                return torch.from_numpy(np.stack(rows))
            return torch.nn.utils.rnn.pad_sequence([torch.from_numpy(r) for r in rows], batch_first=True)
        if self._pinned is None or self._pinned.shape[0] < len(rows) or self._pinned.shape[1] < longest:
            shape = (max(len(rows), self._pinned.shape[0] if self._pinned is not None else 0),
                     max(longest, self._pinned.shape[1] if self._pinned is not None else 0))
            self._pinned = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        staging = self._pinned[: len(rows), :longest]
        staging.zero_()
        for i, row in enumerate(rows):
            staging[i, : len(row)] = torch.from_numpy(row)
        # non_blocking from pinned memory; the copy completes before kernels that read it on this stream
        return staging.to(self._device, non_blocking=True)

    def frames_for(self, samples: int) -> int:
        """Number of 50 Hz frames the feature encoder makes from `samples` samples."""
        n = samples
        for kernel, stride in self._conv_layers:
            n = (n - kernel) // stride + 1
        return max(n, 0)

    def _forward(self, batch: list[np.ndarray]) -> list[WindowScores]:
        torch = self._torch
        lengths = [len(a) for a in batch]
        longest = max(lengths)
        metrics.inference_forward(len(batch), 1 - sum(lengths) / (longest * len(batch)))
        self.largest_forward = max(self.largest_forward, len(batch))
        self.padded_samples += longest * len(batch) - sum(lengths)
        autocast = (torch.autocast(device_type="cuda", dtype=self._autocast_dtype) if self._autocast_dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            if self._normalize:  # per window, before padding (numpy: the same float32 layer norm)
                batch = [_layer_norm(a) for a in batch]
            source = self._to_device(batch)
            if min(lengths) == longest:
                feats = self._net.extract_features(source, padding_mask=None)["x"]
                valid = [feats.shape[1]] * len(batch)
            else:
                valid = [self.frames_for(n) for n in lengths]
                feats = self._padded_features(source, valid)
            logits = self._net.proj(feats).index_select(-1, self._keep_index).float()
            out = []
            for i, n in enumerate(valid):
                item = logits[i, :n]
                embedding = feats[i, :n].float().mean(dim=0).cpu().numpy() if self.return_embeddings else None
                out.append((item, torch.softmax(item.mean(dim=0), dim=-1), embedding))
        return [WindowScores(scores=s.cpu().numpy(), frame_logits=l.cpu().numpy(), embedding=e) for l, s, e in out]

    def _padded_features(self, source, valid: list[int]):
        """emotion2vec's inference forward for a padded batch, exact for every item (see module doc)."""
        torch = self._torch
        net, enc = self._net, self._encoder
        x = enc.local_features(source)
        batch, frames, _ = x.shape
        pad = torch.arange(frames, device=x.device)[None, :] >= torch.tensor(valid, device=x.device)[:, None]
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        x = x + self._masked_positions(x, keep)
        alibi_bias = enc.get_alibi_bias(batch_size=batch, time_steps=frames, heads=enc.modality_cfg.num_alibi_heads,
                                        dtype=torch.float32, device=x.device)
        alibi_scale = enc.alibi_scale
        if alibi_scale is not None:
            alibi_scale = alibi_scale.clamp_min(0)
            if alibi_scale.size(0) == 1:
                alibi_bias = alibi_bias * alibi_scale.squeeze(0).type_as(alibi_bias)
                alibi_scale = None
        extra = 0
        if enc.extra_tokens is not None:
            extra = enc.extra_tokens.size(1)
            x = torch.cat([enc.extra_tokens.expand(batch, -1, -1), x], dim=1)
            pad = torch.nn.functional.pad(pad, (extra, 0))
            alibi_bias = torch.nn.functional.pad(alibi_bias, (extra, 0, extra, 0))
        prenet = enc.modality_cfg.prenet_depth
        x = enc.context_encoder(x, pad, alibi_bias, alibi_scale[:prenet] if alibi_scale is not None else None)
        if alibi_scale is not None and alibi_scale.size(0) > 1:
            alibi_scale = alibi_scale[prenet:]
        x = net.dropout_input(x)
        for i, block in enumerate(net.blocks):
            bias = alibi_bias
            if bias is not None and alibi_scale is not None:
                scale = alibi_scale[i] if alibi_scale.size(0) > 1 else alibi_scale.squeeze(0)
                bias = bias * scale.type_as(bias)
            x, _ = block(x, padding_mask=pad, alibi_bias=bias)
        if net.norm is not None:
            x = net.norm(x)
        return x[:, extra:]

    def _masked_positions(self, x, keep):
        """The convolutional positional encoder, with padded frames zeroed before every convolution
        (an unpadded sequence sees zeros past its end there)."""
        encoder = self._encoder.relative_positional_encoder
        layers = list(encoder)
        if len(layers) == 2 and isinstance(layers[1], self._torch.nn.Sequential):  # conv_pos_pre_ln
            x = layers[0](x)
            layers = list(layers[1])
        h = (x * keep).transpose(1, 2)  # layers[0] and layers[-1] are TransposeLast
        frame_keep = keep.transpose(1, 2)
        for layer in layers[1:-1]:
            h = layer(h) * frame_keep
        return h.transpose(1, 2)


def _layer_norm(audio: np.ndarray) -> np.ndarray:
    """What funasr's normalize does (F.layer_norm over the whole waveform, eps 1e-5), in float32."""
    mean = audio.mean(dtype=np.float64)
    var = np.square(audio - mean, dtype=np.float64).mean()
    return ((audio - mean) / np.sqrt(var + 1e-5)).astype(np.float32)


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
