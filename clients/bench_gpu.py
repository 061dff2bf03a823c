"""`make bench-gpu`: the GPU engine's figures from one run on one GPU machine, written to one JSON file.

    python -m clients.bench_gpu [--size large | --model DIR] [--out .bench/bench_gpu.json] [--workers N]
        [--loadgen-processes P] [--loadgen-channels C] [--ladder 100,250,500,1000,2000] [--ladder-big 500,1000,1500,2000]
        [--trial-s 15]
        [--budget-s 420] [--server-env KEY=VALUE ...] [--server-log FILE] [--py-spy DIR] [--skip PARTS] [--smoke]

(1) ceiling: `score_batch` (the whole path: staging, copies, forward, split) of the model on 1 s and 3 s chunks,
    for bf16, fp16 and fp32 x batch 1..256, eagerly and replayed from CUDA graphs: ms per pass, audio-s/s, and
    the largest difference between the graph's and the eager scores;
(2) naive peer: funasr `AutoModel.generate` on the GPU, one window at a time, over the windows the service would
    score for the bundled call (full re-encoding), as clients/bench.py measures it;
(2') speech check: the engine's silero-vad check (service/inference/speech.py) on the device, batches of 1..256
    channels each bringing 0.5 s of new audio per 1 s window (the service's hop) from its carried state: ms per
    batch and windows per second;
(3) service ladder: `python -m service serve --workers N` on the GPU under clients.loadgen's `run_load` (P
    processes, one gRPC connection per CALLS_PER_CHANNEL calls) with 100, 250, 500, 1000 and 2000 live calls,
    stopping at the first step that fails (EmotionUpdate p99 < 1 s, <= 1% windows dropped, send lag < 500 ms, no
    call errors), with the GPU's utilisation (nvidia-smi, else torch.cuda.utilization) and the server's CPU (its
    process tree, from /proc). By default P is a third of the cores and N the rest less one (load_defaults: 5 and
    10 on 16 cores), since the load generator shares the machine;
(4) a ladder of 500, 1000, 1500 and 2000 calls with 100 ms of audio per message instead of 20 (a bridge that sends
    larger packets: the transport's and the pipeline's per-message cost fall), the load on a quarter of the cores;
(5) one-worker ladder: the same with `--workers 1` and 25, 50, 100, 150 calls (what one ingest process carries).
Each ladder step records the cores of each process of the pod (engine, supervisor, workers busiest first) and the
engine's batching (batches, mean windows per batch, mean queue wait, model busy share) from the pod's /metrics.
A part that fails or runs out of the time budget is recorded with its error and the rest goes on; the JSON is
rewritten after each part. `--smoke` runs the same on the CPU with a tiny checkpoint and tiny settings (CUDA graphs
emulated: the static shapes replayed eagerly), for CI to check the JSON's structure; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CALL = ROOT / "clients" / "samples" / "call_stereo_8k.wav"
PY = sys.executable
SCHEMA = "callpulse-bench-gpu/1"
P99_LIMIT_MS = 1000.0
DROP_LIMIT = 0.01
LAG_LIMIT_MS = 500.0

FULL = dict(size="large", precisions=("bf16", "fp16", "fp32"), chunks_s=(1.0, 3.0),
            batches=(1, 2, 4, 8, 16, 32, 64, 128, 256), min_s=0.3, naive_windows=0,
            ladder=(100, 250, 500, 1000, 2000), ladder_big=(500, 1000, 1500, 2000), ladder_one=(25, 50, 100, 150),
            trial_s=15.0, budget_s=420.0, chunk_ms=20, big_chunk_ms=100, speech_batches=(1, 8, 32, 64, 128, 256))
CEILING_SHARE = 0.45
"""The ceiling may use this share of the budget; the naive peer and the ladder get the rest."""
SMOKE = dict(size="tiny", precisions=("fp32",), chunks_s=(1.0, 3.0), batches=(1, 2), min_s=0.02, naive_windows=4,
             ladder=(1, 2), ladder_big=(1, 2), ladder_one=(1,), trial_s=10.0, budget_s=240.0, chunk_ms=20, big_chunk_ms=100,
             speech_batches=(1, 4))
CALLS_PER_CHANNEL = 5
"""The ladder's load opens one gRPC connection per this many calls by default: SO_REUSEPORT spreads connections
over the workers, so fewer, fuller connections load some workers more than others (on the H200 on 2026-11-28,
25 calls per connection failed 500 calls with 6 of 16 cores busy)."""


def load_defaults(cores: int, chunk_ms: int = 20) -> tuple[int, int]:
    """(load-generator processes, workers of an all-cores ladder) for a machine of `cores` cores that runs both.
    20 ms chunks: a third of the cores for the load (about 4-5 ms of its CPU per call-second against the server's
    12-14), the rest less one for the engine for the workers. 100 ms chunks: a quarter for the load (about 1.3 ms
    per call-second) and the rest for the workers (the engine shares them: 4 and 12 on 16 cores carried 1500 calls
    on the H200)."""
    if chunk_ms >= 100:
        processes = max(1, cores // 4)
        return processes, max(1, cores - processes)
    processes = max(1, cores // 3)
    return processes, max(1, cores - processes - 1)


def say(text: str) -> None:
    print(f"[bench-gpu] {text}", flush=True)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Budget:
    """The run's wall-clock budget: what is left, and whether a part still fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def share_left(self, share: float) -> float:
        """Seconds left of the first `share` of the budget (a part's own allowance)."""
        return self.seconds * share - self.elapsed()


