"""Per-call CPU cost of the server: CPU ms per second of call, in process stage by stage, and end to end.

    python -m clients.bench_cpu [--calls 10] [--repeats 5] [--paced-calls 20] [--paced-repeats 2]
        [--live-calls 20] [--live-s 30] [--live-repeats 3] [--live-chunk-ms 20] [--speech-check 0] [--skip-live]
        [--skip-in-process]
        [--skip-floor]
        [--out .bench/cpu.json] [--table .bench/cpu.json]

Both parts use the bundled stereo call (clients/samples/call_stereo_8k.wav, 8 kHz, customer and agent
analysed, customer scored), 20 ms chunks (end to end: --live-chunk-ms), the default rules and the benchmark-only constant model
(`service.inference.constant.ConstantEmotionModel`, which costs almost nothing) behind the real
InferenceBatcher, so what is measured is the pipeline's own cost.

(a) In process: `--calls` CallSessions at once, each replaying the whole file (realtime=False) as a
    bridge would: push_audio of every 20 ms chunk, flow_control, a turn for the other calls (as a
    transport awaits its next message), and every event turned into its gRPC message and serialised
    (what the gRPC transport does). The total is the process CPU time
    (time.process_time: every thread, the inference worker included) of a plain run, divided by the
    seconds of call audio (median of `--repeats` runs). The stages come from as many timed runs, in
    which every pipeline function of `_hooks` is wrapped in a clock (time.perf_counter) that charges
    its time to its stage, exclusive of the hooked functions nested in it; the clock's own cost per
    call (calibrated each run, a fraction of a microsecond) is taken out, and each stage's share of the
    event-loop thread's busy time (not waiting in its selector) is applied to that thread's CPU time
    (time.thread_time), so time lost waiting for a core or for the GIL is spread over the stages as it
    happened. What no hooked function covers (the event loop itself, tasks, futures, awaiting) is the
    `event loop` row, and the rest of the process's CPU the inference worker thread's.
(a') The same with `--paced-calls` live calls (realtime=True) whose chunks are pushed when they are due
    in real time: the process waits between chunks as a server does. The `event loop` row then includes
    the benchmark's own pacing timers.
(b) End to end: `python -m service serve --model builtin:constant` as its own process (with its own
    redis-server; the engine's speech check off unless `--speech-check`) and `--live-calls` live calls over gRPC from clients.loadgen for `--live-s` seconds
    of audio each; the server's CPU time (the process and its children, from /proc via psutil) over
    the load divided by the seconds of call audio, median of `--live-repeats` runs. The server's idle CPU
    rate and Redis's CPU are reported beside it, and (unless --skip-floor) one more run with the per-call
    pipeline skipped (CallSession._process only counts frames): the transport, the session's bookkeeping
    and the event loop on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


from clients.wavfile import read_wav

ROOT = Path(__file__).resolve().parent.parent
CALL = ROOT / "clients" / "samples" / "call_stereo_8k.wav"
CHUNK_MS = 20

# Stage names in table order.
STAGES = (
    "decode + ingest",
    "VAD + windows",
    "prosody",
    "crosstalk + turn-taking",
    "scoring: resample + submit",
    "scoring: results + timeline",
    "rules",
    "events (buffer + gRPC serialisation)",
    "call start + summary",
)
UNATTRIBUTED = "event loop, tasks, futures (no stage)"
WITHOUT_PIPELINE = "--serve-without-pipeline"  # internal: the served process for the end-to-end floor
OTHER_THREADS = "inference worker thread"


class StageClock:
    """Exclusive wall time per stage on the event-loop thread: entering a stage pauses the one it is nested
    in. Also times the loop's waits in its selector (idle).

    A wrapped call costs two clock reads and a Python call; `calibrate` measures what that adds to the
    called stage and to the stage around it, and `corrected` takes it out again."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.child_calls: dict[str, int] = {}
        self.idle_s = 0.0
        self.self_overhead = 0.0
        self.parent_overhead = 0.0
        self._stack: list[str] = []
        self._mark = 0.0

    def wrap(self, stage: str, fn):
        clock = time.perf_counter
        seconds, calls, child_calls, stack = self.seconds, self.calls, self.child_calls, self._stack

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            now = clock()
            if stack:
                top = stack[-1]
                seconds[top] = seconds.get(top, 0.0) + now - self._mark
                child_calls[top] = child_calls.get(top, 0) + 1
            calls[stage] = calls.get(stage, 0) + 1
            stack.append(stage)
            self._mark = now
            try:
                return fn(*args, **kwargs)
            finally:
                now = clock()
                seconds[stage] = seconds.get(stage, 0.0) + now - self._mark
                stack.pop()
                self._mark = now
        return timed

    def wrap_idle(self, select):
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return select(*args, **kwargs)
            finally:
                self.idle_s += time.perf_counter() - began
        return timed

    def calibrate(self, n: int = 200_000) -> None:
        """Measure the clock's own cost per wrapped call (best of three), charged to the called stage and to its parent."""
        def noop() -> None:
            return None

        def loop(fn) -> None:
            for _ in range(n):
                fn()

        best_self = best_parent = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            loop(noop)
            bare = time.perf_counter() - began
            probe = StageClock()
            child = probe.wrap("child", noop)
            probe.wrap("parent", lambda: loop(child))()
            best_self = min(best_self, probe.seconds["child"] / n)
            best_parent = min(best_parent, (probe.seconds["parent"] - bare) / n)
        self.self_overhead, self.parent_overhead = max(0.0, best_self), max(0.0, best_parent)

    def corrected(self) -> dict[str, float]:
        """Stage seconds without the clock's own cost."""
        return {stage: max(0.0, value - self.self_overhead * self.calls.get(stage, 0)
                           - self.parent_overhead * self.child_calls.get(stage, 0))
                for stage, value in self.seconds.items()}

    @property
    def overhead_s(self) -> float:
        """What the clock itself cost in all."""
        return sum(self.calls.values()) * (self.self_overhead + self.parent_overhead)


