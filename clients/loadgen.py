"""Load generator: N concurrent live calls over gRPC, paced in real time, with latency and loss figures.

    python -m clients.loadgen --target grpc://HOST:PORT --calls N --wav FILE [--duration S] [--speed 1.0]
        [--ramp S] [--metrics-url http://HOST:PORT/metrics] [--json OUT]

Each call streams the WAV (looped to --duration; stereo customer,agent, customer scored) as a live
call in 20 ms chunks, starting at its own random point of the recording (seeded by the call's
index), so that the calls' speech is not synchronised - as in a real contact center, and unlike N
copies of one recording started together. Measured on the client: EmotionUpdate latency (send time of the chunk that
completed the window, `completed_ms` -> update received), alert latency (likewise for the alert's fired_ms),
real-time lag (how late chunks were sent against their schedule), achieved concurrency; from the
calls' summaries: windows scored and dropped; from the server's /metrics (when given): its CPU use
and resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from clients.bridge import CHUNK_MS
from clients.wavfile import read_wav

ROLES = {"customer": pb.ROLE_CUSTOMER, "agent": pb.ROLE_AGENT}


@dataclass
class CallStats:
    update_latencies: list[float] = field(default_factory=list)
    alert_latencies: list[float] = field(default_factory=list)
    max_lag_s: float = 0.0
    windows_scored: int = 0
    windows_merged: int = 0
    windows_dropped: int = 0
    error: str | None = None
    started_at: float | None = None


def _chunks(path: str, duration_s: float | None) -> tuple[list[bytes], int, list[str], int]:
    """The recording looped to cover `duration_s` plus one more pass (room for the start offsets)."""
    wav = read_wav(path)
    roles = ["customer"] if wav.channels == 1 else ["customer", "agent"]
    samples = wav.samples
    n = wav.sample_rate * CHUNK_MS // 1000
    per_call = math.ceil((duration_s or wav.duration_s) * 1000 / CHUNK_MS)
    loop = math.ceil(len(samples) / n)
    reps = math.ceil((per_call + loop) * n / len(samples))
    samples = np.tile(samples, (reps, 1))
    chunks = [samples[i : i + n].astype("<i2").tobytes() for i in range(0, (per_call + loop) * n, n)]
    return chunks, wav.sample_rate, roles, per_call


async def _call(stub, index: int, chunks: list[bytes], rate: int, roles: list[str], speed: float, start_at: float,
                stats: CallStats, active: dict) -> None:
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
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        yield pb.CallRequest(config=config)
        # Audio only once the call is accepted: grpcio's asyncio client can report INTERNAL instead of the
        # server's refusal when it is still writing as the server ends the call (grpc/grpc#36066).
        await accepted.wait()
        began = time.monotonic()
        for seq, data in enumerate(chunks, start=1):
            due = began + seq * CHUNK_MS / 1000 / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                stats.max_lag_s = max(stats.max_lag_s, -delay)
            sent_at[seq] = time.monotonic()
            yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=data))
        yield pb.CallRequest(end=pb.EndOfCall(reason="end_of_call"))

    def latency(offset_ms: int) -> float | None:
        seq = min(len(chunks), max(1, math.ceil(offset_ms / CHUNK_MS)))
        return time.monotonic() - sent_at[seq] if sent_at[seq] else None

    try:
        async for event in stub.StreamCall(requests()):
            kind = event.WhichOneof("event")
            if kind == "started":
                accepted.set()
                stats.started_at = time.monotonic()
                active["now"] += 1
                active["max"] = max(active["max"], active["now"])
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
        if stats.started_at is not None:
            active["now"] -= 1


def _server_sample(metrics_url: str | None) -> dict[str, float] | None:
    if not metrics_url:
        return None
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
            if line.startswith(name + " "):
                out[name] = float(line.split()[1])
    out["at"] = time.monotonic()
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def run_load(target: str, calls: int, wav: str, duration_s: float | None = None, speed: float = 1.0,
                   ramp_s: float = 2.0, metrics_url: str | None = None) -> dict[str, Any]:
    """Run the load and return the report (also what --json writes)."""
    chunks, rate, roles, per_call = _chunks(wav, duration_s)
    loop = len(chunks) - per_call
    offsets = [int(np.random.default_rng(i).integers(0, max(1, loop))) for i in range(calls)]
    stats = [CallStats() for _ in range(calls)]
    active = {"now": 0, "max": 0}
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    server_before = _server_sample(metrics_url)
    began = time.monotonic()
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target.removeprefix("grpc://"), options=options) as channel:
        stub = pb_grpc.AgentAssistStub(channel)
        starts = [began + ramp_s * i / max(1, calls) for i in range(calls)]
        await asyncio.gather(*(_call(stub, i, chunks[offsets[i] : offsets[i] + per_call], rate, roles, speed, starts[i], stats[i], active)
                               for i in range(calls)))
    wall = time.monotonic() - began
    server_after = _server_sample(metrics_url)
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    updates = [v for s in stats for v in s.update_latencies]
    alerts = [v for s in stats for v in s.alert_latencies]
    scored = sum(s.windows_scored for s in stats)
    dropped = sum(s.windows_dropped for s in stats)
    report: dict[str, Any] = {
        "calls": calls,
        "achieved_concurrency": active["max"],
        "call_audio_s": per_call * CHUNK_MS / 1000,
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
        "client_cpu_s": round((usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime), 2),
    }
    if server_before and server_after:
        span = server_after["at"] - server_before["at"]
        report["server_cpu_cores"] = round((server_after["process_cpu_seconds_total"] - server_before["process_cpu_seconds_total"]) / span, 2)
        report["server_rss_mb"] = round(server_after["process_resident_memory_bytes"] / 2**20, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="grpc://HOST:PORT")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--wav", required=True)
    parser.add_argument("--duration", type=float, help="seconds of audio per call (the WAV is looped)")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--ramp", type=float, default=2.0, help="spread call starts over this many seconds")
    parser.add_argument("--metrics-url", help="the server's /metrics, for its CPU and memory")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.speed <= 0:
        print("error: --calls must be >= 1 and --speed > 0", file=sys.stderr)
        return 2
    report = asyncio.run(run_load(args.target, args.calls, args.wav, args.duration, args.speed, args.ramp, args.metrics_url))
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0 if not report["errors"] else 3


if __name__ == "__main__":
    sys.exit(main())
