"""Load generator: N concurrent live gRPC calls over C connections and P processes, paced in real time; latency, loss and CPU figures.

    python -m clients.loadgen --target grpc://HOST:PORT --calls N --wav FILE [--duration S] [--speed 1.0]
        [--ramp S] [--chunk-ms 20] [--channels C] [--processes P] [--server-pid PID] [--metrics-url URL] [--json OUT]

Each call streams the WAV (looped to --duration; stereo customer,agent, customer scored) as a live
call in 20 ms chunks (--chunk-ms), starting at its own random point of the recording (seeded by the call's
index), so that the calls' speech is not synchronised - as in a real contact center, and unlike N
copies of one recording started together. A call sends its audio only once the server has answered
SessionStarted.

Calls are spread over C gRPC channels, each its own TCP connection (call i on channel i mod C), and
the channels over P processes (channel j in process j mod P; spawned, each with its own asyncio
loop). A server that spreads work by connection (SO_REUSEPORT workers, an L4 balancer) sees C
connections, not one. Every process connects its channels first; then all calls start from one
common time, spread over --ramp seconds.

Measured on the client: EmotionUpdate latency (send time of the chunk that completed the window,
`completed_ms` -> update received), alert latency (likewise for the alert's fired_ms), real-time lag
(how late chunks were sent against their schedule), achieved concurrency (calls between
SessionStarted and their end at the same time); from the calls' summaries: windows scored, merged
and dropped; the load generator's own CPU (all its processes, while the calls run) per call-second
(one second of audio of one call). With --server-pid: the CPU of that process and all its
descendants (workers that start or exit during the run included) per call-second. With
--metrics-url: the CPU and resident memory of the one process that serves /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import queue
import resource
import sys
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
import psutil

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from clients.bridge import CHUNK_MS, connection_options
from clients.wavfile import read_wav

ROLES = {"customer": pb.ROLE_CUSTOMER, "agent": pb.ROLE_AGENT}
CALLS_PER_CHANNEL = 25
MIN_CHANNELS = 8
CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


@dataclass
class CallStats:
    """What one call measured (monotonic times: comparable across the processes of one machine)."""

    index: int = 0
    update_latencies: list[float] = field(default_factory=list)
    alert_latencies: list[float] = field(default_factory=list)
    max_lag_s: float = 0.0
    windows_scored: int = 0
    windows_merged: int = 0
    windows_dropped: int = 0
    chunks_sent: int = 0
    error: str | None = None
    started_at: float | None = None
    """When SessionStarted arrived."""
    ended_at: float | None = None


@dataclass(frozen=True)
class Share:
    """One process's part of a run: its calls, each with the channel it goes over."""

    target: str
    wav: str
    duration_s: float | None
    speed: float
    ramp_s: float
    total_calls: int
    calls: tuple[tuple[int, int], ...]
    """(call index, channel index) pairs."""
    chunk_ms: int = CHUNK_MS
    """Milliseconds of audio per AudioChunk message (a bridge's packet size: 20 as RTP and Twilio send)."""


def default_channels(calls: int, processes: int = 1) -> int:
    """One channel per 25 calls, at least 8 (and at least one per process), never more than calls."""
    return max(processes, min(calls, max(MIN_CHANNELS, math.ceil(calls / CALLS_PER_CHANNEL))))


def plan_shares(calls: int, channels: int, processes: int) -> list[list[tuple[int, int]]]:
    """(call, channel) pairs per process: call i on channel i mod C, channel j in process j mod P."""
    if not 1 <= processes <= channels <= calls:
        raise ValueError(f"need 1 <= processes ({processes}) <= channels ({channels}) <= calls ({calls})")
    shares: list[list[tuple[int, int]]] = [[] for _ in range(processes)]
    for i in range(calls):
        channel = i % channels
        shares[channel % processes].append((i, channel))
    return shares


