"""Telephony bridge emulator: streams a WAV as 20 ms chunks over gRPC and prints every event as a JSON line.

    python -m clients.bridge --target grpc://127.0.0.1:50051 --wav call.wav --roles customer,agent \
        --call-id c1 --agent-id a1 --team t1 [--encoding pcm16|mulaw|alaw] [--rate 8000|16000] [--speed 1.0]

--speed 1.0 paces chunks at real time, 2.0 at twice real time, 0 sends as fast as possible.
Exit status: 0 when the call ended with a summary, 3 when the server ended the call with an error
(printed as JSON on stderr), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np
import soxr
from google.protobuf.json_format import MessageToDict

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from clients.wavfile import read_wav
from service.audio.codecs import encode
from service.domain import Encoding

CHUNK_MS = 20
ENCODINGS = {"pcm16": (Encoding.PCM16LE, pb.AUDIO_ENCODING_PCM16LE),
             "mulaw": (Encoding.MULAW, pb.AUDIO_ENCODING_MULAW),
             "alaw": (Encoding.ALAW, pb.AUDIO_ENCODING_ALAW)}
ROLES = {"customer": pb.ROLE_CUSTOMER, "agent": pb.ROLE_AGENT}


@dataclass
class CallPlan:
    """Everything needed to stream one call."""

    call_id: str
    agent_id: str
    team: str
    tenant: str = ""
    encoding: str = "pcm16"
    rate: int | None = None
    roles: tuple[str, ...] = ()
    score_roles: tuple[str, ...] = ()
    speed: float = 1.0


@dataclass
class CallResult:
    """What came back for one call."""

    events: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    chunks_sent: int = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


def _int64_as_numbers(value: Any) -> Any:
    # The proto3 JSON mapping writes int64 as strings; the *_ms offsets read better as numbers.
    if isinstance(value, dict):
        return {k: int(v) if k.endswith("_ms") and isinstance(v, str) and v.lstrip("-").isdigit() else _int64_as_numbers(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_int64_as_numbers(v) for v in value]
    return value


def event_to_json(event: pb.CallEvent) -> dict[str, Any]:
    """A CallEvent as a JSON-ready dict: {"event": kind, ...fields}; embedded documents are parsed."""
    kind = event.WhichOneof("event")
    body = MessageToDict(getattr(event, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    body = _int64_as_numbers(body)
    if "document_json" in body:
        body["document"] = json.loads(body.pop("document_json") or "null")
    return {"event": kind, **body}


def prepare_audio(path: str, plan: CallPlan) -> tuple[pb.CallConfig, list[bytes]]:
    """Read the WAV, convert it to the plan's rate and encoding, and cut it into 20 ms chunks."""
    wav = read_wav(path)
    rate = plan.rate or wav.sample_rate
    samples = wav.samples
    if rate != wav.sample_rate:
        resampled = soxr.resample(samples.astype(np.float32) / 32768.0, wav.sample_rate, rate, quality="HQ")
        samples = np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16).reshape(-1, wav.channels)
    roles = plan.roles or (("customer",) if wav.channels == 1 else ("customer", "agent"))
    if len(roles) != wav.channels:
        raise ValueError(f"--roles names {len(roles)} role(s) but {path} has {wav.channels} channel(s)")
    encoding, pb_encoding = ENCODINGS[plan.encoding]
    frames_per_chunk = rate * CHUNK_MS // 1000
    chunks = [encode(encoding, samples[i : i + frames_per_chunk]) for i in range(0, len(samples), frames_per_chunk)]
    config = pb.CallConfig(
        call_id=plan.call_id,
        agent_id=plan.agent_id,
        team=plan.team,
        tenant=plan.tenant,
        audio=pb.AudioFormat(encoding=pb_encoding, sample_rate_hz=rate, channels=wav.channels,
                             channel_roles=[ROLES[r] for r in roles]),
        score_roles=[ROLES[r] for r in plan.score_roles],
    )
    return config, chunks


def _requests(config: pb.CallConfig, chunks: list[bytes], speed: float, result: CallResult, stop: threading.Event):
    yield pb.CallRequest(config=config)
    started = time.monotonic()
    for seq, chunk in enumerate(chunks, start=1):
        if speed > 0:
            delay = started + seq * CHUNK_MS / 1000 / speed - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
        if stop.is_set():
            return
        yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=chunk))
        result.chunks_sent += 1
    yield pb.CallRequest(end=pb.EndOfCall(reason="end_of_call"))


def run_call(
    target: str,
    wav_path: str,
    plan: CallPlan,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    hangup_after_s: float | None = None,
) -> CallResult:
    """Stream one WAV as a call to a gRPC target (grpc://host:port or host:port) and collect its events.

    Uses the synchronous gRPC API: grpcio's asyncio client can replace the server's status with
    INTERNAL when the server ends a call while the client is still sending (grpc/grpc#36066).
    `hangup_after_s` drops the call like a bridge that disconnects mid-call.
    """
    address = target.removeprefix("grpc://")
    config, chunks = prepare_audio(wav_path, plan)
    result = CallResult()
    stop = threading.Event()
    with grpc.insecure_channel(address) as channel:
        responses = pb_grpc.AgentAssistStub(channel).StreamCall(_requests(config, chunks, plan.speed, result, stop))
        timer = None
        if hangup_after_s is not None:
            timer = threading.Timer(hangup_after_s, lambda: (stop.set(), responses.cancel()))
            timer.start()
        try:
            for event in responses:
                doc = event_to_json(event)
                result.events.append(doc)
                if on_event is not None:
                    on_event(doc)
        except grpc.RpcError as exc:
            result.error = {"code": exc.code().name, "message": exc.details() or ""}
        finally:
            stop.set()
            if timer is not None:
                timer.cancel()
    return result


async def stream_call(target: str, wav_path: str, plan: CallPlan, **kwargs) -> CallResult:
    """run_call on a worker thread, for asyncio callers."""
    return await asyncio.to_thread(run_call, target, wav_path, plan, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.bridge", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="grpc://HOST:PORT")
    p.add_argument("--wav", required=True)
    p.add_argument("--encoding", choices=sorted(ENCODINGS), default="pcm16")
    p.add_argument("--rate", type=int, choices=[8000, 16000], help="send at this rate (default: the WAV's)")
    p.add_argument("--roles", default="", help="role of each channel, e.g. customer,agent")
    p.add_argument("--score", default="", help="roles to score (default: customer)")
    p.add_argument("--call-id", required=True)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--team", required=True)
    p.add_argument("--tenant", default="")
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    p.add_argument("--hangup-after", type=float, help="drop the connection after this many seconds (fault testing)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.target.startswith("grpc://") and "://" in args.target:
        print(f"error: unsupported target {args.target!r}; expected grpc://HOST:PORT", file=sys.stderr)
        return 2
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    plan = CallPlan(
        call_id=args.call_id, agent_id=args.agent_id, team=args.team, tenant=args.tenant,
        encoding=args.encoding, rate=args.rate, roles=split(args.roles), score_roles=split(args.score), speed=args.speed,
    )
    bad_roles = [r for r in plan.roles + plan.score_roles if r not in ROLES]
    if bad_roles or args.speed < 0:
        print(f"error: {'unknown role ' + bad_roles[0] if bad_roles else '--speed must be >= 0'}", file=sys.stderr)
        return 2
    try:
        result = run_call(args.target, args.wav, plan, on_event=lambda e: print(json.dumps(e), flush=True),
                          hangup_after_s=args.hangup_after)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.error is not None:
        print(json.dumps({"error": result.error}), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