def _hooks() -> list[tuple[Any, str, str]]:
    """(owner, attribute, stage) of every function the timed runs wrap (time in a hooked function nested in
    another counts for the inner one's stage); missing ones are skipped."""
    from service import call_analytics, call_rules, call_scoring
    from service import session as session_module
    from service.analytics import conversation, prosody
    from service.audio import channel, intake
    from service.rules import engine
    from service.transport import grpc_server

    S = session_module.CallSession
    return [
        (S, "push_audio", "decode + ingest"),
        (S, "_work", "decode + ingest"),
        (S, "_process", "decode + ingest"),
        (intake.CallIntake, "interleaved", "decode + ingest"),
        (intake.CallIntake, "take", "decode + ingest"),
        (channel.ChannelPipeline, "push", "VAD + windows"),
        (channel.ChannelPipeline, "push_block", "VAD + windows"),
        (channel.ChannelPipeline, "take_frames", "VAD + windows"),
        (channel.ChannelPipeline, "flush", "VAD + windows"),
        (S, "_count_segments", "VAD + windows"),
        (prosody.ProsodyTrack, "push", "prosody"),
        (prosody.ProsodyTrack, "figures", "prosody"),
        (prosody.ProsodyTrack, "totals", "prosody"),
        (S, "_analyse_frames", "crosstalk + turn-taking"),
        (S, "_analyse_held", "crosstalk + turn-taking"),
        (S, "_plan_analysis", "crosstalk + turn-taking"),
        (call_analytics.CallAnalytics, "analyse", "crosstalk + turn-taking"),
        (call_analytics, "speaking_frames", "crosstalk + turn-taking"),
        (conversation.ConversationTracker, "push", "crosstalk + turn-taking"),
        (conversation.ConversationTracker, "snapshot", "crosstalk + turn-taking"),
        (S, "_take_windows", "VAD + windows"),
        (call_scoring.CallScoring, "submit_ready", "scoring: resample + submit"),
        (call_scoring.CallScoring, "check", "scoring: resample + submit"),
        (call_scoring, "to_model_input", "scoring: resample + submit"),
        (call_scoring.CallScoring, "_handle_scores", "scoring: results + timeline"),
        (call_rules.CallRules, "on_ticks", "rules"),
        (engine.RuleEngine, "evaluate_window", "rules"),
        (engine.RuleEngine, "evaluate_tick", "rules"),
        (session_module.EventBuffer, "put", "events (buffer + gRPC serialisation)"),
        (grpc_server, "event_to_proto", "events (buffer + gRPC serialisation)"),
        (sys.modules[__name__], "_serialise", "events (buffer + gRPC serialisation)"),
        (S, "start", "call start + summary"),
        (S, "_summary", "call start + summary"),
    ]