def _chunks(path: str, duration_s: float | None, chunk_ms: int = CHUNK_MS) -> tuple[list[bytes], int, list[str], int]:
    """The recording in `chunk_ms` chunks, looped to cover `duration_s` plus one more pass (room for the start offsets)."""
    wav = read_wav(path)
    roles = ["customer"] if wav.channels == 1 else ["customer", "agent"]
    samples = wav.samples
    n = wav.sample_rate * chunk_ms // 1000
    per_call = math.ceil((duration_s or wav.duration_s) * 1000 / chunk_ms)
    loop = math.ceil(len(samples) / n)
    reps = math.ceil((per_call + loop) * n / len(samples))
    samples = np.tile(samples, (reps, 1))
    chunks = [samples[i : i + n].astype("<i2").tobytes() for i in range(0, (per_call + loop) * n, n)]
    return chunks, wav.sample_rate, roles, per_call


def _offset(index: int, loop: int) -> int:
    return int(np.random.default_rng(index).integers(0, max(1, loop)))


async def _call(stub, index: int, chunks: list[bytes], rate: int, roles: list[str], speed: float, start_at: float,
                stats: CallStats, chunk_ms: int = CHUNK_MS) -> None:
    """One live call of `chunks` (already cut to this call's offset and length)."""
    sent_at: list[float] = [0.0] * (len(chunks) + 1)
    config = pb.CallConfig(
        call_id=f"load-{index}-{int(start_at * 1000)}", agent_id=f"load-agent-{index}", team="load", tenant="load",
        audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=rate, channels=len(roles),
                             channel_roles=[ROLES[r] for r in roles]),
        score_roles=[pb.ROLE_CUSTOMER], realtime=True,
    )

    accepted = asyncio.Event()

    async def requests():
        yield pb.CallRequest(config=config)
        # Audio only once the call is accepted: grpcio's asyncio client can report INTERNAL instead of the
        # server's refusal when it is still writing as the server ends the call (grpc/grpc#36066).
        await accepted.wait()
        began = time.monotonic()
        for seq, data in enumerate(chunks, start=1):
            due = began + seq * chunk_ms / 1000 / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                stats.max_lag_s = max(stats.max_lag_s, -delay)
            sent_at[seq] = time.monotonic()
            stats.chunks_sent = seq
            yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=data))
        yield pb.CallRequest(end=pb.EndOfCall(reason="end_of_call"))

    def latency(offset_ms: int) -> float | None:
        seq = min(len(chunks), max(1, math.ceil(offset_ms / chunk_ms)))
        return time.monotonic() - sent_at[seq] if sent_at[seq] else None

    # The stream opens at the call's start, not before: a server gives an open stream a few seconds to send its
    # CallConfig (CALLPULSE_HANDSHAKE_TIMEOUT_S), and a ramp longer than that would fail the late calls.
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    try:
        async for event in stub.StreamCall(requests()):
            kind = event.WhichOneof("event")
            if kind == "started":
                accepted.set()
                stats.started_at = time.monotonic()
            elif kind == "emotion":
                value = latency(event.emotion.completed_ms or event.emotion.window_end_ms)
                if value is not None:
                    stats.update_latencies.append(value)
            elif kind == "alert":
                value = latency(event.alert.fired_ms)
                if value is not None:
                    stats.alert_latencies.append(value)
            elif kind == "summary":
                for speaker in event.summary.speakers:
                    stats.windows_scored += speaker.windows_scored
                    stats.windows_merged += speaker.windows_merged
                    stats.windows_dropped += speaker.windows_dropped
    except grpc.aio.AioRpcError as exc:
        stats.error = f"{exc.code().name}: {exc.details()}"
    finally:
        stats.ended_at = time.monotonic()


