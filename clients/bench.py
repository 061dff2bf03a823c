"""`make bench`: the model's ceiling, the naive peer and this service under load, from one run on one machine.

    python -m clients.bench [--size base|large|tiny | --model DIR] [--trial-s 30] [--out .bench/bench.json]

(a) ceiling: the model's best batched forward throughput, in seconds of audio per second, on the
    chunk length the service sends (and on full 3 s windows);
(b) naive peer: funasr `AutoModel.generate` on each window the service would score (full windows at
    the same cadence), one at a time -> how many real-time calls that sustains; for reference also
    generate once per VAD segment (no live updates);
(c) the service (a separate `python -m service serve` process, the same model) under
    `clients.loadgen`: the largest number of concurrent live calls whose EmotionUpdate p99 latency
    stays under 1 s with at most 1% of windows dropped, found by doubling then bisecting;
(c') the service's throughput at saturation: concurrent replays (nothing dropped, no latency goal),
    in seconds of model input per second, against the ceiling - the engine's efficiency;
(d) the pipeline's own per-process ceiling: the same search with the benchmark-only constant model.
Calls are the bundled stereo sample call (customer scored), looped to the trial length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clients.bench_scoring import cut
from clients.loadgen import run_load
from clients.wavfile import read_wav
from service.audio.resample import to_model_input
from service.config import WindowConfig

ROOT = Path(__file__).resolve().parent.parent
CALL = ROOT / "clients" / "samples" / "call_stereo_8k.wav"
PY = sys.executable
P99_LIMIT_MS = 1000.0
DROP_LIMIT = 0.01


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_dir(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    path = ROOT / ".bench" / "models" / args.size
    if not (path / "model.pt").exists():
        say(f"building an UNTRAINED {args.size}-size test checkpoint in {path} (compute does not depend on weights)")
        subprocess.run([PY, "-m", "service", "make-test-model", str(path), "--size", args.size], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(path)


def customer_windows(config: WindowConfig) -> tuple[list[np.ndarray], float, float]:
    """The 16 kHz audio the service sends for the sample call's customer, and the call and speech durations."""
    call = read_wav(str(CALL))
    windows, speech_s = cut(np.ascontiguousarray(call.samples[:, 0]), call.sample_rate, config)
    return [to_model_input(w.samples, w.sample_rate) for w in windows], call.duration_s, speech_s


def measure_ceiling(model_path: str, lengths_s: dict[str, float]) -> dict[str, dict]:
    from service.inference.emotion2vec import Emotion2vecModel

    model = Emotion2vecModel.load(model_path, bucket_ms=500)
    model.warm_up()
    rng = np.random.default_rng(0)
    out = {}
    for name, seconds in lengths_s.items():
        best = (0.0, 0)
        for batch in (1, 2, 4, 8, 16):
            audio = [rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32) for _ in range(batch)]
            model.score_batch(audio)  # warm this shape
            reps, started = 0, time.perf_counter()
            while time.perf_counter() - started < 4.0:
                model.score_batch(audio)
                reps += 1
            rate = reps * batch * seconds / (time.perf_counter() - started)
            if rate > best[0]:
                best = (rate, batch)
        out[name] = {"window_s": seconds, "audio_s_per_s": round(best[0], 2), "best_batch": best[1]}
        say(f"ceiling on {seconds:g} s windows: {best[0]:.2f} audio-s/s (batch {best[1]})")
    return out


def measure_naive(model_path: str) -> dict:
    from funasr import AutoModel

    full_windows, call_s, speech_s = customer_windows(WindowConfig(scoring="full"))
    automodel = AutoModel(model=model_path, device="cpu", disable_update=True, disable_pbar=True, log_level="ERROR")
    automodel.generate(full_windows[0], granularity="utterance", extract_embedding=False)
    started = time.perf_counter()
    for audio in full_windows:
        automodel.generate(audio, granularity="utterance", extract_embedding=False)
    per_window = (time.perf_counter() - started) / len(full_windows)
    windows_per_call_s = len(full_windows) / call_s
    # once per VAD segment: the segment-closing windows carry each segment's tail; score whole segments
    call = read_wav(str(CALL))
    from service.audio.channel import ChannelPipeline
    from service.config import VadConfig
    from service.domain import Role

    pipeline = ChannelPipeline(Role.CUSTOMER, call.sample_rate, VadConfig(), WindowConfig(window_ms=30000, hop_ms=30000, scoring="full"))
    segments = [w for w in pipeline.push(np.ascontiguousarray(call.samples[:, 0]), 0.0) + pipeline.flush(0.0) if w.final]
    audio = [to_model_input(w.samples, w.sample_rate) for w in segments]
    started = time.perf_counter()
    for a in audio:
        automodel.generate(a, granularity="utterance", extract_embedding=False)
    per_call_segments = time.perf_counter() - started
    result = {
        "windows_per_call_s": round(windows_per_call_s, 3),
        "s_per_window": round(per_window, 4),
        "realtime_calls": round(1 / (per_window * windows_per_call_s), 2),
        "per_segment_realtime_calls": round(call_s / per_call_segments, 2),
    }
    say(f"naive peer: {per_window * 1000:.0f} ms per window, {windows_per_call_s:.2f} windows per call-second "
        f"-> {result['realtime_calls']} real-time calls (once per segment: {result['per_segment_realtime_calls']})")
    return result


