"""emotion2vec (FunASR) behind the batch interface: one backbone pass per window, a frame-level logit track.

The classifier head `proj` is affine and funasr applies it to the mean of the frame features, so
proj(mean(frames)) == mean(proj(frame)): applying proj to every 50 Hz frame gives a logit track from
which the scores of any span are softmax(mean(logits over the span)); for the whole window this
equals funasr's utterance-level result.

Windows of different lengths share a forward pass, padded. funasr's own padding_mask does not
reproduce an unpadded item's result (it layer-normalises the padded waveform and its convolutional
positional encoder reads the padded frames), so padded batches go through `_padded_features`, which
normalises each window before padding and zeroes padded frames before every positional convolution,
and keeps padded keys out of attention by adding -inf to their attention logits (what funasr's masked_fill
does, without the host synchronisation of its `padding_mask.any()`). The result for each window equals its
unpadded result (tested to 1e-4). Batches without padding use funasr's extract_features unchanged.

Every pass ends on the device with one packed float32 tensor per batch - per row the window's scores,
its frame logits and (when asked) its embedding - copied to the host once and split there.

On CUDA the precision defaults to bf16 autocast, and the forward can be captured as CUDA graphs at warm-up,
per (length bucket, batch size) (`capture_graphs`; graphs.py keeps the books): a group of windows is padded
up to the next captured shape, its rows copied into the shape's static input and the graph replayed;
shapes that were not captured run eagerly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from service import metrics
from service.config import PRECISIONS
from service.errors import ModelLoadError
from service.inference.base import MASKED_LABEL_PREFIX, EmotionModel, WindowScores, english_label
from service.inference.graphs import GraphCache, Shape, capture_sizes

log = logging.getLogger(__name__)

# The conv feature encoder's receptive field: shorter input yields no frame at all.
MIN_SAMPLES = 400
TEST_MODEL_MARKER = "callpulse_test_model.json"
GRAPH_CAPTURE_BUDGET_S = 120.0
"""Longest the warm-up spends capturing CUDA graphs; shapes left over run eagerly (logged)."""
GRAPH_WARMUP_PASSES = 2
"""Eager passes of a shape on a side stream before its capture (lazy initialisation, workspaces)."""


def resolve_precision(precision: str, cuda: bool, bf16_supported: Callable[[], bool] = lambda: True) -> str:
    """`auto` -> bf16 on CUDA (fp16 where the GPU has no bf16), fp32 on the CPU; other values are checked."""
    if precision not in PRECISIONS:
        raise ModelLoadError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if bf16_supported() else "fp16"
    if precision != "fp32" and not cuda:
        raise ModelLoadError(f"precision {precision} is only supported on CUDA; use fp32 or auto on the CPU")
    return precision


@dataclass
class _StaticPass:
    """One captured shape's static state: the inputs its replay reads, its output, and the replay."""

    source: Any
    """(batch, samples) float32 on the device: the rows, zero-padded; dummy rows are zeros."""
    sizes: Any
    """(batch, 2) int64 on the device: each row's frames and samples (dummy rows: all of them)."""
    output: Any
    """(batch, width) float32 on the device: the packed output the replay writes."""
    replay: Callable[[], None]
    """Runs the captured pass (on the CPU, in tests: the same forward, eagerly)."""
    frames: int
    """Frames per row at this length."""
    hold: list = field(default_factory=list)
    """Tensors the graph reads that must outlive it (funasr replaces its alibi cache when it grows)."""