class _Instrumented:
    """Wraps every hooked function in the clock for the duration of a `with` block."""

    def __init__(self, clock: StageClock) -> None:
        self._clock = clock
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> "_Instrumented":
        for owner, name, stage in _hooks():
            original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
            if original is None:
                continue
            self._saved.append((owner, name, original))
            setattr(owner, name, self._clock.wrap(stage, original))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def _serialise(event) -> bytes:
    """What the gRPC transport does with each event."""
    from service.transport import grpc_server

    return grpc_server.event_to_proto(event).SerializeToString()


def _chunks(path: Path) -> tuple[list[bytes], int, float]:
    wav = read_wav(str(path))
    step = wav.sample_rate * CHUNK_MS // 1000
    samples = wav.samples.astype("<i2")
    chunks = [samples[i:i + step].tobytes() for i in range(0, len(samples), step)]
    return chunks, wav.sample_rate, len(samples) / wav.sample_rate


async def _replay_calls(calls: int, chunks: list[bytes], rate: int, tag: str, clock: StageClock | None = None,
                        paced: bool = False) -> dict[str, int]:
    """`calls` concurrent replays of the chunks through CallSessions (`paced`: live calls, each chunk pushed when
    it is due in real time, starts spread over a second); returns event counts. With a clock, the loop's
    selector waits are timed as idle."""
    from service.batch import MemorySink
    from service.config import DEFAULT_RULES_PATH, AnalyticsConfig, IngestConfig, InferenceConfig, VadConfig, WindowConfig
    from service.domain import AudioFormat, CallConfig, Encoding, Role
    from service.inference.batcher import InferenceBatcher
    from service.inference.scoring import LocalScoringClient
    from service.inference.constant import ConstantEmotionModel
    from service.rules import RuleEngine, load_rules
    from service.session import CallSession, SessionContext
    if clock is not None:
        selector = asyncio.get_running_loop()._selector  # the benchmark's own loop: time its waits
        selector.select = clock.wrap_idle(selector.select)
    model = ConstantEmotionModel()
    inference = InferenceConfig(model="builtin:constant")
    batcher = InferenceBatcher(model, inference.effective_max_batch, inference.max_wait_ms, inference.queue_size)
    batcher.start()
    engine = RuleEngine(load_rules(DEFAULT_RULES_PATH))
    ctx = SessionContext(vad=VadConfig(), windows=WindowConfig(), ingest=IngestConfig(), scorer=LocalScoringClient(model, batcher),
                         rules=lambda: engine, publisher=MemorySink(), model_name=model.name, labels=model.labels,
                         deadline_s=inference.deadline_ms / 1000, analytics=AnalyticsConfig())
    counts: dict[str, int] = {}

    async def one(index: int) -> None:
        config = CallConfig(f"bench-{tag}-{index}", "agent", "team", "", AudioFormat(Encoding.PCM16LE, rate, (Role.CUSTOMER, Role.AGENT)),
                            score_roles=(Role.CUSTOMER,), realtime=paced)
        loop = asyncio.get_running_loop()
        if paced:
            await asyncio.sleep(index / calls)
        session = CallSession(config, ctx)
        session.start()
        began = loop.time()

        async def consume() -> None:
            async for event in session.events():
                _serialise(event)
                kind = type(event).__name__
                counts[kind] = counts.get(kind, 0) + 1

        consumer = asyncio.create_task(consume())
        for seq, data in enumerate(chunks, start=1):
            if paced:
                await asyncio.sleep(max(0.0, began + (seq - 1) * CHUNK_MS / 1000 - loop.time()))
            session.push_audio(seq, data)
            await session.flow_control()
            await asyncio.sleep(0)  # as a transport awaits the next message: the calls take turns
        await session.finish()
        await consumer

    try:
        await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        batcher.stop()
    return counts


def _run_once(calls: int, chunks: list[bytes], rate: int, instrument: bool, tag: str, paced: bool = False) -> dict[str, Any]:
    """One replay of `calls` calls: process and event-loop thread CPU seconds, its wall time, the stage clock, event counts."""
    clock = StageClock()
    if instrument:
        clock.calibrate()
    started, loop_started, wall_started = time.process_time(), time.thread_time(), time.perf_counter()
    if instrument:
        with _Instrumented(clock):
            counts = asyncio.run(_replay_calls(calls, chunks, rate, tag, clock, paced))
    else:
        counts = asyncio.run(_replay_calls(calls, chunks, rate, tag, paced=paced))
    return {"process_cpu": time.process_time() - started, "loop_cpu": time.thread_time() - loop_started,
            "wall": time.perf_counter() - wall_started, "clock": clock, "counts": counts}