class Service:
    """A `python -m service serve` process (and a redis-server of its own) for the load trials."""

    def __init__(self, model: str, workdir: Path) -> None:
        self.redis_port = _free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = dict(os.environ, CALLPULSE_LOG_LEVEL="WARNING")
        self.proc = subprocess.Popen(
            [PY, "-m", "service", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "-1", "--metrics-port", "0",
             "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0", "--model", model],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise SystemExit("the service exited during start-up")
            if line.startswith("{") and '"ready"' in line:
                ready = json.loads(line)
                self.target = f"grpc://127.0.0.1:{ready['grpc_port']}"
                self.metrics = f"http://127.0.0.1:{ready['metrics_port']}/metrics"
                return
        raise SystemExit("the service did not become ready")

    def close(self) -> None:
        for proc in (self.proc, self.redis):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def trial(service: Service, calls: int, seconds: float) -> dict:
    report = asyncio.run(run_load(service.target, calls, str(CALL), duration_s=seconds, ramp_s=2.0, metrics_url=service.metrics))
    p99 = report["update_latency_ms"]["p99"]
    report["pass"] = (not report["errors"] and p99 is not None and p99 < P99_LIMIT_MS and report["drop_ratio"] <= DROP_LIMIT
                      and report["realtime_lag_ms_max"] < 500)
    say(f"  {calls:4d} calls: p99 {p99} ms, dropped {report['drop_ratio']:.1%}, lag {report['realtime_lag_ms_max']} ms, "
        f"server {report.get('server_cpu_cores')} cores -> {'pass' if report['pass'] else 'fail'}")
    return report


def replay_throughput(service: Service, calls: int, model_audio_per_call_s: float) -> dict:
    """`calls` concurrent replays of the sample call; model input processed per second of wall time."""
    from concurrent.futures import ThreadPoolExecutor

    from clients.bridge import CallPlan, run_call

    plans = [CallPlan(f"replay-{i}-{time.time_ns()}", "bench", "bench", roles=("customer", "agent"), speed=0, realtime=False)
             for i in range(calls)]
    started = time.perf_counter()
    with ThreadPoolExecutor(calls) as pool:
        results = list(pool.map(lambda p: run_call(service.target, str(CALL), p), plans))
    wall = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    dropped = sum(s["windows_dropped"] for r in results for s in r.of("summary")[0]["speakers"]) if not errors else None
    rate = calls * model_audio_per_call_s / wall
    say(f"replay saturation: {calls} calls in {wall:.1f} s -> {rate:.2f} model audio-s/s, dropped {dropped}")
    return {"calls": calls, "wall_s": round(wall, 2), "model_audio_s_per_s": round(rate, 2), "dropped": dropped, "errors": errors}


def search(service: Service, seconds: float, start: int, limit: int) -> tuple[int, list[dict]]:
    """Largest passing number of calls: double from `start` until a failure, then bisect."""
    trials, best, calls, failed = [], 0, start, None
    while calls <= limit:
        report = trial(service, calls, seconds)
        trials.append(report)
        if not report["pass"]:
            failed = calls
            break
        best = calls
        calls *= 2
    if failed is None:
        return best, trials
    low, high = best, failed
    while high - low > max(1, low // 8):
        mid = (low + high) // 2
        report = trial(service, mid, seconds)
        trials.append(report)
        low, high = (mid, high) if report["pass"] else (low, mid)
    return low, trials


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": version("torch"),
            "cuda": shutil.which("nvidia-smi") is not None, "date": time.strftime("%Y-%m-%d")}


def print_table(result: dict) -> None:
    """The benchmark table (Markdown) from a run's JSON."""
    m, model, ceiling, naive = result["machine"], result["model"], result["ceiling"], result["naive"]
    demand = result["service_scoring"]["model_audio_s_per_call_s"]
    saturation = result["service_saturation"]["model_audio_s_per_s"]
    saturation_calls = saturation / demand
    name = f"UNTRAINED {model['size']}-size test checkpoint" if model["untrained_test_model"] else model["path"]
    chunk, full = ceiling["service_chunk"], ceiling["full_window"]
    rows = [
        (f"(a) ceiling: batched forward, {chunk['window_s']:g} s chunks (the service's incremental chunk)", f"{chunk['audio_s_per_s']} audio-s/s (batch {chunk['best_batch']})"),
        (f"(a) ceiling: batched forward, {full['window_s']:g} s windows", f"{full['audio_s_per_s']} audio-s/s (batch {full['best_batch']})"),
        (f"(a) ceiling in calls (the service needs {demand:.2f} model-audio-s per call-s)", f"{result['ceiling_calls']}"),
        ("(b) naive peer: funasr generate per window (same windows, same cadence), one at a time", f"{naive['realtime_calls']} calls"),
        ("(b) reference: generate once per VAD segment (no live updates)", f"{naive['per_segment_realtime_calls']} calls"),
        (f"(c) this service, live calls: {result['criterion']}", f"{result['service_calls']} calls"),
        ("(c) / ceiling, (c) / naive", f"{result['ratio_service_to_ceiling']}, {result['ratio_service_to_naive']}"),
        ("(c') this service saturated: 8 concurrent replays, nothing dropped", f"{saturation} audio-s/s = {saturation_calls:.1f} call-equivalents"),
        ("(c') / ceiling, (c') / naive", f"{saturation / chunk['audio_s_per_s']:.2f}, {saturation_calls / naive['realtime_calls']:.2f}"),
        ("(d) pipeline per process, benchmark-only constant model", f"{result['pipeline_calls_constant_model']} calls"),
    ]
    print(f"\n`make bench` on {m['date']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}"
          f"{' (CUDA)' if m['cuda'] else ' (CPU)'}; model: {name}\n")
    print("| measure | result |")
    print("| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--model", help="a model directory instead of a generated test checkpoint")
    parser.add_argument("--trial-s", type=float, default=30.0, help="seconds of audio per call in each load trial")
    parser.add_argument("--max-calls", type=int, default=512)
    parser.add_argument("--out", default=str(ROOT / ".bench" / "bench.json"))
    parser.add_argument("--table", metavar="JSON", help="only print the table of an earlier run")
    args = parser.parse_args(argv)
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return 0
    if shutil.which("redis-server") is None:
        raise SystemExit("make bench needs redis-server")
    path = model_dir(args)
    windows = WindowConfig()
    chunks, call_s, speech_s = customer_windows(windows)
    service_demand = sum(len(a) for a in chunks) / 16000 / call_s  # model audio per second of call
    say(f"service sends {service_demand:.2f} s of audio to the model per second of call ({windows.scoring}, "
        f"context {windows.context_ms} ms, hop {windows.hop_ms} ms; customer speaks {speech_s / call_s:.0%} of the call)")

    ceiling = measure_ceiling(path, {"service_chunk": (windows.hop_ms + windows.context_ms) / 1000, "full_window": windows.window_ms / 1000})
    naive = measure_naive(path)
    workdir = Path(tempfile.mkdtemp(prefix="callpulse-bench-"))
    try:
        say("the service under load (model-bound):")
        service = Service(path, workdir)
        try:
            service_calls, service_trials = search(service, args.trial_s, 1, args.max_calls)
            saturation = replay_throughput(service, 8, sum(len(a) for a in chunks) / 16000)
        finally:
            service.close()
        say("the pipeline's own ceiling (benchmark-only constant model):")
        service = Service("builtin:constant", workdir)
        try:
            pipeline_calls, pipeline_trials = search(service, args.trial_s, 16, args.max_calls)
        finally:
            service.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ceiling_calls = ceiling["service_chunk"]["audio_s_per_s"] / service_demand
    result = {
        "machine": machine(),
        "model": {"path": path, "size": None if args.model else args.size, "untrained_test_model": not args.model},
        "service_scoring": {"scoring": windows.scoring, "context_ms": windows.context_ms, "hop_ms": windows.hop_ms,
                            "model_audio_s_per_call_s": round(service_demand, 3)},
        "ceiling": ceiling,
        "ceiling_calls": round(ceiling_calls, 2),
        "naive": naive,
        "service_calls": service_calls,
        "service_trials": service_trials,
        "service_saturation": saturation,
        "ratio_saturation_to_ceiling": round(saturation["model_audio_s_per_s"] / ceiling["service_chunk"]["audio_s_per_s"], 2),
        "pipeline_calls_constant_model": pipeline_calls,
        "pipeline_trials": pipeline_trials,
        "ratio_service_to_ceiling": round(service_calls / ceiling_calls, 2) if ceiling_calls else None,
        "ratio_service_to_naive": round(service_calls / naive["realtime_calls"], 2) if naive["realtime_calls"] else None,
        "criterion": f"EmotionUpdate p99 < {P99_LIMIT_MS:g} ms, <= {DROP_LIMIT:.0%} windows dropped, send lag < 500 ms",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
