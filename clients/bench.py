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
(d) the pipeline's own per-process ceiling: the live-call search of (e) with one worker;
(e) the pod: `serve --workers 1` and one worker per core with the benchmark-only constant
    model, driven by a multi-process load generator over many connections: the most live calls with
    EmotionUpdate p99 under 500 ms and under 1 s (<= 1% dropped, send lag < 500 ms), and the CPU
    milliseconds per call-second of the server's process tree and of the load generator at the
    largest load under 1 s.
Calls are the bundled stereo sample call (customer scored), looped to the trial length.

    python -m clients.bench --only-pod [--pod-trial-s 20] [--loadgen-processes P]   (just (d) and (e))
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
import psutil

from clients.bench_scoring import cut
from clients.loadgen import run_load
from clients.wavfile import read_wav
from service.audio.resample import to_model_input
from service.config import WindowConfig

ROOT = Path(__file__).resolve().parent.parent
CALL = ROOT / "clients" / "samples" / "call_stereo_8k.wav"
PY = sys.executable
P99_LIMIT_MS = 1000.0
P99_TIGHT_MS = 500.0
DROP_LIMIT = 0.01
LAG_LIMIT_MS = 500.0
CONSTANT_MODEL = "builtin:constant"


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


def serve_help() -> str:
    """`python -m service serve --help`, to learn which options this server has."""
    return subprocess.run([PY, "-m", "service", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def workers_args(workers: str, help_text: str) -> list[str] | None:
    """serve's arguments for `workers` ("1", "auto" or a number); [] where the flag must be left out (1 on a
    server without it), None where this server cannot do it."""
    lines = help_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("--workers")), None)
    if start is None:
        return [] if workers == "1" else None
    block = [lines[start]]
    for line in lines[start + 1:]:
        if line.strip().startswith("-") or not line.strip():
            break
        block.append(line)
    if workers == "auto" and "auto" not in " ".join(block):
        workers = str(os.cpu_count() or 1)
    return ["--workers", workers]