def measure_in_process(calls: int, repeats: int, paced: bool = False) -> dict[str, Any]:
    chunks, rate, call_s = _chunks(CALL)
    call_seconds = calls * call_s
    _run_once(1, chunks, rate, False, "warm")  # imports, first-call set-up
    plain = [_run_once(calls, chunks, rate, False, f"p{r}", paced) for r in range(repeats)]
    timed = [_run_once(calls, chunks, rate, True, f"t{r}", paced) for r in range(repeats)]
    per_s = lambda seconds: seconds * 1000 / call_seconds  # noqa: E731 - CPU ms per call-second

    def stage_ms(run: dict) -> dict[str, float]:
        # Exclusive wall time per stage as a share of the loop thread's busy wall time (not waiting in its
        # selector; the clock's own cost taken out of both), applied to that thread's CPU time less the
        # clock's cost: waits for the GIL or for a core are spread over the stages as they occur.
        clock: StageClock = run["clock"]
        busy = run["wall"] - clock.idle_s - clock.overhead_s
        cpu = run["loop_cpu"] - clock.overhead_s
        walls = clock.corrected()
        out = {stage: per_s(cpu * walls.get(stage, 0.0) / busy) for stage in STAGES}
        out[UNATTRIBUTED] = per_s(cpu) - sum(out.values())
        out[OTHER_THREADS] = per_s(run["process_cpu"] - run["loop_cpu"])
        return out

    per_run = [stage_ms(run) for run in timed]
    stages = {stage: round(statistics.median(run[stage] for run in per_run), 3) for stage in per_run[0]}
    return {
        "calls": calls,
        "paced": paced,
        "call_s": round(call_s, 2),
        "repeats": repeats,
        "cpu_ms_per_call_s": round(statistics.median(per_s(run["process_cpu"]) for run in plain), 3),
        "runs_cpu_ms_per_call_s": [round(per_s(run["process_cpu"]), 3) for run in plain],
        "timed_cpu_ms_per_call_s": round(statistics.median(per_s(run["process_cpu"] - run["clock"].overhead_s) for run in timed), 3),
        "clock_overhead_ms_per_call_s": round(statistics.median(per_s(run["clock"].overhead_s) for run in timed), 3),
        "loop_busy_cpu_per_wall": round(statistics.median(
            (run["loop_cpu"] - run["clock"].overhead_s) / (run["wall"] - run["clock"].idle_s - run["clock"].overhead_s) for run in timed), 3),
        "stages_ms_per_call_s": stages,
        "events_per_call": {k: v // calls for k, v in plain[0]["counts"].items()},
    }


def _tree_cpu(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        except psutil.NoSuchProcess:
            pass
    return total


class _Server:
    """`python -m service serve` with the constant model (or, `without_pipeline`, the same through this module with
    CallSession._process reduced to counting frames) and a redis-server of its own."""

    def __init__(self, workdir: Path, without_pipeline: bool, speech_check: float = 0.0) -> None:
        import os
        import subprocess

        from clients.bench import _free_port

        self.redis_port = _free_port()
        self.redis = subprocess.Popen(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        entry = ["-m", "clients.bench_cpu", WITHOUT_PIPELINE] if without_pipeline else ["-m", "service"]
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "-1", "--metrics-port", "-1",
             "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0", "--model", "builtin:constant",
             *([] if without_pipeline else ["--workers", "1"])],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, CALLPULSE_LOG_LEVEL="WARNING", CALLPULSE_SPEECH_CHECK=str(speech_check)),
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            if line.startswith("{") and '"ready"' in line:
                self.target = f"grpc://127.0.0.1:{json.loads(line)['grpc_port']}"
                return
        self.close()
        raise SystemExit("the service did not become ready")

    def close(self) -> None:
        import subprocess

        for proc in (self.proc, self.redis):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _serve_without_pipeline(argv: list[str]) -> int:
    """One serving process (no pod: the patch must reach the process that runs the calls) with the per-call
    pipeline (VAD, windows, prosody, turn-taking, scoring) skipped: what the transport, the session's
    bookkeeping and the event loop cost on their own."""
    import argparse
    import json as _json

    import uvloop

    from service.app import App
    from service.config import load_config
    from service.session import CallSession

    def count_only(self, frames, arrival) -> None:
        self._audio_frames += len(frames)

    CallSession._process = count_only
    parser = argparse.ArgumentParser()
    for option in ("--host", "--grpc-port", "--ws-port", "--metrics-port", "--redis-url", "--model"):
        parser.add_argument(option)
    args = parser.parse_args(argv[1:])
    config = load_config({"host": args.host, "grpc_port": int(args.grpc_port), "ws_port": int(args.ws_port),
                          "metrics_port": int(args.metrics_port), "redis_url": args.redis_url, "model": args.model})
    app = App(config)

    def announce(ready: App) -> None:
        print(_json.dumps({"event": "ready", "grpc_port": ready.grpc_port}), flush=True)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(app.run_until_signalled(on_ready=announce))
    return 0


def measure_end_to_end(calls: int, seconds: float, repeats: int = 1, without_pipeline: bool = False,
                       chunk_ms: int = CHUNK_MS, speech_check: float = 0.0) -> dict[str, Any]:
    from clients.loadgen import run_load

    runs = []
    workdir = Path(tempfile.mkdtemp(prefix="callpulse-bench-cpu-"))
    try:
        for _ in range(repeats):
            server = _Server(workdir, without_pipeline, speech_check)
            try:
                time.sleep(1.0)
                idle_from, idle_at = _tree_cpu(server.proc.pid), time.monotonic()
                time.sleep(3.0)
                idle_rate = (_tree_cpu(server.proc.pid) - idle_from) / (time.monotonic() - idle_at)
                cpu_before, redis_before = _tree_cpu(server.proc.pid), _tree_cpu(server.redis.pid)
                began = time.monotonic()
                report = asyncio.run(run_load(server.target, calls, str(CALL), duration_s=seconds, ramp_s=2.0,
                                                  chunk_ms=chunk_ms))
                wall = time.monotonic() - began
                cpu = _tree_cpu(server.proc.pid) - cpu_before
                redis_cpu = _tree_cpu(server.redis.pid) - redis_before
            finally:
                server.close()
            call_seconds = calls * report["call_audio_s"]
            runs.append({
                "cpu_ms_per_call_s": round(cpu * 1000 / call_seconds, 3),
                "server_cores": round(cpu / wall, 3),
                "idle_cpu_ms_per_s": round(idle_rate * 1000, 3),
                "redis_cpu_ms_per_call_s": round(redis_cpu * 1000 / call_seconds, 3),
                "update_latency_ms": report["update_latency_ms"],
                "windows_scored": report["windows_scored"],
                "windows_dropped": report["windows_dropped"],
                "errors": report["errors"],
                "call_audio_s": report["call_audio_s"],
                "wall_s": round(wall, 2),
            })
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = sorted(runs, key=lambda r: r["cpu_ms_per_call_s"])[len(runs) // 2]
    return {"calls": calls, "repeats": repeats, "without_pipeline": without_pipeline, "chunk_ms": chunk_ms,
            "speech_check": speech_check,
            "runs_cpu_ms_per_call_s": [r["cpu_ms_per_call_s"] for r in runs], **median}


def print_table(result: dict) -> None:
    """The stage tables (Markdown) of one run's JSON."""
    m = result["machine"]
    print(f"\n`python -m clients.bench_cpu` on {m['date']} (commit {m.get('commit')}): {m['cpu']}, {m['cores']} cores, "
          f"Python {m['python']}")
    for key, title in (("in_process", "(a) in process, replays"), ("in_process_paced", "(a') in process, paced live calls")):
        a = result.get(key)
        if not a:
            continue
        how = "pushed in real time" if a.get("paced") else "replayed as fast as they go"
        print(f"\n{title}: {a['calls']} concurrent calls of the {a['call_s']:g} s stereo call, {how}; median of {a['repeats']}\n")
        print("| stage | CPU ms per call-second |")
        print("| --- | --- |")
        for stage, value in a["stages_ms_per_call_s"].items():
            print(f"| {stage} | {value:.2f} |")
        print(f"| **total, timed runs (less the clock's own cost)** | **{a['timed_cpu_ms_per_call_s']:.2f}** |")
        print(f"| **total, plain runs (process CPU)** | **{a['cpu_ms_per_call_s']:.2f}** |")
    b, floor = result.get("end_to_end"), result.get("end_to_end_without_pipeline")
    if b:
        print(f"\n(b) end to end: {b['calls']} live gRPC calls x {b['call_audio_s']:g} s in {b.get('chunk_ms', CHUNK_MS)} ms chunks, `python -m service serve --model "
              f"builtin:constant`, speech check {b.get('speech_check', 0) or 'off'}, median of {b['repeats']} ({', '.join(f'{x:.2f}' for x in b['runs_cpu_ms_per_call_s'])})\n")
        print("| measure | result |")
        print("| --- | --- |")
        print(f"| server CPU per call-second (process tree) | **{b['cpu_ms_per_call_s']:.2f} ms** |")
        if floor:
            print(f"| the same with the pipeline skipped (transport, session bookkeeping, event loop) | {floor['cpu_ms_per_call_s']:.2f} ms |")
        print(f"| server cores in use | {b['server_cores']} |")
        print(f"| server idle CPU | {b['idle_cpu_ms_per_s']:.2f} ms per s |")
        print(f"| redis-server CPU per call-second | {b['redis_cpu_ms_per_call_s']:.2f} ms |")
        print(f"| EmotionUpdate latency p50 / p99 | {b['update_latency_ms']['p50']} / {b['update_latency_ms']['p99']} ms |")
        print(f"| errors | {len(b['errors'])} |")


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WITHOUT_PIPELINE]:
        return _serve_without_pipeline(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m clients.bench_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="concurrent in-process replays of the whole call")
    parser.add_argument("--repeats", type=int, default=5, help="in-process replay runs of each kind (the median is reported)")
    parser.add_argument("--paced-calls", type=int, default=20, help="concurrent in-process live calls pushed in real time")
    parser.add_argument("--paced-repeats", type=int, default=2, help="paced runs of each kind (0: none)")
    parser.add_argument("--live-calls", type=int, default=20, help="live gRPC calls end to end")
    parser.add_argument("--live-s", type=float, default=30.0, help="seconds of audio per live call")
    parser.add_argument("--live-repeats", type=int, default=3, help="end-to-end runs (the median is reported)")
    parser.add_argument("--live-chunk-ms", type=int, default=CHUNK_MS, help="audio per gRPC message end to end (in process: always 20)")
    parser.add_argument("--speech-check", type=float, default=0.0,
                        help="end to end: the engine's speech check (CALLPULSE_SPEECH_CHECK; 0, the default here, leaves "
                             "it out so the model stage costs nothing; the service's default is 0.2)")
    parser.add_argument("--skip-live", action="store_true", help="only the in-process part")
    parser.add_argument("--skip-in-process", action="store_true", help="only the end-to-end part")
    parser.add_argument("--skip-floor", action="store_true", help="no end-to-end run with the pipeline skipped")
    parser.add_argument("--out", default=str(ROOT / ".bench" / "cpu.json"))
    parser.add_argument("--table", metavar="JSON", help="only print the tables of an earlier run")
    args = parser.parse_args(argv)
    if args.table:
        print_table(json.loads(Path(args.table).read_text()))
        return 0
    from clients.bench import machine

    result: dict[str, Any] = {"machine": {**machine(), "commit": _commit()}}
    if not args.skip_in_process:
        say(f"in process: {args.calls} replays x {args.repeats}")
        result["in_process"] = measure_in_process(args.calls, args.repeats)
        if args.paced_repeats:
            say(f"in process: {args.paced_calls} paced live calls x {args.paced_repeats}")
            result["in_process_paced"] = measure_in_process(args.paced_calls, args.paced_repeats, paced=True)
    if not args.skip_live:
        if shutil.which("redis-server") is None:
            raise SystemExit("the end-to-end part needs redis-server (or --skip-live)")
        say(f"end to end: {args.live_calls} live calls x {args.live_s:g} s x {args.live_repeats}")
        result["end_to_end"] = measure_end_to_end(args.live_calls, args.live_s, args.live_repeats, chunk_ms=args.live_chunk_ms,
                                                  speech_check=args.speech_check)
        if not args.skip_floor:
            say("end to end with the pipeline skipped")
            result["end_to_end_without_pipeline"] = measure_end_to_end(args.live_calls, args.live_s, 1, without_pipeline=True,
                                                                            chunk_ms=args.live_chunk_ms)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten to {args.out}")
    return 0


def say(text: str) -> None:
    print(f"[bench_cpu] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
