"""Full re-encoding vs incremental scoring: model cost against score difference, on the bundled fixtures.

    python -m clients.bench_scoring --model DIR [--contexts 0,250,500,1000,1500,2000] [--json OUT]

For every channel of the bundled speech fixtures, the windows the service scores are computed both
ways: full (each window re-encoded, the reference) and incremental with each left context. Reports,
per scheme: audio encoded per second of speech, model time per second of speech (single-window
forward passes, this machine), and how far the window scores are from full re-encoding (max
absolute difference over labels, per window: mean / p95 / max) and how often the top label agrees.
With an untrained test model the differences only show how much context the architecture needs;
re-run with a real model to choose for production.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from clients.wavfile import read_wav
from service.analytics.frames import FrameTrack
from service.audio.channel import ChannelPipeline
from service.audio.resample import to_model_input
from service.config import VadConfig, WindowConfig
from service.domain import Role

SAMPLES = Path(__file__).resolve().parent / "samples"


def fixture_channels() -> list[tuple[str, np.ndarray, int]]:
    out = []
    call = read_wav(str(SAMPLES / "call_stereo_8k.wav"))
    for index, name in enumerate(("call/customer", "call/agent")):
        out.append((name, np.ascontiguousarray(call.samples[:, index]), call.sample_rate))
    mono = read_wav(str(SAMPLES / "customer_16k.wav"))
    out.append(("customer_16k", mono.samples[:, 0], mono.sample_rate))
    return out


def cut(samples: np.ndarray, rate: int, config: WindowConfig):
    pipeline = ChannelPipeline(Role.CUSTOMER, rate, VadConfig(), config)
    windows = pipeline.push(samples, 0.0) + pipeline.flush(0.0)
    return windows, pipeline.speech_ms / 1000


def score_scheme(model, channels, config: WindowConfig):
    """Scores of every window, encoded audio and model time for one scheme."""
    all_scores, encoded_s, model_s, speech_s = [], 0.0, 0.0, 0.0
    for _, samples, rate in channels:
        windows, speech = cut(samples, rate, config)
        speech_s += speech
        track = FrameTrack(10_000)
        for w in windows:
            audio = to_model_input(w.samples, w.sample_rate)
            encoded_s += len(audio) / 16000
            started = time.perf_counter()
            result = model.score_batch([audio])[0]
            model_s += time.perf_counter() - started
            if isinstance(result, Exception):
                raise result
            if config.scoring == "full":
                all_scores.append(((w.segment_index, w.end_sample, rate), result.scores))
                continue
            step = w.frame_samples
            track.add(w.segment_index, w.encode_from_sample // step, result.frame_logits)
            scores, _ = track.scores(w.start_sample // step, w.end_sample // step)
            all_scores.append(((w.segment_index, w.end_sample, rate), scores if scores is not None else result.scores))
    return dict(all_scores), encoded_s, model_s, speech_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench_scoring", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="funasr model directory (or hub id)")
    parser.add_argument("--contexts", default="0,250,500,1000,1500,2000", help="left contexts in ms")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="write the table here as JSON")
    args = parser.parse_args(argv)

    from service.inference.emotion2vec import Emotion2vecModel

    model = Emotion2vecModel.load(args.model, threads=args.threads)
    model.warm_up()
    channels = fixture_channels()
    reference, full_encoded, full_time, speech = score_scheme(model, channels, WindowConfig(scoring="full"))
    rows = [{"scheme": "full re-encode", "context_ms": None, "encoded_per_speech": full_encoded / speech,
             "model_s_per_speech_s": full_time / speech, "diff_mean": 0.0, "diff_p95": 0.0, "diff_max": 0.0, "top_agree": 1.0}]
    for context in (int(c) for c in args.contexts.split(",")):
        scores, encoded, seconds, _ = score_scheme(model, channels, WindowConfig(scoring="incremental", context_ms=context))
        diffs = np.array([np.abs(scores[k] - reference[k]).max() for k in reference])
        agree = np.mean([np.argmax(scores[k]) == np.argmax(reference[k]) for k in reference])
        rows.append({"scheme": "incremental", "context_ms": context, "encoded_per_speech": encoded / speech,
                     "model_s_per_speech_s": seconds / speech, "diff_mean": float(diffs.mean()),
                     "diff_p95": float(np.percentile(diffs, 95)), "diff_max": float(diffs.max()), "top_agree": float(agree)})
    print(f"model: {model.name}; {len(reference)} windows over {speech:.1f} s of speech in {len(channels)} channels")
    print(f"{'scheme':<16}{'context':>8}{'audio/speech':>14}{'model s/speech s':>18}{'|d| mean':>10}{'|d| p95':>9}{'|d| max':>9}{'top=':>7}")
    for r in rows:
        context = "-" if r["context_ms"] is None else f"{r['context_ms']} ms"
        print(f"{r['scheme']:<16}{context:>8}{r['encoded_per_speech']:>14.2f}{r['model_s_per_speech_s']:>18.3f}"
              f"{r['diff_mean']:>10.4f}{r['diff_p95']:>9.4f}{r['diff_max']:>9.4f}{r['top_agree']:>7.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model.name, "windows": len(reference), "speech_s": speech, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