class Service:
    """A `python -m service serve` process (and a redis-server of its own) for the load trials."""

    def __init__(self, model: str, workdir: Path, extra_args: list[str] | None = None) -> None:
        self.redis_port = _free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = dict(os.environ, CALLPULSE_LOG_LEVEL="WARNING")
        self.proc = subprocess.Popen(
            [PY, "-m", "service", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "-1", "--metrics-port", "0",
             "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0", "--model", model, *(extra_args or [])],
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
                port = ready.get("metrics_port")
                self.metrics = f"http://127.0.0.1:{port}/metrics" if port and port > 0 else None
                return
        raise SystemExit("the service did not become ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for proc in (self.proc, self.redis):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in descendants:  # workers the server did not take down with it
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def passes(report: dict, p99_limit_ms: float) -> bool:
    """No errors, EmotionUpdate p99 under the limit, at most DROP_LIMIT of windows dropped, send lag under LAG_LIMIT_MS."""
    p99 = report["update_latency_ms"]["p99"]
    return (not report["errors"] and p99 is not None and p99 < p99_limit_ms and report["drop_ratio"] <= DROP_LIMIT
            and report["realtime_lag_ms_max"] < LAG_LIMIT_MS)


def trial(service: Service, calls: int, seconds: float, processes: int = 1) -> dict:
    """`calls` live calls of `seconds` against the service (load generator in `processes` processes); the loadgen report."""
    report = asyncio.run(run_load(service.target, calls, str(CALL), duration_s=seconds, ramp_s=2.0, metrics_url=service.metrics,
                                  processes=min(processes, calls), server_pid=service.pid))
    report["pass"] = passes(report, P99_LIMIT_MS)
    say(f"  {calls:4d} calls: p99 {report['update_latency_ms']['p99']} ms, dropped {report['drop_ratio']:.1%}, "
        f"lag {report['realtime_lag_ms_max']} ms, server {report.get('server_tree_cores')} cores "
        f"({report.get('server_cpu_ms_per_call_s')} ms/call-s), load generator {report['client_cpu_ms_per_call_s']} ms/call-s"
        f"{', errors ' + str(len(report['errors'])) if report['errors'] else ''} -> {'pass' if report['pass'] else 'fail'}")
    return report


class Trials:
    """Load trials against one service: each number of calls is run once and its report remembered (searches share
    them), unless asked to run it again."""

    def __init__(self, service: Service, seconds: float, processes: int = 1) -> None:
        self.service, self.seconds, self.processes = service, seconds, processes
        self.reports: dict[int, dict] = {}
        self.history: list[dict] = []

    def __call__(self, calls: int, again: bool = False) -> dict:
        if again or calls not in self.reports:
            self.reports[calls] = trial(self.service, calls, self.seconds, self.processes)
            self.history.append(self.reports[calls])
        return self.reports[calls]


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


def search(run: Trials, start: int, limit: int, ok) -> int:
    """Largest number of calls whose report is ok: double from `start` until a failure, then bisect (to 1/8). A load
    that fails where a larger one passed is run once more and the second report decides."""

    def good(calls: int) -> bool:
        if ok(run(calls)):
            return True
        if any(c > calls and ok(r) for c, r in run.reports.items()):  # a stall of the machine, not the load
            return ok(run(calls, again=True))
        return False

    best, calls, failed = 0, start, None
    while calls <= limit:
        if not good(calls):
            failed = calls
            break
        best = calls
        calls *= 2
    if failed is None:
        return best
    low, high = best, failed
    while high - low > max(1, low // 8):
        mid = (low + high) // 2
        low, high = (mid, high) if good(mid) else (low, mid)
    return low


def pod_search(workdir: Path, workers: str, help_text: str, seconds: float, limit: int, processes: int) -> dict:
    """Live calls at p99 < 500 ms and < 1 s for `serve --workers WORKERS` with the constant model, and the CPU per
    call-second (server tree, load generator) at the largest load under 1 s."""
    flag = workers_args(workers, help_text)
    if flag is None:
        say(f"pod --workers {workers}: skipped (`python -m service serve --help` lists no --workers)")
        return {"workers": workers, "skipped": "serve has no --workers"}
    say(f"the pod, serve {' '.join(flag) or '(no --workers: one process)'}, constant model, load generator in {processes} processes:")
    service = Service(CONSTANT_MODEL, workdir, flag)
    try:
        trials = Trials(service, seconds, processes)
        calls_1s = search(trials, 16, limit, lambda r: passes(r, P99_LIMIT_MS))
        calls_500ms = search(trials, 16, limit, lambda r: passes(r, P99_TIGHT_MS))
    finally:
        service.close()
    result = {"workers": workers, "serve_args": flag, "model": CONSTANT_MODEL, "loadgen_processes": processes, "trial_s": seconds,
              "calls_p99_500ms": calls_500ms, "calls_p99_1s": calls_1s, "trials": trials.history}
    at = trials.reports.get(calls_1s)
    if at is not None:
        result["at_1s"] = {"calls": calls_1s, "p99_ms": at["update_latency_ms"]["p99"], "channels": at["channels"],
                           "server_processes": at.get("server_tree_processes"), "server_cores": at.get("server_tree_cores"),
                           "server_cpu_ms_per_call_s": at.get("server_cpu_ms_per_call_s"),
                           "loadgen_cpu_ms_per_call_s": at["client_cpu_ms_per_call_s"]}
    say(f"pod {' '.join(flag) or '(one process)'}: {calls_500ms} calls at p99 < 500 ms, {calls_1s} at p99 < 1 s; "
        f"at {calls_1s}: {result.get('at_1s')}")
    return result


def machine() -> dict:
    from importlib.metadata import version

    from clients.bench_gpu import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": version("torch"),
            "cuda": shutil.which("nvidia-smi") is not None, "date": time.strftime("%Y-%m-%d")}


def _pod_rows(pod: list[dict]) -> list[tuple[str, str]]:
    rows = []
    for run in pod:
        if run.get("skipped"):
            rows.append((f"(e) pod `serve --workers {run['workers']}`", f"not run: {run['skipped']}"))
            continue
        name = f"`serve {' '.join(run['serve_args'])}`" if run["serve_args"] else "`serve` (one process: no --workers yet)"
        at = run.get("at_1s")
        count = at["server_processes"]["end"] if at and at.get("server_processes") else None
        seen = f", {count} server process{'' if count == 1 else 'es'}" if count else ""
        rows.append((f"(e) pod {name}{seen}, constant model: live calls at p99 < 500 ms / < 1 s",
                     f"{run['calls_p99_500ms']} / {run['calls_p99_1s']} calls"))
        if at:
            rows.append((f"(e) CPU per call-second at {at['calls']} calls: server process tree / load generator "
                         f"({run['loadgen_processes']} processes, {at['channels']} connections)",
                         f"{at['server_cpu_ms_per_call_s']} ms / {at['loadgen_cpu_ms_per_call_s']} ms "
                         f"(server {at['server_cores']} cores)"))
    return rows


def print_table(result: dict) -> None:
    """The benchmark table (Markdown) from a run's JSON (a full run, or one of --only-pod)."""
    m = result["machine"]
    rows = []
    if "ceiling" in result:
        model, ceiling, naive = result["model"], result["ceiling"], result["naive"]
        demand = result["service_scoring"]["model_audio_s_per_call_s"]
        saturation = result["service_saturation"]["model_audio_s_per_s"]
        saturation_calls = saturation / demand
        name = f"UNTRAINED {model['size']}-size test checkpoint" if model["untrained_test_model"] else model["path"]
        chunk, full = ceiling["service_chunk"], ceiling["full_window"]
        rows += [
            (f"(a) ceiling: batched forward, {chunk['window_s']:g} s chunks (the service's incremental chunk)", f"{chunk['audio_s_per_s']} audio-s/s (batch {chunk['best_batch']})"),
            (f"(a) ceiling: batched forward, {full['window_s']:g} s windows", f"{full['audio_s_per_s']} audio-s/s (batch {full['best_batch']})"),
            (f"(a) ceiling in calls (the service needs {demand:.2f} model-audio-s per call-s)", f"{result['ceiling_calls']}"),
            ("(b) naive peer: funasr generate per window (same windows, same cadence), one at a time", f"{naive['realtime_calls']} calls"),
            ("(b) reference: generate once per VAD segment (no live updates)", f"{naive['per_segment_realtime_calls']} calls"),
            (f"(c) this service, live calls: {result['criterion']}", f"{result['service_calls']} calls"),
            ("(c) / ceiling, (c) / naive", f"{result['ratio_service_to_ceiling']}, {result['ratio_service_to_naive']}"),
            ("(c') this service saturated: 8 concurrent replays, nothing dropped", f"{saturation} audio-s/s = {saturation_calls:.1f} call-equivalents"),
            ("(c') / ceiling, (c') / naive", f"{saturation / chunk['audio_s_per_s']:.2f}, {saturation_calls / naive['realtime_calls']:.2f}"),
        ]
        header = f"model: {name}"
    else:
        header = "`--only-pod`"
    rows.append(("(d) pipeline per process, benchmark-only constant model", f"{result['pipeline_calls_constant_model']} calls"))
    rows += _pod_rows(result.get("pod", []))
    took = f"; took {result['took_s'] / 60:.1f} min" if result.get("took_s") else ""
    print(f"\n`make bench` on {m['date']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}"
          f"{' (CUDA)' if m['cuda'] else ' (CPU)'}; {header}{took}\n")
    print("| measure | result |")
    print("| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--model", help="a model directory instead of a generated test checkpoint")
    parser.add_argument("--trial-s", type=float, default=30.0, help="seconds of audio per call in each load trial of (c)")
    parser.add_argument("--pod-trial-s", type=float, default=20.0, help="seconds of audio per call in each trial of (d) and (e)")
    parser.add_argument("--loadgen-processes", type=int, default=max(2, (os.cpu_count() or 2) // 4),
                        help="load generator processes in (d) and (e) (default: a quarter of the cores, at least 2)")
    parser.add_argument("--max-calls", type=int, default=512)
    parser.add_argument("--only-pod", action="store_true", help="run only (d) and (e)")
    parser.add_argument("--out", help="default .bench/bench.json (.bench/bench-pod.json with --only-pod)")
    parser.add_argument("--table", metavar="JSON", help="only print the table of an earlier run")
    args = parser.parse_args(argv)
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return 0
    if shutil.which("redis-server") is None:
        raise SystemExit("make bench needs redis-server")
    out = Path(args.out or ROOT / ".bench" / ("bench-pod.json" if args.only_pod else "bench.json"))
    began = time.monotonic()
    result: dict = {"machine": machine()}
    workdir = Path(tempfile.mkdtemp(prefix="callpulse-bench-"))
    try:
        if not args.only_pod:
            result.update(model_bound(args, workdir))
        help_text = serve_help()
        # One worker, then one per core (the engine shares the cores: with the constant model it has nothing to do).
        pod = [pod_search(workdir, workers, help_text, args.pod_trial_s, args.max_calls, args.loadgen_processes)
               for workers in dict.fromkeys(("1", str(os.cpu_count() or 1)))]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.update({
        "pipeline_calls_constant_model": pod[0].get("calls_p99_1s"),
        "pod": pod,
        "criterion": f"EmotionUpdate p99 < {P99_LIMIT_MS:g} ms, <= {DROP_LIMIT:.0%} windows dropped, send lag < {LAG_LIMIT_MS:g} ms",
        "took_s": round(time.monotonic() - began),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten to {out}")
    return 0


def model_bound(args: argparse.Namespace, workdir: Path) -> dict:
    """(a), (b), (c) and (c'): the model's ceiling, the naive peer, and the service with that model."""
    path = model_dir(args)
    windows = WindowConfig()
    chunks, call_s, speech_s = customer_windows(windows)
    service_demand = sum(len(a) for a in chunks) / 16000 / call_s  # model audio per second of call
    say(f"service sends {service_demand:.2f} s of audio to the model per second of call ({windows.scoring}, "
        f"context {windows.context_ms} ms, hop {windows.hop_ms} ms; customer speaks {speech_s / call_s:.0%} of the call)")

    ceiling = measure_ceiling(path, {"service_chunk": (windows.hop_ms + windows.context_ms) / 1000, "full_window": windows.window_ms / 1000})
    naive = measure_naive(path)
    say("the service under load (model-bound):")
    service = Service(path, workdir)
    try:
        trials = Trials(service, args.trial_s)
        service_calls = search(trials, 1, args.max_calls, lambda r: passes(r, P99_LIMIT_MS))
        saturation = replay_throughput(service, 8, sum(len(a) for a in chunks) / 16000)
    finally:
        service.close()
    ceiling_calls = ceiling["service_chunk"]["audio_s_per_s"] / service_demand
    return {
        "model": {"path": path, "size": None if args.model else args.size, "untrained_test_model": not args.model},
        "service_scoring": {"scoring": windows.scoring, "context_ms": windows.context_ms, "hop_ms": windows.hop_ms,
                            "model_audio_s_per_call_s": round(service_demand, 3)},
        "ceiling": ceiling,
        "ceiling_calls": round(ceiling_calls, 2),
        "naive": naive,
        "service_calls": service_calls,
        "service_trials": trials.history,
        "service_saturation": saturation,
        "ratio_saturation_to_ceiling": round(saturation["model_audio_s_per_s"] / ceiling["service_chunk"]["audio_s_per_s"], 2),
        "ratio_service_to_ceiling": round(service_calls / ceiling_calls, 2) if ceiling_calls else None,
        "ratio_service_to_naive": round(service_calls / naive["realtime_calls"], 2) if naive["realtime_calls"] else None,
    }


if __name__ == "__main__":
    sys.exit(main())