class _Runner:
    """One process's calls: its channels are opened and connected first, then the calls run from a common start."""

    def __init__(self, share: Share) -> None:
        self.share = share
        self.channels: dict[int, grpc.aio.Channel] = {}

    async def connect(self) -> None:
        self.chunks, self.rate, self.roles, self.per_call = _chunks(self.share.wav, self.share.duration_s, self.share.chunk_ms)
        address = self.share.target.removeprefix("grpc://")
        for channel in sorted({c for _, c in self.share.calls}):
            self.channels[channel] = grpc.aio.insecure_channel(address, options=connection_options(channel))
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels.values())), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass  # the calls report the server's absence themselves

    async def run(self, began: float) -> dict[str, Any]:
        """Run the calls (call i starts at began + ramp * i / calls); their stats and this process's CPU seconds."""
        share = self.share
        loop = len(self.chunks) - self.per_call
        stubs = {c: pb_grpc.AgentAssistStub(ch) for c, ch in self.channels.items()}
        stats = [CallStats(index=i) for i, _ in share.calls]
        offsets = [_offset(i, loop) for i, _ in share.calls]
        before = _own_cpu_s()
        await asyncio.gather(*(
            _call(stubs[channel], i, self.chunks[offset : offset + self.per_call], self.rate, self.roles, share.speed,
                  began + share.ramp_s * i / share.total_calls, s, share.chunk_ms)
            for (i, channel), offset, s in zip(share.calls, offsets, stats)))
        return {"pid": os.getpid(), "cpu_s": _own_cpu_s() - before, "stats": [asdict(s) for s in stats],
                "per_call_audio_s": self.per_call * share.chunk_ms / 1000}

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_main(share: Share, messages, go, start_at) -> None:
    """Entry point of a spawned load process: connect, say ready, wait for the start, run, send the results."""

    async def main() -> None:
        runner = _Runner(share)
        try:
            await runner.connect()
            messages.put(("ready", os.getpid(), None))
            await asyncio.to_thread(go.wait)
            messages.put(("done", os.getpid(), await runner.run(start_at.value)))
        finally:
            await runner.close()

    try:
        asyncio.run(main())
    except BaseException:
        messages.put(("failed", os.getpid(), traceback.format_exc()))


class ProcessTreeCPU:
    """CPU seconds (user + system) of a process and all its descendants, for measuring a server that is a pod of processes.

    A sample adds, over the processes of the tree alive at that moment, each one's own CPU and what
    its exited children that it waited for used (cutime/cstime): a worker that exits between two
    samples still counts once its parent has reaped it. Processes that leave the tree unreaped
    (re-parented to init) are not seen.
    """

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def sample(self) -> tuple[float, int] | None:
        """(CPU seconds of the tree so far, processes in it now); None once the process itself has exited."""
        total, count = 0.0, 0
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        for proc in tree:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue  # reaped since the listing: its CPU is in its parent's children_* from now on
            total += times.user + times.system + times.children_user + times.children_system
            count += 1
        return total, count


# A pod's /metrics has the CPU and memory of all its processes; a single process's, its own.
_SERVER_FIGURES = {"cpu_s": ("callpulse_pod_cpu_seconds_total", "process_cpu_seconds_total"),
                   "rss_bytes": ("callpulse_pod_resident_memory_bytes", "process_resident_memory_bytes")}


def _server_sample(metrics_url: str | None) -> dict[str, float] | None:
    """The server's CPU seconds and resident memory from its /metrics (None without one, or when it has neither)."""
    if not metrics_url:
        return None
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    out = {}
    for figure, names in _SERVER_FIGURES.items():
        found = next((values[n] for n in names if n in values), None)
        if found is None:
            return None
        out[figure] = float(found)
    out["at"] = time.monotonic()
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _max_concurrency(stats: list[CallStats]) -> int:
    edges = sorted([(s.started_at, 1) for s in stats if s.started_at is not None]
                   + [(s.ended_at, -1) for s in stats if s.started_at is not None and s.ended_at is not None])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