def model_dir(size: str, model: str | None) -> str:
    """The model to measure: --model, or an UNTRAINED test checkpoint of `size` built once under .bench/models."""
    if model:
        return model
    path = ROOT / ".bench" / "models" / size
    if not (path / "model.pt").exists():
        say(f"building an UNTRAINED {size}-size test checkpoint in {path} (compute does not depend on weights)")
        subprocess.run([PY, "-m", "service", "make-test-model", str(path), "--size", size], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(path)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine(device: str) -> dict[str, Any]:
    """CPU, GPU, driver and library versions."""
    from importlib.metadata import version

    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                            "torch": version("torch"), "funasr": version("funasr"), "cuda_runtime": torch.version.cuda,
                            "device": device, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}")
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["driver"] = f"unknown ({_error(exc)})"
    return info


def _time_passes(model, windows: list[np.ndarray], min_s: float) -> tuple[float, list]:
    """ms per score_batch call (after one untimed call), at least 3 calls and `min_s` seconds; and the results."""
    results = model.score_batch(windows)
    reps, started = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - started < min_s:
        model.score_batch(windows)
        reps += 1
    return (time.perf_counter() - started) / reps * 1000, results


def measure_ceiling(path: str, device: str, settings: dict, budget: Budget, emulate: bool) -> dict[str, Any]:
    """score_batch time per precision x chunk length x batch size, eager and from CUDA graphs."""
    import torch

    from service.inference.emotion2vec import Emotion2vecModel

    out: dict[str, Any] = {"device": device, "graph_backend": "emulated" if emulate else "cuda",
                           "method": "score_batch wall time per call (host staging, copies, forward, split), random "
                                     "audio of exactly the chunk length, after one untimed call",
                           "rows": [], "captures": [], "best": [], "errors": []}
    rng = np.random.default_rng(0)
    batches, chunks = settings["batches"], settings["chunks_s"]
    audio = {c: [rng.normal(0, 0.1, int(c * 16000)).astype(np.float32) for _ in range(max(batches))] for c in chunks}
    for precision in settings["precisions"]:
        if budget.share_left(CEILING_SHARE) < 20:
            out["errors"].append({"precision": precision, "error": "skipped: out of the ceiling's time budget"})
            continue
        model = None
        try:
            model = Emotion2vecModel.load(path, device=device, precision=precision, bucket_ms=500,
                                          warm_lengths_ms=tuple(int(c * 1000) for c in chunks))
            model.warm_up(max_batch=max(batches))
            rows = {}
            for c in chunks:
                for b in batches:
                    if budget.share_left(CEILING_SHARE) < 10:
                        out["errors"].append({"precision": precision, "error": f"{c} s x {b} and beyond skipped: out of the time budget"})
                        break
                    ms, results = _time_passes(model, audio[c][:b], settings["min_s"])
                    rows[(c, b)] = {"precision": model.precision, "chunk_s": c, "batch": b, "eager_ms": round(ms, 3),
                                    "eager_audio_s_per_s": round(b * c / ms * 1000, 1), "_scores": results}
            say(f"{precision}: eager done ({budget.elapsed():.0f} s)")
            started = time.perf_counter()
            report = model.capture_graphs(max(batches), emulate=emulate)
            report = dict(report, precision=precision, wall_s=round(time.perf_counter() - started, 3))
            out["captures"].append(report)
            say(f"{precision}: captured {report['captured']} graphs in {report['seconds']} s, self-check {report['self_check']}")
            for (c, b), row in rows.items():
                replays = model.graphs.replays
                ms, results = _time_passes(model, audio[c][:b], settings["min_s"])
                eager_scores = row.pop("_scores")
                row.update(graph_ms=round(ms, 3), graph_audio_s_per_s=round(b * c / ms * 1000, 1),
                           graph_replayed=model.graphs.replays > replays,
                           max_abs_diff_graph_vs_eager=float(max(np.abs(r.scores - e.scores).max()
                                                                 for r, e in zip(results, eager_scores))))
                out["rows"].append(row)
            for c in chunks:
                mine = [r for r in out["rows"] if r["chunk_s"] == c and r["precision"] == model.precision]
                eager = max(mine, key=lambda r: r["eager_audio_s_per_s"])
                graph = max(mine, key=lambda r: r["graph_audio_s_per_s"])
                out["best"].append({"precision": model.precision, "chunk_s": c,
                                    "eager": {"audio_s_per_s": eager["eager_audio_s_per_s"], "batch": eager["batch"]},
                                    "graph": {"audio_s_per_s": graph["graph_audio_s_per_s"], "batch": graph["batch"]}})
            say(f"{precision}: graphs done ({budget.elapsed():.0f} s)")
        except Exception as exc:  # noqa: BLE001 - recorded; the other precisions go on
            out["errors"].append({"precision": precision, "error": _error(exc)})
            say(f"{precision}: failed: {_error(exc)}")
        finally:
            if model is not None:
                model.close()
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return out