class Emotion2vecModel(EmotionModel):
    """An emotion2vec checkpoint loaded through funasr AutoModel."""

    def __init__(self, automodel, name: str, device: str, bucket_ms: int = 500, precision: str = "fp32",
                 warm_lengths_ms: tuple[int, ...] = (1000,)) -> None:
        import torch

        self._torch = torch
        self._net = automodel.model
        self._cuda = device.startswith("cuda")
        self.precision = resolve_precision(precision, self._cuda, _native_bf16)
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        self._host_buffers: dict[str, Any] = {}  # reusable host buffers by role (page-locked on CUDA)
        self._warm_lengths_ms = warm_lengths_ms
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
        self._normalize_on_device = self._normalize and self._cuda
        """Layer-normalise each window in the forward (CUDA: inside the graph) instead of on the host with numpy."""
        self.largest_forward = 0
        self.host_copies = 0
        """Device-to-host copies made (one per forward pass)."""
        self.graphs = GraphCache()
        """Captured CUDA graphs (none until `capture_graphs`)."""
        self.graph_report: dict[str, Any] | None = None
        """What the last `capture_graphs` did (shapes, failures, seconds, self-check)."""

    @classmethod
    def load(cls, model: str, hub: str = "ms", device: str = "cpu", threads: int = 0, bucket_ms: int = 500,
             precision: str = "auto", warm_lengths_ms: tuple[int, ...] = (1000,)) -> "Emotion2vecModel":
        """Load a hub id or a local funasr model directory through funasr AutoModel."""
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} was requested but CUDA is not available here")
        resolve_precision(precision, device.startswith("cuda"))  # refuse a bad value before loading anything
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
        log.info("emotion model loaded: %s on %s (%s), labels=%s", name, device, instance.precision, ",".join(instance.labels))
        return instance

    def score_batch(self, windows: Sequence[np.ndarray]) -> list[WindowScores | Exception]:
        """Group windows into length buckets (`bucket_ms` wide: lengths in ((k-1)*bucket, k*bucket]), pad within
        a bucket, one pass per bucket."""
        results: list[WindowScores | Exception | None] = [None] * len(windows)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, audio in enumerate(windows):
            problem = _validate(audio)
            if problem:
                results[i] = ValueError(problem)
            else:
                groups[-(-len(audio) // self._bucket)].append(i)
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

    def warm_up(self, max_batch: int = 1, cuda_graphs: bool = False) -> None:
        """One pass per length bucket on CUDA (kernel selection happens per shape), one pass on the CPU; then,
        on CUDA with `cuda_graphs`, capture the forward per length bucket and batch size up to `max_batch`."""
        lengths = self._warm_lengths_ms if self._cuda else self._warm_lengths_ms[:1]
        for ms in lengths:
            result = self.score_batch([np.zeros(ms * 16, dtype=np.float32)])[0]
            if isinstance(result, Exception):
                raise result
        if self._cuda:
            self._torch.cuda.synchronize(self._device)
            if cuda_graphs:
                self.capture_graphs(max_batch)

    def close(self) -> None:
        """Drop the captured graphs and their buffers."""
        self.graphs.release()

    def capture_graphs(self, max_batch: int, budget_s: float = GRAPH_CAPTURE_BUDGET_S, emulate: bool = False) -> dict[str, Any]:
        """Capture the forward as a CUDA graph per (length bucket of the warm-up lengths, batch size in
        capture_sizes(max_batch)), then check one replay per length against the eager forward (a mismatch drops
        every graph). `emulate` builds the same static shapes on the CPU with an eager "replay" (tests, the
        benchmark's smoke run). Returns the capture report, also kept in `graph_report`."""
        torch = self._torch
        if not (self._cuda or emulate):
            raise ModelLoadError("CUDA graphs need a CUDA device")
        self.graphs.release()
        lengths = tuple(ms * 16 for ms in self._warm_lengths_ms)
        cache = GraphCache(lengths, capture_sizes(max_batch), variant=self.return_embeddings)
        if not cache.lengths or not cache.sizes:
            self.graphs, self.graph_report = cache, cache.report()
            return self.graph_report
        source = torch.zeros(max(cache.lengths) * max(cache.sizes), dtype=torch.float32, device=self._device)
        sizes = torch.zeros((max(cache.sizes), 2), dtype=torch.long, device=self._device)
        pool = torch.cuda.graph_pool_handle() if not emulate else None
        embeddings = self.return_embeddings

        def capture_one(shape: Shape) -> _StaticPass:
            entry = _StaticPass(source=source[: shape.batch * shape.samples].view(shape.batch, shape.samples),
                                sizes=sizes[: shape.batch], output=None, replay=lambda: None,
                                frames=self.frames_for(shape.samples))
            entry.source.zero_()
            entry.sizes[:, 0] = entry.frames
            entry.sizes[:, 1] = shape.samples

            def run(hold: list | None = entry.hold):
                return self._static_forward(entry.source, entry.sizes, embeddings, hold)

            if emulate:
                entry.output = run()

                def replay() -> None:
                    with torch.inference_mode():  # the output is an inference tensor
                        entry.output.copy_(run(None))

                entry.replay = replay
            else:
                graph, entry.output = _capture_cuda_graph(torch, run, self._device, pool)
                entry.replay = graph.replay
            return entry

        with self._on_device():
            report = cache.capture(capture_one, budget_s)
            report["backend"] = "emulated (eager replay on the CPU)" if emulate else "cuda"
            report["self_check"] = self._check_graphs(cache)
        if report["self_check"] != "passed":
            log.error("CUDA graphs disabled: a replay did not match the eager forward (%s)", report["self_check"])
            cache.release()
        self.graphs, self.graph_report = cache, report
        return report

    def _check_graphs(self, cache: GraphCache) -> str:
        """One replay per captured length, with padded rows and a dummy row, against the eager forward."""
        tolerance = 1e-4 if self.precision == "fp32" else 2e-2
        rng = np.random.default_rng(7)
        for samples in cache.lengths:
            shapes = [s for s in cache.captured if s.samples == samples]
            if not shapes:
                continue
            shape = next((s for s in shapes if s.batch >= 4), shapes[-1])
            entry = cache.get(shape)
            sizes = [samples, max(MIN_SAMPLES, int(samples * 0.6)), max(MIN_SAMPLES, int(samples * 0.3))]
            rows = [rng.normal(0, 0.1, n).astype(np.float32) for n in sizes[: max(1, min(3, shape.batch - 1))]]
            if self._normalize and not self._normalize_on_device:
                rows = [_layer_norm(r) for r in rows]
            try:
                replayed, frames = self._run_static(entry, shape, rows)
                replayed = replayed.copy()  # the host buffer is reused by the next pass
                eager, eager_frames = self._run_eager(rows)
            except Exception as exc:  # noqa: BLE001 - reported; the graphs are then dropped
                return f"failed: {type(exc).__name__}: {exc}"
            for i, row in enumerate(rows):
                ours = self._split(replayed[i : i + 1], frames, [self.frames_for(len(row))], cache.variant)[0]
                ref = self._split(eager[i : i + 1], eager_frames, [self.frames_for(len(row))], cache.variant)[0]
                diff = float(np.abs(ours.scores - ref.scores).max())
                logit_diff = float(np.abs(ours.frame_logits - ref.frame_logits).max())
                scale = 1.0 + float(np.abs(ref.frame_logits).max())
                if not (diff <= tolerance and logit_diff <= tolerance * scale * 10):
                    return (f"failed: {shape.batch}x{shape.samples} row {i}: scores differ by {diff:.2e}, "
                            f"frame logits by {logit_diff:.2e}")
        return "passed"

    def frames_for(self, samples: int) -> int:
        """Number of 50 Hz frames the feature encoder makes from `samples` samples."""
        n = samples
        for kernel, stride in self._conv_layers:
            n = (n - kernel) // stride + 1
        return max(n, 0)

    def _forward(self, batch: list[np.ndarray]) -> list[WindowScores]:
        """One pass for a group of windows: a captured graph when one fits, else eagerly."""
        lengths = [len(a) for a in batch]
        longest = max(lengths)
        if self._normalize and not self._normalize_on_device:  # per window, before padding (numpy: the same float32 layer norm)
            batch = [_layer_norm(a) for a in batch]
        embeddings = self.return_embeddings
        packed = None
        selected = self.graphs.select(len(batch), longest, embeddings)
        if selected is not None:
            shape, entry = selected
            try:
                packed, frames = self._run_static(entry, shape, batch)
                rows, samples, path = shape.batch, shape.samples, "graph"
            except Exception as exc:  # noqa: BLE001 - this shape runs eagerly from now on
                self.graphs.fail(shape, exc)
        if packed is None:
            packed, frames = self._run_eager(batch)
            rows, samples, path = len(batch), longest, "eager"
        metrics.inference_forward(len(batch), 1 - sum(lengths) / (samples * rows), path)
        self.largest_forward = max(self.largest_forward, len(batch))
        self.padded_samples += samples * rows - sum(lengths)
        return self._split(packed, frames, [self.frames_for(n) for n in lengths], embeddings)

    def _run_eager(self, rows: list[np.ndarray]) -> tuple[np.ndarray, int]:
        """The eager forward of rows (normalised unless that happens on the device); returns the packed host
        output and the frames per row."""
        torch = self._torch
        lengths = [len(r) for r in rows]
        staging, sizes_host = self._stage(rows, len(rows), max(lengths))
        with torch.inference_mode(), self._autocast():
            if self._cuda:  # non_blocking from pinned memory; complete before kernels that read it on this stream
                source = staging.to(self._device, non_blocking=True)
                sizes = sizes_host.to(self._device, non_blocking=True)
            else:
                source, sizes = staging, sizes_host
            if self._normalize_on_device:
                source = normalize_rows(torch, source, sizes[:, 1])
            if min(lengths) == max(lengths):
                feats = self._net.extract_features(source, padding_mask=None)["x"]
            else:
                feats = self._padded_features(source, sizes[:, 0])
            packed = self._pack(feats, sizes[:, 0], self.return_embeddings)
        return self._to_host(packed), feats.shape[1]

    def _run_static(self, entry: _StaticPass, shape: Shape, rows: list[np.ndarray]) -> tuple[np.ndarray, int]:
        """Copy rows into a captured shape's static input, replay, copy the output back."""
        staging, sizes_host = self._stage(rows, shape.batch, shape.samples)
        with self._on_device():  # a graph replays on the current stream of the current device
            entry.source.copy_(staging, non_blocking=True)
            entry.sizes.copy_(sizes_host, non_blocking=True)
            entry.replay()
            return self._to_host(entry.output), entry.frames

    def _on_device(self):
        """Make the model's GPU the current device (cuda:N other than the thread's current one); nothing on the CPU."""
        return self._torch.cuda.device(self._device) if self._cuda else contextlib.nullcontext()

    def _static_forward(self, source, sizes, embeddings: bool, hold: list | None):
        """The captured computation: the masked forward of a static (batch, samples) input, packed."""
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            if self._normalize_on_device:
                source = normalize_rows(torch, source, sizes[:, 1])
            feats = self._padded_features(source, sizes[:, 0], hold)
            return self._pack(feats, sizes[:, 0], embeddings)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        # no weight-cast cache: a cached cast made during a capture would live in the graph's memory pool
        return self._torch.autocast(device_type="cuda", dtype=self._autocast_dtype, cache_enabled=False)

    def _stage(self, rows: list[np.ndarray], batch: int, samples: int):
        """Host tensors (batch, samples) float32 and (batch, 2) int64 [frames, samples]: the rows zero-padded,
        then dummy rows of zeros counted as full length. Page-locked and reused on CUDA."""
        torch = self._torch
        audio = self._buffer("audio", batch * samples, torch.float32).view(batch, samples)
        sizes = self._buffer("sizes", batch * 2, torch.long).view(batch, 2)
        a, s = audio.numpy(), sizes.numpy()  # the same memory; numpy writes cost a quarter of torch indexing
        for i, row in enumerate(rows):
            a[i, : len(row)] = row
            a[i, len(row) :] = 0.0
            s[i] = (self.frames_for(len(row)), len(row))
        if len(rows) < batch:
            a[len(rows) :] = 0.0
            s[len(rows) :] = (self.frames_for(samples), samples)
        return audio, sizes

    def _buffer(self, role: str, size: int, dtype):
        """A flat host buffer of at least `size` elements, kept for reuse (page-locked on CUDA)."""
        buf = self._host_buffers.get(role)
        if buf is None or buf.numel() < size or buf.dtype != dtype:
            grown = max(size, buf.numel() if buf is not None else 0)
            buf = self._torch.empty(grown, dtype=dtype, pin_memory=self._cuda)
            self._host_buffers[role] = buf
        return buf[:size]

    def _pack(self, feats, valid, embeddings: bool):
        """One float32 tensor (batch, labels + frames * labels [+ dim]): per row the scores (softmax of the mean
        logit over the row's valid frames), the frame logits and, when asked, the embedding (mean feature)."""
        torch = self._torch
        logits = self._net.proj(feats).index_select(-1, self._keep_index).float()
        batch, frames, labels = logits.shape
        keep = (torch.arange(frames, device=logits.device)[None, :] < valid[:, None]).unsqueeze(-1).to(torch.float32)
        count = valid.to(torch.float32).clamp_min(1.0)[:, None]
        parts = [torch.softmax((logits * keep).sum(dim=1) / count, dim=-1), logits.reshape(batch, frames * labels)]
        if embeddings:
            parts.append((feats.float() * keep).sum(dim=1) / count)
        return torch.cat(parts, dim=1)

    def _to_host(self, packed) -> np.ndarray:
        """The one device-to-host copy of a pass (into a reused page-locked buffer on CUDA)."""
        self.host_copies += 1
        if not self._cuda:
            return packed.numpy()
        host = self._buffer("out", packed.numel(), self._torch.float32).view(packed.shape)
        host.copy_(packed, non_blocking=True)
        self._torch.cuda.current_stream(self._device).synchronize()
        return host.numpy()

    def _split(self, host: np.ndarray, frames: int, valid: list[int], embeddings: bool) -> list[WindowScores]:
        """Per real row of the packed host output: its own copies of scores, frame logits and embedding."""
        labels = len(self._keep)
        out = []
        for i, n in enumerate(valid):
            row = host[i]
            out.append(WindowScores(
                scores=row[:labels].copy(),
                frame_logits=row[labels : labels + n * labels].reshape(n, labels).copy(),
                embedding=row[labels + frames * labels :].copy() if embeddings else None,
            ))
        return out

    def _padded_features(self, source, valid, hold: list | None = None):
        """emotion2vec's inference forward for a padded batch, exact for every item (see module doc). `valid`
        holds each row's frames (a device tensor); no host synchronisation, so it can be captured."""
        torch = self._torch
        net, enc = self._net, self._encoder
        x = enc.local_features(source)
        batch, frames, _ = x.shape
        pad = torch.arange(frames, device=x.device)[None, :] >= valid[:, None]
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        x = x + self._masked_positions(x, keep)
        alibi_bias, alibi_scale = None, enc.alibi_scale
        if enc.get_alibi_bias is not None:
            # one copy broadcast over the batch (funasr repeats it per row)
            alibi_bias = enc.get_alibi_bias(batch_size=1, time_steps=frames, heads=enc.modality_cfg.num_alibi_heads,
                                            dtype=torch.float32, device=x.device)
            if hold is not None:
                hold.append(alibi_bias)  # a view of funasr's cache: keeps its storage alive for a captured graph
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
            if alibi_bias is not None:
                alibi_bias = torch.nn.functional.pad(alibi_bias, (extra, 0, extra, 0))
        # padded keys get -inf added to their attention logits: what funasr's masked_fill does after the bias
        key_mask = torch.zeros(pad.shape, dtype=torch.float32, device=x.device).masked_fill(pad, float("-inf"))[:, None, None, :]
        prenet = enc.modality_cfg.prenet_depth
        context = enc.context_encoder  # funasr's BlockEncoder.forward, with the mask in the bias
        if context.norm is not None and not context.layer_norm_first:
            x = context.norm(x)
        x = context.dropout(x)
        # with one alibi scale for all layers (emotion2vec's), every layer gets the same bias: made once
        shared = None if alibi_scale is not None else _layer_bias(alibi_bias, None, 0, key_mask, net.blocks[0])
        scales = alibi_scale[:prenet] if alibi_scale is not None else None
        for i, block in enumerate(context.blocks):
            x, _ = block(x, None, shared if shared is not None else _layer_bias(alibi_bias, scales, i, key_mask, block))
        if context.norm is not None and context.layer_norm_first:
            x = context.norm(x)
        if alibi_scale is not None and alibi_scale.size(0) > 1:
            alibi_scale = alibi_scale[prenet:]
        x = net.dropout_input(x)
        for i, block in enumerate(net.blocks):
            x, _ = block(x, None, shared if shared is not None else _layer_bias(alibi_bias, alibi_scale, i, key_mask, block))
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


def normalize_rows(torch, source, lengths):
    """funasr's waveform layer norm (eps 1e-5) of each row over its first `lengths[i]` samples, in float64 like
    `_layer_norm`; the padding stays zero. Runs on the device, so it can be captured."""
    n = lengths.to(torch.float64).clamp_min(1.0)[:, None]
    inside = torch.arange(source.shape[1], device=source.device)[None, :] < lengths[:, None]
    x = source.to(torch.float64)
    mean = x.sum(dim=1, keepdim=True) / n
    centred = (x - mean) * inside
    var = centred.square().sum(dim=1, keepdim=True) / n
    return (centred / torch.sqrt(var + 1e-5)).to(torch.float32)


def _layer_bias(alibi_bias, scales, i: int, key_mask, block):
    """The attention bias of layer i: the (scaled) alibi bias plus -inf on padded keys."""
    if alibi_bias is None:
        return key_mask.expand(-1, block.attn.num_heads, -1, -1)
    bias = alibi_bias
    if scales is not None:
        scale = scales[i] if scales.size(0) > 1 else scales.squeeze(0)
        bias = bias * scale.type_as(bias)
    return bias + key_mask


def _native_bf16() -> bool:
    """The GPU computes bf16 natively (Ampere or later), not by emulation."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation flag
        return bool(torch.cuda.is_bf16_supported())


def _capture_cuda_graph(torch, run: Callable[[], Any], device, pool) -> tuple[Any, Any]:
    """Warm `run` up on a side stream, then capture it as a CUDA graph in the shared memory pool; returns the
    graph and the output tensor its replays write."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_PASSES):
            run()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    started = time.perf_counter()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        output = run()
    log.debug("captured a CUDA graph of %s in %.3f s", tuple(output.shape), time.perf_counter() - started)
    return graph, output


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