async def _run_in_processes(shares: list[Share], before_start) -> tuple[list[dict[str, Any]], float, float]:
    """Run each share in a spawned process, calling before_start() once all are connected; (their results, the
    common start time, the parent's CPU seconds from then on)."""
    ctx = multiprocessing.get_context("spawn")
    messages, go, start_at = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_process_main, args=(share, messages, go, start_at), daemon=True) for share in shares]
    for proc in procs:
        proc.start()
    try:
        await _collect(messages, procs, "ready", START_TIMEOUT_S)
        before_start()
        before = _own_cpu_s()
        start_at.value = time.monotonic()
        go.set()
        results = await _collect(messages, procs, "done", None)
        return results, start_at.value, _own_cpu_s() - before
    finally:
        go.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


async def _collect(messages, procs, kind: str, timeout_s: float | None) -> list[Any]:
    """One `kind` message from each process (the order they come in); raises if one fails or dies first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out: list[Any] = []
    while len(out) < len(procs):
        try:
            got, pid, body = await asyncio.to_thread(messages.get, True, 1.0)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"load process {dead[0].pid} exited with {dead[0].exitcode}")
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(f"load processes not {kind} after {timeout_s:g} s")
            continue
        if got == "failed":
            raise RuntimeError(f"load process {pid} failed:\n{body}")
        out.append(body)
    return out


async def run_load(target: str, calls: int, wav: str, duration_s: float | None = None, speed: float = 1.0,
                   ramp_s: float = 2.0, metrics_url: str | None = None, *, channels: int | None = None,
                   processes: int = 1, server_pid: int | None = None, chunk_ms: int = CHUNK_MS) -> dict[str, Any]:
    """Run the load and return the report (also what --json writes).

    `channels` defaults to default_channels(calls, processes); with `processes` 1 the calls run on the
    caller's event loop, otherwise in that many spawned processes. `server_pid` adds the CPU of that
    process tree per call-second. `chunk_ms` is the audio per message.
    """
    if not 10 <= chunk_ms <= 1000 or chunk_ms % 10:
        raise ValueError(f"chunk_ms must be a multiple of 10 from 10 to 1000, not {chunk_ms}")
    channels = channels or default_channels(calls, processes)
    shares = [Share(target, wav, duration_s, speed, ramp_s, calls, tuple(pairs), chunk_ms)
              for pairs in plan_shares(calls, channels, processes)]
    tree = ProcessTreeCPU(server_pid) if server_pid else None
    samples: dict[str, Any] = {}

    def before_start() -> None:
        # once every connection is open: connecting and the processes' start-up are not the load
        samples["tree"] = tree.sample() if tree else None
        samples["server"] = _server_sample(metrics_url)

    if processes == 1:
        runner = _Runner(shares[0])
        try:
            await runner.connect()
            before_start()
            began = time.monotonic()
            results = [await runner.run(began)]
        finally:
            await runner.close()
        parent_cpu = 0.0  # the one process's CPU is already in its result
    else:
        results, began, parent_cpu = await _run_in_processes(shares, before_start)
    wall = time.monotonic() - began
    tree_before, server_before = samples["tree"], samples["server"]
    tree_after = tree.sample() if tree else None
    server_after = _server_sample(metrics_url)

    stats = sorted((CallStats(**s) for r in results for s in r["stats"]), key=lambda s: s.index)
    updates = [v for s in stats for v in s.update_latencies]
    alerts = [v for s in stats for v in s.alert_latencies]
    scored = sum(s.windows_scored for s in stats)
    dropped = sum(s.windows_dropped for s in stats)
    call_seconds = sum(s.chunks_sent for s in stats) * chunk_ms / 1000
    client_cpu = parent_cpu + sum(r["cpu_s"] for r in results)

    def per_call_s(cpu_s: float) -> float | None:
        return round(cpu_s * 1000 / call_seconds, 2) if call_seconds else None

    report: dict[str, Any] = {
        "calls": len(stats),
        "processes": processes,
        "channels": channels,
        "chunk_ms": chunk_ms,
        "achieved_concurrency": _max_concurrency(stats),
        "call_audio_s": results[0]["per_call_audio_s"],
        "call_seconds": round(call_seconds, 2),
        "wall_s": round(wall, 2),
        "errors": [s.error for s in stats if s.error],
        "updates": len(updates),
        "update_latency_ms": {q: round(_percentile(updates, p) * 1000, 1) if updates else None
                              for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "alerts": len(alerts),
        "alert_latency_ms": {q: round(_percentile(alerts, p) * 1000, 1) if alerts else None for q, p in (("p50", 50), ("p99", 99))},
        "realtime_lag_ms_max": round(max(s.max_lag_s for s in stats) * 1000, 1),
        "windows_scored": scored,
        "windows_merged": sum(s.windows_merged for s in stats),
        "windows_dropped": dropped,
        "drop_ratio": round(dropped / (scored + dropped), 4) if scored + dropped else 0.0,
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_ms_per_call_s": per_call_s(client_cpu),
        "client_processes": [{"pid": r["pid"], "calls": len(r["stats"]), "cpu_s": round(r["cpu_s"], 2)} for r in results],
    }
    if tree is not None and not (tree_before and tree_after):
        report["server_pid"] = server_pid
        report["server_exited"] = True
    elif tree_before and tree_after:
        cpu = tree_after[0] - tree_before[0]
        report["server_pid"] = server_pid
        report["server_tree_processes"] = {"start": tree_before[1], "end": tree_after[1]}
        report["server_tree_cpu_s"] = round(cpu, 2)
        report["server_tree_cores"] = round(cpu / wall, 2) if wall > 0 else None
        report["server_cpu_ms_per_call_s"] = per_call_s(cpu)
    if server_before and server_after:
        span = server_after["at"] - server_before["at"]
        report["server_cpu_cores"] = round((server_after["cpu_s"] - server_before["cpu_s"]) / span, 2)
        report["server_rss_mb"] = round(server_after["rss_bytes"] / 2**20, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="grpc://HOST:PORT")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--wav", required=True)
    parser.add_argument("--duration", type=float, help="seconds of audio per call (the WAV is looped)")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--ramp", type=float, default=2.0, help="spread call starts over this many seconds")
    parser.add_argument("--chunk-ms", type=int, default=CHUNK_MS, help="audio per AudioChunk message (a multiple of 10, 10-1000)")
    parser.add_argument("--channels", type=int, help=f"gRPC channels (TCP connections); default one per {CALLS_PER_CHANNEL} "
                                                     f"calls, at least {MIN_CHANNELS}, at most --calls")
    parser.add_argument("--processes", type=int, default=1, help="client processes (spawned; 1 = this process)")
    parser.add_argument("--server-pid", type=int, help="the server's PID: CPU of it and its descendants per call-second")
    parser.add_argument("--metrics-url", help="the server's /metrics, for its CPU and memory (that one process)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.speed <= 0 or not 10 <= args.chunk_ms <= 1000 or args.chunk_ms % 10:
        print("error: --calls must be >= 1, --speed > 0 and --chunk-ms a multiple of 10 from 10 to 1000", file=sys.stderr)
        return 2
    channels = args.channels or default_channels(args.calls, args.processes)
    if not 1 <= args.processes <= channels <= args.calls:
        print(f"error: need 1 <= --processes ({args.processes}) <= --channels ({channels}) <= --calls ({args.calls})",
              file=sys.stderr)
        return 2
    if args.server_pid is not None and not psutil.pid_exists(args.server_pid):
        print(f"error: no process {args.server_pid}", file=sys.stderr)
        return 2
    report = asyncio.run(run_load(args.target, args.calls, args.wav, args.duration, args.speed, args.ramp, args.metrics_url,
                                  channels=channels, processes=args.processes, server_pid=args.server_pid,
                                  chunk_ms=args.chunk_ms))
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0 if not report["errors"] else 3


if __name__ == "__main__":
    sys.exit(main())