def measure_speech_check(device: str, settings: dict) -> dict[str, Any]:
    """The speech check's cost on `device`: per batch size, ms per call of SpeechDetector.speech_shares when every row
    is a channel that brings 0.5 s of new audio in a 1 s window (after each channel's first window), and windows/s."""
    from service.inference.base import StreamSpan
    from service.inference.speech import CHUNK, SpeechDetector

    detector = SpeechDetector(device)
    audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 40).astype(np.float32)
    rows = []
    for batch in settings["speech_batches"]:
        position = 0

        def step() -> None:
            nonlocal position
            window = audio[position:position + 16000]
            detector.speech_shares([window] * batch, [StreamSpan((batch, i), position) for i in range(batch)])
            position += 8000

        step()  # each channel's first window runs all of its chunks
        reps, started = 0, time.perf_counter()
        while (reps < 3 or time.perf_counter() - started < settings["min_s"]) and position + 16000 <= len(audio):
            step()
            reps += 1
        ms = (time.perf_counter() - started) / reps * 1000
        rows.append({"batch": batch, "ms_per_batch": round(ms, 3), "windows_per_s": round(batch / ms * 1000, 1),
                     "new_chunks_per_window": 8000 // CHUNK})
    return {"device": device, "split": detector.split, "rows": rows,
            "method": "SpeechDetector.speech_shares wall time per call, random audio, every row its own channel"}


def customer_windows(full: bool) -> tuple[list[np.ndarray], float]:
    """The 16 kHz windows the service scores for the bundled call's customer, and the call's duration."""
    from clients.bench_scoring import cut
    from clients.wavfile import read_wav
    from service.audio.resample import to_model_input
    from service.config import WindowConfig

    call = read_wav(str(CALL))
    windows, _ = cut(np.ascontiguousarray(call.samples[:, 0]), call.sample_rate,
                     WindowConfig(scoring="full" if full else "incremental"))
    return [to_model_input(w.samples, w.sample_rate) for w in windows], call.duration_s


def measure_naive(path: str, device: str, limit: int) -> dict[str, Any]:
    """funasr generate on each full window of the bundled call, one at a time, on `device`."""
    from funasr import AutoModel

    windows, call_s = customer_windows(full=True)
    windows_per_call_s = len(windows) / call_s
    if limit:
        windows = windows[:limit]
    automodel = AutoModel(model=path, device=device, disable_update=True, disable_pbar=True, log_level="ERROR")
    automodel.generate(windows[0], granularity="utterance", extract_embedding=False)
    started = time.perf_counter()
    for audio in windows:
        automodel.generate(audio, granularity="utterance", extract_embedding=False)
    per_window = (time.perf_counter() - started) / len(windows)
    result = {"device": device, "windows": len(windows), "windows_per_call_s": round(windows_per_call_s, 3),
              "ms_per_window": round(per_window * 1000, 2),
              "realtime_calls": round(1 / (per_window * windows_per_call_s), 2)}
    say(f"naive peer: {result['ms_per_window']} ms per window -> {result['realtime_calls']} real-time calls")
    del automodel
    gc.collect()
    return result


class GpuSampler:
    """GPU utilisation and memory while a trial runs: nvidia-smi every 500 ms, else torch.cuda.utilization()."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.samples: list[tuple[float, float | None]] = []
        self.source = None
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "GpuSampler":
        if not self.device.startswith("cuda"):
            self.error = "no GPU (CPU run)"
            return self
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", "500"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        else:
            self.source = "torch.cuda.utilization"
            self._thread = threading.Thread(target=self._poll_torch, daemon=True)
        self._thread.start()
        return self

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.strip().split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def _poll_torch(self) -> None:
        import torch

        while not self._stop.wait(0.5):
            try:
                self.samples.append((float(torch.cuda.utilization(torch.device(self.device))), None))
            except Exception as exc:  # noqa: BLE001 - pynvml missing, say
                self.error = _error(exc)
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        if self._thread is not None:
            self._thread.join(5)
        utils = [u for u, _ in self.samples]
        mems = [m for _, m in self.samples if m is not None]
        return {"source": self.source, "samples": len(utils), "error": self.error,
                "util_mean_pct": round(float(np.mean(utils)), 1) if utils else None,
                "util_max_pct": max(utils) if utils else None, "memory_used_mib_max": max(mems) if mems else None}


def _proc_table() -> tuple[dict[int, int], dict[int, float]]:
    """(parent of each process, its own CPU seconds so far: user + system) from Linux /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    return parents, cpu


def pod_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process of a pod (its ready line's pids; one that is gone is left out)."""
    _, cpu = _proc_table()
    return {name: cpu[pid] for name, pid in pids.items() if pid in cpu}


def pod_cores(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, Any]:
    """Cores each process of the pod used between two pod_cpu_s samples: the engine's, the supervisor's, and the
    workers' (busiest first), so that a step that fails shows which process was full."""
    used = {name: (after[name] - before[name]) / wall for name in after if name in before and wall > 0}
    workers = sorted((v for k, v in used.items() if k.startswith("worker")), reverse=True)
    return {"engine": round(used["engine"], 2) if "engine" in used else None,
            "supervisor": round(used["supervisor"], 2) if "supervisor" in used else None,
            "workers": [round(v, 2) for v in workers]}


ENGINE_SERIES = ("callpulse_inference_batch_size_sum", "callpulse_inference_batch_size_count",
                 "callpulse_inference_forward_passes_total", "callpulse_inference_queue_wait_seconds_sum",
                 "callpulse_inference_queue_wait_seconds_count", "callpulse_inference_batch_seconds_sum")


def engine_sample(metrics_url: str | None) -> dict[str, float] | None:
    """The engine's batching counters from the pod's /metrics (summed over label sets); None without /metrics."""
    if not metrics_url:
        return None
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out = dict.fromkeys(ENGINE_SERIES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out:
                out[sample.name] += sample.value
    return out


def engine_figures(before: dict[str, float] | None, after: dict[str, float] | None, wall: float) -> dict[str, Any] | None:
    """Batches, mean windows per batch, mean queue wait and the model's busy share (model seconds per second)
    between two engine_sample readings."""
    if not before or not after or wall <= 0:
        return None
    delta = {k: after[k] - before[k] for k in ENGINE_SERIES}
    batches = delta["callpulse_inference_batch_size_count"]
    waits = delta["callpulse_inference_queue_wait_seconds_count"]
    return {"batches": int(batches), "forward_passes": int(delta["callpulse_inference_forward_passes_total"]),
            "mean_batch": round(delta["callpulse_inference_batch_size_sum"] / batches, 1) if batches else None,
            "mean_queue_wait_ms": round(delta["callpulse_inference_queue_wait_seconds_sum"] / waits * 1000, 1) if waits else None,
            "model_busy_share": round(delta["callpulse_inference_batch_seconds_sum"] / wall, 3)}


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its descendants (Linux /proc)."""
    parents, cpu = _proc_table()
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(cpu.get(p, 0.0) for p in tree)


class Server:
    """`python -m service serve` on the bench's device (and a redis-server of its own) for the ladder."""

    def __init__(self, model: str, device: str, max_calls: int, workers: int | None, extra_env: dict[str, str],
                 workdir: Path, start_timeout_s: float, keep_log: str | None = None) -> None:
        self.keep_log = keep_log
        self.redis_port = _free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = dict(os.environ, CALLPULSE_LOG_LEVEL="WARNING", CALLPULSE_MAX_HANDSHAKES=str(max(256, max_calls)),
                   CALLPULSE_SHUTDOWN_GRACE_S="5")
        env.update(extra_env)
        self.command = [PY, "-m", "service", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "-1",
                        "--metrics-port", "0", "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0", "--model", model,
                        "--device", device, "--max-calls", str(max_calls)]
        if workers is not None:
            self.command += ["--workers", str(workers)]
        self.stderr_path = workdir / "server.stderr"
        self._stderr = open(self.stderr_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(self.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env=env)
        started = time.monotonic()
        ready: dict[str, Any] | None = None
        while time.monotonic() - started < start_timeout_s:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            if line.startswith("{") and '"ready"' in line:
                ready = json.loads(line)
                break
        if ready is None:
            tail = self.stderr_tail()
            self.close()
            raise RuntimeError(f"the service did not become ready ({'exited ' + str(self.proc.returncode) if self.proc.poll() is not None else 'timed out'}): {tail}")
        self.start_s = round(time.monotonic() - started, 1)
        self.target = f"grpc://127.0.0.1:{ready['grpc_port']}"
        self.metrics = f"http://127.0.0.1:{ready['metrics_port']}/metrics" if ready.get("metrics_port", -1) > 0 else None
        self.pids = {"supervisor": self.proc.pid, **ready.get("pids", {})}
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _ in self.proc.stdout:
            pass

    def stderr_tail(self, chars: int = 1500) -> str:
        self._stderr.flush()
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the service and its redis-server; copy the service's stderr to `keep_log` if given."""
        for proc in (self.proc, self.redis):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._stderr.close()
        if self.keep_log:
            shutil.copyfile(self.stderr_path, self.keep_log)


PROFILE_S = 5
"""Seconds of py-spy sampling per ladder step (--py-spy)."""


class PodProfiler:
    """py-spy over every process of the pod (--subprocesses, --nonblocking: the processes are not paused) for
    PROFILE_S from `delay_s` on, written as collapsed stacks; optional: a machine without py-spy records why."""

    def __init__(self, pid: int, out: Path, delay_s: float) -> None:
        self.out = out
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        exe = shutil.which("py-spy")
        if exe is None:
            self.error = "py-spy is not on PATH"
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", "50", "--duration",
                   str(PROFILE_S), "--format", "raw", "--output", str(out)]
        self._timer = threading.Timer(max(0.0, delay_s), self._start, (command,))
        self._timer.daemon = True
        self._timer.start()

    def _start(self, command: list[str]) -> None:
        try:
            self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            self.error = _error(exc)

    def stop(self) -> dict[str, Any]:
        """Wait for the sampling to end; where its output went, or why there is none."""
        if self.error is None:
            self._timer.cancel()
            if self._proc is not None:
                try:
                    _, err = self._proc.communicate(timeout=PROFILE_S + 15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    _, err = self._proc.communicate()
                if self._proc.returncode != 0 or not self.out.exists():
                    self.error = f"py-spy exited {self._proc.returncode}: {(err or '').strip()[-300:]}"
            else:
                self.error = "the step ended before the sampling was due"
        return {"file": self.out.name, "seconds": PROFILE_S} if self.error is None else {"error": self.error}


def _quiet(fn, *args):
    """fn(*args), or None if it raises (a figure beside the measurement must not fail the step)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        return None


def _summarise(report: dict[str, Any]) -> dict[str, Any]:
    """A loadgen report with its error list cut to a count and the first few."""
    out = dict(report)
    errors = out.pop("errors", [])
    out["error_count"] = len(errors)
    out["first_errors"] = errors[:5]
    return out


def run_ladder(path: str, device: str, settings: dict, budget: Budget, workers: int | None, extra_env: dict[str, str],
               loadgen_processes: int | None, server_log: str | None = None, loadgen_channels: int | None = None,
               steps_key: str = "ladder", chunk_ms: int = 20, profile_dir: str | None = None,
               label: str = "ladder") -> dict[str, Any]:
    """Live calls in steps (settings[steps_key]) of `chunk_ms` audio per message, until the first step that fails;
    every failure to run is recorded, not raised. `loadgen_channels` None: one connection per CALLS_PER_CHANNEL calls.
    `profile_dir`: py-spy samples the whole pod for PROFILE_S in the middle of each step (PROFILE_DIR/LABEL-CALLS.txt)."""
    steps = settings[steps_key]
    out: dict[str, Any] = {"steps_planned": list(steps), "steps": [], "max_passing_calls": None, "workers": workers,
                           "server_env": extra_env, "loadgen_processes": loadgen_processes, "loadgen_channels": loadgen_channels,
                           "chunk_ms": chunk_ms, "trial_s": settings["trial_s"],
                           "criterion": f"EmotionUpdate p99 < {P99_LIMIT_MS:g} ms, <= {DROP_LIMIT:.0%} windows dropped, "
                                        f"send lag < {LAG_LIMIT_MS:g} ms, no call errors",
                           "error": None}
    try:
        from clients.loadgen import run_load
    except Exception as exc:  # noqa: BLE001 - e.g. agentassist/ not generated or not carried
        out["error"] = f"clients.loadgen could not be imported: {_error(exc)}"
        return out
    if shutil.which("redis-server") is None:
        out["error"] = "redis-server is not on PATH"
        return out
    workdir = Path(tempfile.mkdtemp(prefix="callpulse-bench-gpu-"))
    server = None
    try:
        server = Server(path, device, max(steps) + 16, workers, extra_env, workdir, min(600.0, max(30.0, budget.left() - 30)),
                        keep_log=server_log)
        out["server_start_s"] = server.start_s
        out["server_pids"] = server.pids  # the py-spy profiles name processes by pid
        out["server_command"] = " ".join(server.command[1:])
        say(f"service ready in {server.start_s} s: {out['server_command']}")
        passing = 0
        for calls in steps:
            ramp_s = max(2.0, calls / 200)
            if budget.left() < settings["trial_s"] + ramp_s + 20:
                out["steps"].append({"calls": calls, "skipped": "out of the time budget"})
                break
            if server.proc.poll() is not None:
                out["steps"].append({"calls": calls, "error": f"the service exited ({server.proc.returncode}): {server.stderr_tail()}"})
                break
            kwargs: dict[str, Any] = {"duration_s": settings["trial_s"], "ramp_s": ramp_s, "metrics_url": server.metrics,
                                      "chunk_ms": chunk_ms}
            if loadgen_processes is not None:
                kwargs["processes"] = min(loadgen_processes, calls)  # run_load needs a call per process
            channels = loadgen_channels if loadgen_channels is not None else -(-calls // CALLS_PER_CHANNEL)
            kwargs["channels"] = max(kwargs.get("processes", 1), min(channels, calls))
            sampler = GpuSampler(device).start()
            profiler = PodProfiler(server.proc.pid, Path(profile_dir) / f"{label}-{calls}.txt",
                                   ramp_s + settings["trial_s"] / 2 - PROFILE_S / 2) if profile_dir else None
            engine_before = _quiet(engine_sample, server.metrics)
            pod_before = pod_cpu_s(server.pids)
            cpu_before, wall_before = process_tree_cpu_s(server.proc.pid), time.monotonic()
            limit = min(settings["trial_s"] + ramp_s + 60, budget.left() - 10)
            try:
                report = asyncio.run(asyncio.wait_for(run_load(server.target, calls, str(CALL), **kwargs), limit))
            except Exception as exc:  # noqa: BLE001 - recorded as this step's failure (a timeout included)
                sampler.stop()
                if profiler:
                    profiler.stop()
                out["steps"].append({"calls": calls, "pass": False, "error": _error(exc)})
                break
            wall = time.monotonic() - wall_before
            server_cpu = (process_tree_cpu_s(server.proc.pid) - cpu_before) / wall
            by_process = pod_cores(pod_before, pod_cpu_s(server.pids), wall)
            engine = engine_figures(engine_before, _quiet(engine_sample, server.metrics), wall)
            gpu = sampler.stop()
            profile = profiler.stop() if profiler else None
            p99 = report["update_latency_ms"]["p99"]
            ok = (not report["errors"] and p99 is not None and p99 < P99_LIMIT_MS and report["drop_ratio"] <= DROP_LIMIT
                  and report["realtime_lag_ms_max"] < LAG_LIMIT_MS)
            step = {"calls": calls, "pass": ok, "p99_ms": p99, "drop_ratio": report["drop_ratio"],
                    "lag_ms_max": report["realtime_lag_ms_max"], "server_cpu_cores_process_tree": round(server_cpu, 2),
                    "server_cores_by_process": by_process, "engine": engine, "gpu": gpu, "loadgen": _summarise(report)}
            if profile:
                step["profile"] = profile
            out["steps"].append(step)
            say(f"{calls:5d} calls: p99 {p99} ms, dropped {report['drop_ratio']:.1%}, lag {report['realtime_lag_ms_max']} ms, "
                f"server {server_cpu:.2f} cores (engine {by_process['engine']}, busiest worker "
                f"{by_process['workers'][0] if by_process['workers'] else None}), mean batch "
                f"{engine and engine['mean_batch']}, GPU {gpu['util_mean_pct']}% -> {'pass' if ok else 'fail'}")
            if not ok:
                break
            passing = calls
        out["max_passing_calls"] = passing
    except Exception as exc:  # noqa: BLE001 - recorded
        out["error"] = _error(exc)
        say(f"ladder failed: {out['error']}")
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench_gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny checkpoint, tiny settings (CI): structure only")
    parser.add_argument("--size", choices=["tiny", "base", "large"], help="test checkpoint size (default large; smoke: tiny)")
    parser.add_argument("--model", help="a model directory instead of a generated test checkpoint")
    parser.add_argument("--device", help="default cuda (smoke: cpu)")
    parser.add_argument("--out", default=str(ROOT / ".bench" / "bench_gpu.json"))
    parser.add_argument("--precisions", help="comma-separated, default bf16,fp16,fp32")
    parser.add_argument("--batches", help="comma-separated batch sizes, default 1,2,4,...,256")
    parser.add_argument("--ladder", help="comma-separated live-call steps, default 100,250,500,1000,2000")
    parser.add_argument("--ladder-big", help="steps of the 100 ms-chunk ladder, default 500,1000,1500,2000")
    parser.add_argument("--trial-s", type=float, help="seconds of audio per call in each ladder step (default 15)")
    parser.add_argument("--budget-s", type=float, help="wall-clock budget of the whole run (default 420)")
    parser.add_argument("--workers", type=int, help="workers of the all-cores ladder (default: load_defaults, 10 on 16 cores)")
    parser.add_argument("--loadgen-processes", type=int, help="load-generator processes (default: load_defaults, 5 on 16 cores)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the served process, e.g. CALLPULSE_MAX_BATCH=64 (repeatable)")
    parser.add_argument("--loadgen-channels", type=int, help="passed to run_load(channels=...): gRPC connections (default one per 25 calls)")
    parser.add_argument("--server-log", help="copy the served process's stderr (its whole log) to this file at the end")
    parser.add_argument("--py-spy", metavar="DIR", help=f"sample the pod with py-spy for {PROFILE_S} s in each ladder step "
                                                         "into DIR (collapsed stacks)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ceiling, naive, speech_check, ladder, ladder_big_chunks, "
                                                   "ladder_one")
    args = parser.parse_args(argv)

    settings = dict(SMOKE if args.smoke else FULL)
    if args.precisions:
        settings["precisions"] = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    if args.batches:
        settings["batches"] = tuple(int(b) for b in args.batches.split(","))
    if args.ladder:
        settings["ladder"] = tuple(int(c) for c in args.ladder.split(","))
    if args.ladder_big:
        settings["ladder_big"] = tuple(int(c) for c in args.ladder_big.split(","))
    if args.trial_s:
        settings["trial_s"] = args.trial_s
    if args.budget_s:
        settings["budget_s"] = args.budget_s
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    default_processes, default_workers = load_defaults(os.cpu_count() or 2)
    processes = args.loadgen_processes or (1 if args.smoke else default_processes)
    workers = args.workers if args.workers is not None else (None if args.smoke else default_workers)
    big_processes, big_workers = load_defaults(os.cpu_count() or 2, settings["big_chunk_ms"])
    big_processes = args.loadgen_processes or (1 if args.smoke else big_processes)
    big_workers = args.workers if args.workers is not None else (None if args.smoke else big_workers)
    budget = Budget(settings["budget_s"])

    import torch

    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA here: run `python -m clients.bench_gpu --smoke` (CPU, structure only), or run this on a GPU machine")
    emulate = not device.startswith("cuda")
    path = model_dir(args.size or settings["size"], args.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "schema": SCHEMA, "smoke": args.smoke, "complete": False,
        "note": ("SMOKE RUN: CPU, tiny UNTRAINED checkpoint, graphs emulated - the figures mean nothing" if args.smoke
                 else "UNTRAINED test checkpoint (compute does not depend on weights)" if not args.model else ""),
        "machine": machine(device),
        "model": {"path": path, "size": None if args.model else (args.size or settings["size"]), "untrained_test_model": not args.model},
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "ceiling": None, "naive": None, "speech_check": None, "ladder": None, "ladder_big_chunks": None, "ladder_one_worker": None,
    }

    def write() -> None:
        result["elapsed_s"] = round(budget.elapsed(), 1)
        out.write_text(json.dumps(result, indent=2))

    say(f"device {device}, model {path}, budget {settings['budget_s']:.0f} s -> {out}")
    write()
    if "ceiling" not in skip:
        try:
            result["ceiling"] = measure_ceiling(path, device, settings, budget, emulate)
        except Exception as exc:  # noqa: BLE001 - recorded
            result["ceiling"] = {"error": _error(exc)}
        write()
    if "naive" not in skip:
        try:
            result["naive"] = measure_naive(path, device, settings["naive_windows"])
        except Exception as exc:  # noqa: BLE001 - recorded
            result["naive"] = {"error": _error(exc)}
        write()
    if "speech_check" not in skip:
        try:
            result["speech_check"] = measure_speech_check(device, settings)
        except Exception as exc:  # noqa: BLE001 - recorded
            result["speech_check"] = {"error": _error(exc)}
        write()
    if "ladder" not in skip:
        result["ladder"] = run_ladder(path, device, settings, budget, workers, extra_env, processes,
                                      args.server_log, args.loadgen_channels, chunk_ms=settings["chunk_ms"],
                                      profile_dir=args.py_spy, label="ladder")
        write()
    if "ladder_big_chunks" not in skip:
        big_log = args.server_log + ".big-chunks" if args.server_log else None
        result["ladder_big_chunks"] = run_ladder(path, device, settings, budget, big_workers, extra_env, big_processes,
                                                 big_log, args.loadgen_channels, steps_key="ladder_big",
                                                 chunk_ms=settings["big_chunk_ms"],
                                                 profile_dir=args.py_spy, label="big-chunks")
        write()
    if "ladder_one" not in skip:
        one_log = args.server_log + ".one-worker" if args.server_log else None
        result["ladder_one_worker"] = run_ladder(path, device, settings, budget, 1, extra_env, min(processes, 2),
                                                 one_log, args.loadgen_channels, steps_key="ladder_one",
                                                 chunk_ms=settings["chunk_ms"], profile_dir=args.py_spy,
                                                 label="one-worker")
    result["complete"] = True
    write()
    say(f"done in {budget.elapsed():.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
