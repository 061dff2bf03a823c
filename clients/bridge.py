"""Telephony bridge emulator: streams a WAV as a live call and prints what comes back, one JSON line each.

    python -m clients.bridge --target grpc://127.0.0.1:50051 --wav call.wav --roles customer,agent \\
        --call-id c1 --agent-id a1 --team t1 [--encoding pcm16|mulaw|alaw] [--rate 8000|16000] [--speed 1.0]
    python -m clients.bridge --target ws://127.0.0.1:8080 ...                       (native WebSocket protocol)
    python -m clients.bridge --target ws://127.0.0.1:8080 --protocol twilio ...     (Twilio Media Streams sender)
    python -m clients.bridge --target ws://127.0.0.1:8080 --protocol audiohook ...  (Genesys AudioHook client)
    python -m clients.bridge ... --calls N [--channels C] [--stagger S]             (N calls at once: clients.bridge_pool)

Audio goes in 20 ms chunks paced at --speed x real time (0 = as fast as possible). The call is
declared live (realtime) when 0 < speed <= 1.5 and a replay otherwise, unless --realtime/--replay
says so. gRPC and native calls print the service's events ({"type": "started" | "emotion" | "alert"
| "warning" | "summary"}); AudioHook prints the server's protocol messages; Twilio gets nothing back.
Exit status: 0 when the call ended normally, 3 when the server ended it with an error (printed as
JSON on stderr), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import itertools
import json
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import grpc
import numpy as np
import soxr
from google.protobuf.json_format import MessageToDict
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from clients.wavfile import read_wav
from service.audio.codecs import encode
from service.domain import Encoding
from service.transport.signatures import decode_client_secret, sign_audiohook, twilio_signature

CHUNK_MS = 20
ENCODINGS = {"pcm16": (Encoding.PCM16LE, pb.AUDIO_ENCODING_PCM16LE, "pcm16le"),
             "mulaw": (Encoding.MULAW, pb.AUDIO_ENCODING_MULAW, "mulaw"),
             "alaw": (Encoding.ALAW, pb.AUDIO_ENCODING_ALAW, "alaw")}
ROLES = {"customer": pb.ROLE_CUSTOMER, "agent": pb.ROLE_AGENT}
PROTOCOLS = ("native", "twilio", "audiohook")
LIVE_SPEED_LIMIT = 1.5
MAX_RECEIVE_BYTES = 16 * 1024 * 1024


_OWN_CONNECTIONS = itertools.count(1_000_000)


def connection_options(index: int) -> list[tuple[str, Any]]:
    """gRPC channel options that give channel `index` a TCP connection of its own.

    grpcio shares one subchannel (one connection) between channels of a process that have the same
    target and options; a local subchannel pool and a distinct option keep them apart.
    """
    return [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES), ("grpc.use_local_subchannel_pool", 1),
            ("callpulse.connection", index)]


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
    realtime: bool | None = None
    protocol: str = "native"
    framing: str = "raw"
    api_key: str = "callpulse-dev-key"
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    token: str | None = None
    """Credential: gRPC/native `authorization: Bearer`, Twilio custom parameter `token`, AudioHook X-API-KEY."""
    ca_file: str | None = None
    """CA certificate that signs the server's (grpcs:// and wss:// targets); None: the system's."""
    twilio_auth_token: str | None = None
    """Sign the Twilio upgrade with X-Twilio-Signature as Twilio does (the target URL, this auth token)."""
    audiohook_client_secret: str | None = None
    """Sign the AudioHook upgrade as Genesys Cloud does (HTTP message signature with this base64 secret)."""
    transcript: tuple[dict[str, Any], ...] = ()
    """Final transcript segments ({speaker, start_ms, end_ms, text}) sent as the audio they cover has been
    sent, as a recognizer beside the call would (gRPC and native protocol)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def is_live(self) -> bool:
        if self.realtime is not None:
            return self.realtime
        return 0 < self.speed <= LIVE_SPEED_LIMIT


def load_transcript(path: str) -> tuple[dict[str, Any], ...]:
    """Transcript segments from a JSON file (a list, or {"segments": [...]}), ordered by their end."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    if isinstance(doc, dict) and "segments" in doc:
        doc = doc["segments"]
    if not isinstance(doc, list) or not all(isinstance(s, dict) and isinstance(s.get("end_ms"), int) for s in doc):
        raise ValueError(f"{path}: expected a list of {{speaker, start_ms, end_ms, text}} segments")
    return tuple(sorted(doc, key=lambda s: s["end_ms"]))


def _due_segments(plan: CallPlan, sent: int, seq: int) -> list[dict[str, Any]]:
    """The transcript segments (from index `sent` on) that end within the first `seq` chunks."""
    covered_ms = seq * CHUNK_MS
    due = []
    for segment in plan.transcript[sent:]:
        if segment["end_ms"] > covered_ms:
            break
        due.append(segment)
    return due


@dataclass
class CallResult:
    """What came back for one call."""

    events: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    close_code: int | None = None
    max_send_lag_s: float = 0.0
    """How late the most delayed chunk was sent compared with its schedule (the server slowing ingest)."""
    attempts: int = 1
    """Times the call was tried (clients.bridge_pool tries a refused call again)."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


@dataclass
class Audio:
    """The WAV converted for sending."""

    rate: int
    roles: tuple[str, ...]
    samples: np.ndarray  # int16 (frames, channels)

    @property
    def frames_per_chunk(self) -> int:
        return self.rate * CHUNK_MS // 1000

    def chunks(self) -> list[np.ndarray]:
        n = self.frames_per_chunk
        return [self.samples[i : i + n] for i in range(0, len(self.samples), n)]


def load_audio(path: str, plan: CallPlan, rate: int | None = None) -> Audio:
    """Read the WAV and resample it to the plan's (or the given) rate."""
    wav = read_wav(path)
    rate = rate or plan.rate or wav.sample_rate
    samples = wav.samples
    if rate != wav.sample_rate:
        resampled = soxr.resample(samples.astype(np.float32) / 32768.0, wav.sample_rate, rate, quality="HQ")
        samples = np.clip(np.round(resampled * 32768.0), -32768, 32767).astype(np.int16).reshape(-1, wav.channels)
    roles = plan.roles or (("customer",) if wav.channels == 1 else ("customer", "agent"))
    if len(roles) != wav.channels:
        raise ValueError(f"--roles names {len(roles)} role(s) but {path} has {wav.channels} channel(s)")
    return Audio(rate, roles, samples)


def _lower_enum(value: Any) -> Any:
    if value == "ROLE_UNSPECIFIED":
        return None  # a conversation alert about nobody in particular; the native protocol sends null
    if isinstance(value, str):
        for prefix in ("ROLE_", "SEVERITY_"):
            if value.startswith(prefix):
                return value[len(prefix):].lower()
    return value


def _normalise(value: Any, key: str = "") -> Any:
    # proto3 JSON writes int64 as strings and enums by name; the native protocol uses numbers and lowercase names
    if isinstance(value, dict):
        return {k: _normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, key) for v in value]
    if key.endswith("_ms") and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return _lower_enum(value)


OPTIONAL_EMOTION_FIELDS = ("loudness_over_baseline_db", "pitch_hz", "pitch_range_st", "speech_rate_spm")
GRPC_EVENT_TYPES = {"started": "started", "emotion": "emotion", "alert": "alert", "warning": "warning", "summary": "summary"}


def grpc_event_to_json(event: pb.CallEvent) -> dict[str, Any]:
    """A CallEvent in the native protocol's JSON shape: {"type": kind, ...fields}, documents parsed."""
    kind = event.WhichOneof("event")
    body = MessageToDict(getattr(event, kind), preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    body = _normalise(body)
    if "document_json" in body:
        body["document"] = json.loads(body.pop("document_json") or "null")
    if kind == "emotion":  # optional prosody fields are absent when unmeasured; the native protocol sends null
        for name in OPTIONAL_EMOTION_FIELDS:
            body.setdefault(name, None)
    return {"type": GRPC_EVENT_TYPES[kind], **body}


class _Pacer:
    def __init__(self, speed: float, stop: threading.Event, result: CallResult | None = None) -> None:
        self.speed = speed
        self.stop = stop
        self.result = result
        self.started = time.monotonic()

    def _delay(self, index: int) -> float:
        delay = self.started + index * CHUNK_MS / 1000 / self.speed - time.monotonic()
        if self.result is not None and -delay > self.result.max_send_lag_s:
            self.result.max_send_lag_s = -delay
        return delay

    def wait_sync(self, index: int) -> bool:
        """Sleep until chunk `index` is due; False if the call was hung up."""
        if self.speed > 0:
            delay = self._delay(index)
            if delay > 0 and self.stop.wait(delay):
                return False
        return not self.stop.is_set()

    async def wait(self, index: int) -> bool:
        if self.speed > 0:
            delay = self._delay(index)
            if delay > 0:
                await asyncio.sleep(delay)
        return not self.stop.is_set()


# -- gRPC ------------------------------------------------------------------------------------


def _grpc_requests(plan: CallPlan, audio: Audio, result: CallResult, stop: threading.Event):
    encoding, pb_encoding, _ = ENCODINGS[plan.encoding]
    config = pb.CallConfig(
        call_id=plan.call_id, agent_id=plan.agent_id, team=plan.team, tenant=plan.tenant,
        audio=pb.AudioFormat(encoding=pb_encoding, sample_rate_hz=audio.rate, channels=len(audio.roles),
                             channel_roles=[ROLES[r] for r in audio.roles]),
        score_roles=[ROLES[r] for r in plan.score_roles],
        realtime=plan.is_live,
    )
    yield pb.CallRequest(config=config)
    pacer = _Pacer(plan.speed, stop, result)
    sent = 0
    for seq, chunk in enumerate(audio.chunks(), start=1):
        if not pacer.wait_sync(seq):
            return
        yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=encode(encoding, chunk)))
        for segment in _due_segments(plan, sent, seq):
            sent += 1
            yield pb.CallRequest(transcript=pb.TranscriptSegment(
                speaker=ROLES.get(segment.get("speaker"), 0), start_ms=segment.get("start_ms", 0),
                end_ms=segment["end_ms"], text=segment.get("text", "")))
    yield pb.CallRequest(end=pb.EndOfCall(reason="end_of_call"))


def grpc_channel(address: str, plan: CallPlan, secure: bool = False, index: int | None = None) -> grpc.Channel:
    """A synchronous channel to HOST:PORT (TLS with the plan's CA when `secure`); with `index`, a TCP
    connection of its own (see connection_options)."""
    options = connection_options(index) if index is not None else None
    if secure:
        root = open(plan.ca_file, "rb").read() if plan.ca_file else None
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root), options=options)
    return grpc.insecure_channel(address, options=options)


def _run_grpc(address: str, plan: CallPlan, audio: Audio, on_event, hangup_after_s, secure: bool = False,
              channel: grpc.Channel | None = None) -> CallResult:
    """One call; on `channel` when given (left open), otherwise on a channel of its own."""
    if channel is None:
        # A call on a connection of its own lands on any worker of a pod (SO_REUSEPORT spreads connections).
        with grpc_channel(address, plan, secure, index=next(_OWN_CONNECTIONS)) as own:
            return _run_grpc(address, plan, audio, on_event, hangup_after_s, secure, own)
    # The synchronous API: grpcio's asyncio client can replace the server's status with INTERNAL
    # when the server ends a call while the client is still sending (grpc/grpc#36066).
    result = CallResult()
    stop = threading.Event()
    metadata = [("authorization", f"Bearer {plan.token}")] if plan.token else None
    responses = pb_grpc.AgentAssistStub(channel).StreamCall(_grpc_requests(plan, audio, result, stop), metadata=metadata)
    timer = None
    if hangup_after_s is not None:
        timer = threading.Timer(hangup_after_s, lambda: (stop.set(), responses.cancel()))
        timer.start()
    try:
        for event in responses:
            _record(result, grpc_event_to_json(event), on_event)
    except grpc.RpcError as exc:
        result.error = {"code": exc.code().name, "message": exc.details() or ""}
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
    return result


def _record(result: CallResult, doc: dict[str, Any], on_event) -> None:
    result.events.append(doc)
    if on_event is not None:
        on_event(doc)


# -- WebSocket protocols -------------------------------------------------------------------------


def _tls(url: str, plan: CallPlan) -> ssl.SSLContext | None:
    return plan.ssl_context() if url.startswith("wss://") else None


async def _run_native(url: str, plan: CallPlan, audio: Audio, on_event, hangup_after_s) -> CallResult:
    result = CallResult()
    encoding, _, wire_name = ENCODINGS[plan.encoding]
    start = {
        "type": "start", "call_id": plan.call_id, "agent_id": plan.agent_id, "team": plan.team, "tenant": plan.tenant,
        "audio": {"encoding": wire_name, "sample_rate_hz": audio.rate, "channels": len(audio.roles), "channel_roles": list(audio.roles)},
        "score_roles": list(plan.score_roles or ("customer",)), "realtime": plan.is_live, "framing": plan.framing,
    }
    async with connect(url, max_size=None, additional_headers=plan.headers, ssl=_tls(url, plan)) as ws:
        async def send() -> None:
            await ws.send(json.dumps(start))
            pacer = _Pacer(plan.speed, threading.Event(), result)
            sent = 0
            for seq, chunk in enumerate(audio.chunks(), start=1):
                await pacer.wait(seq)
                data = encode(encoding, chunk)
                await ws.send(seq.to_bytes(8, "big") + data if plan.framing == "seq64" else data)
                for segment in _due_segments(plan, sent, seq):
                    sent += 1
                    await ws.send(json.dumps({"type": "transcript", **segment}))
            await ws.send(json.dumps({"type": "stop"}))

        sender = asyncio.create_task(send())
        await _receive_json(ws, result, on_event, sender, hangup_after_s)
    return result


async def _receive_json(ws, result: CallResult, on_event, sender: asyncio.Task, hangup_after_s: float | None) -> None:
    deadline = None if hangup_after_s is None else time.monotonic() + hangup_after_s
    try:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(ws.recv(), timeout)
            except asyncio.TimeoutError:
                sender.cancel()
                result.error = {"code": "CANCELLED", "message": "hung up by the bridge"}
                ws.transport.abort()  # drop the connection like a crashed bridge, no close handshake
                return
            doc = json.loads(message)
            if doc.get("type") == "error":
                result.error = {"code": doc.get("code"), "message": doc.get("message")}
            _record(result, doc, on_event)
    except ConnectionClosed as exc:
        result.close_code = exc.rcvd.code if exc.rcvd else None
        if result.error is None and result.close_code not in (1000, None):
            result.error = {"code": f"CLOSE_{result.close_code}", "message": exc.rcvd.reason if exc.rcvd else ""}
        if result.error is not None:
            result.error["close_code"] = result.close_code
    finally:
        if not sender.done():
            sender.cancel()


async def _run_twilio(url: str, plan: CallPlan, audio: Audio, on_event, hangup_after_s) -> CallResult:
    """Send as Twilio Media Streams does: connected, start, media per track every 20 ms, mark, stop."""
    result = CallResult()
    tracks = ["inbound" if role == "customer" else "outbound" for role in audio.roles]
    stream_sid, call_sid, account_sid = "MZ" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex, "AC" + uuid.uuid4().hex
    custom = {"agent_id": plan.agent_id, "team": plan.team, "call_id": plan.call_id}
    if plan.tenant:
        custom["tenant"] = plan.tenant
    if plan.token:
        custom["token"] = plan.token  # Twilio cannot set headers on its WebSocket request
    if plan.score_roles:
        custom["score_roles"] = ",".join(plan.score_roles)
    if not plan.is_live:
        custom["realtime"] = "false"
    sequence = 0

    def message(event: str, **body) -> str:
        nonlocal sequence
        sequence += 1
        return json.dumps({"event": event, "sequenceNumber": str(sequence), **body, "streamSid": stream_sid})

    headers = {"X-Twilio-Signature": twilio_signature(plan.twilio_auth_token, url)} if plan.twilio_auth_token else {}
    async with connect(url, additional_headers=headers, max_size=None, ssl=_tls(url, plan)) as ws:
        async def send() -> None:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(message("start", start={
                "accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid, "tracks": tracks,
                "customParameters": custom, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }))
            pacer = _Pacer(plan.speed, threading.Event())
            for index, chunk in enumerate(audio.chunks()):
                await pacer.wait(index + 1)
                for channel, track in enumerate(tracks):
                    payload = base64.b64encode(encode(Encoding.MULAW, chunk[:, channel])).decode()
                    await ws.send(message("media", media={"track": track, "chunk": str(index + 1),
                                                          "timestamp": str(index * CHUNK_MS), "payload": payload}))
            await ws.send(message("mark", mark={"name": "end-of-audio"}))
            await ws.send(message("stop", stop={"accountSid": account_sid, "callSid": call_sid}))

        sender = asyncio.create_task(send())
        await _receive_json(ws, result, on_event, sender, hangup_after_s)
    return result


async def _run_audiohook(url: str, plan: CallPlan, audio: Audio, on_event, hangup_after_s) -> CallResult:
    """Act as the Genesys AudioHook client: open -> opened, PCMU audio, ping/pong, close -> closed."""
    result = CallResult()
    session_id = str(uuid.uuid4())
    headers = {
        "Audiohook-Organization-Id": plan.organization_id,
        "Audiohook-Correlation-Id": str(uuid.uuid4()),
        "Audiohook-Session-Id": session_id,
        "X-API-KEY": plan.token or plan.api_key,
    }
    if plan.audiohook_client_secret:
        target = urlsplit(url)
        default_port = 443 if target.scheme == "wss" else 80
        authority = target.hostname if target.port in (None, default_port) else f"{target.hostname}:{target.port}"  # as websockets sends Host
        now = int(time.time())
        headers.update(sign_audiohook(
            decode_client_secret(plan.audiohook_client_secret), target.path or "/", authority,
            {name.lower(): value for name, value in headers.items()},
            keyid=headers["X-API-KEY"], nonce=uuid.uuid4().hex, created=now, expires=now + 300,
        ))
    channels = ["external" if role == "customer" else "internal" for role in audio.roles]
    state = {"seq": 0, "serverseq": 0, "frames": 0}

    def message(kind: str, parameters: dict) -> str:
        state["seq"] += 1
        position = f"PT{state['frames'] / audio.rate:g}S"
        return json.dumps({"version": "2", "id": session_id, "type": kind, "seq": state["seq"],
                           "serverseq": state["serverseq"], "position": position, "parameters": parameters})

    custom = {"agent_id": plan.agent_id, "team": plan.team}
    if plan.score_roles:
        custom["score_roles"] = list(plan.score_roles)
    if not plan.is_live:
        custom["realtime"] = False
    opened = asyncio.Event()
    closed = asyncio.Event()
    async with connect(url, additional_headers=headers, max_size=None, ssl=_tls(url, plan)) as ws:
        async def send() -> None:
            media = [{"type": "audio", "format": "PCMU", "channels": channels, "rate": 8000}]
            if len(channels) == 2:
                media.append({"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000})
            await ws.send(message("open", {
                "organizationId": plan.organization_id, "conversationId": plan.call_id,
                "participant": {"id": str(uuid.uuid4()), "ani": "", "aniName": "", "dnis": ""},
                "media": media, "language": "en-US", "customConfig": custom,
            }))
            await asyncio.wait_for(opened.wait(), 30)
            pacer = _Pacer(plan.speed, threading.Event())
            for index, chunk in enumerate(audio.chunks()):
                await pacer.wait(index + 1)
                await ws.send(encode(Encoding.MULAW, chunk))
                state["frames"] += len(chunk)
                if index % 250 == 249:  # every 5 s of audio
                    await ws.send(message("ping", {}))
            await ws.send(message("close", {"reason": "end"}))
            await asyncio.wait_for(closed.wait(), 30)
            await ws.close()

        def on_message(doc: dict[str, Any]) -> None:
            state["serverseq"] = doc.get("seq", state["serverseq"])
            kind = doc.get("type")
            if kind == "opened":
                opened.set()
            elif kind == "closed":
                closed.set()
            elif kind == "disconnect":
                info = doc.get("parameters", {})
                result.error = {"code": f"DISCONNECT_{str(info.get('reason', '')).upper()}", "message": info.get("info", "")}
                asyncio.get_running_loop().create_task(ws.send(message("close", {"reason": "disconnect"})))
            if on_event is not None:
                on_event(doc)

        sender = asyncio.create_task(send())
        await _receive_json(ws, result, lambda d: on_message(d), sender, hangup_after_s)
        if sender.done() and not sender.cancelled() and sender.exception() and result.error is None:
            result.error = {"code": "CLIENT", "message": str(sender.exception())}
    return result


def run_call(
    target: str,
    wav_path: str,
    plan: CallPlan,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    hangup_after_s: float | None = None,
    channel: grpc.Channel | None = None,
) -> CallResult:
    """Stream one WAV as a call to grpc://HOST:PORT or ws://HOST:PORT[/path] and collect what comes back.

    `hangup_after_s` drops the connection like a bridge that disconnects mid-call; `channel`, for a gRPC
    target, is an open channel (connection) to use and leave open instead of one of the call's own.
    """
    if target.startswith(("grpc://", "grpcs://")):
        address = target.split("://", 1)[1]
        return _run_grpc(address, plan, load_audio(wav_path, plan), on_event, hangup_after_s, secure=target.startswith("grpcs://"),
                         channel=channel)
    if not target.startswith(("ws://", "wss://")):
        raise ValueError(f"unsupported target {target!r}; expected grpc[s]://HOST:PORT or ws[s]://HOST:PORT")
    base = target.rstrip("/")
    if plan.protocol == "twilio":
        url = base if base.endswith("/twilio") else base + "/twilio"
        return asyncio.run(_run_twilio(url, plan, load_audio(wav_path, plan, rate=8000), None, hangup_after_s))
    if plan.protocol == "audiohook":
        url = base if base.endswith("/audiohook") else base + "/audiohook"
        return asyncio.run(_run_audiohook(url, plan, load_audio(wav_path, plan, rate=8000), on_event, hangup_after_s))
    return asyncio.run(_run_native(base, plan, load_audio(wav_path, plan), on_event, hangup_after_s))


async def stream_call(target: str, wav_path: str, plan: CallPlan, **kwargs) -> CallResult:
    """run_call on a worker thread, for asyncio callers."""
    return await asyncio.to_thread(run_call, target, wav_path, plan, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.bridge", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="grpc://HOST:PORT or ws://HOST:PORT")
    p.add_argument("--protocol", choices=PROTOCOLS, default="native", help="for ws:// targets")
    p.add_argument("--wav", required=True)
    p.add_argument("--encoding", choices=sorted(ENCODINGS), default="pcm16", help="gRPC and native (Twilio and AudioHook send mu-law)")
    p.add_argument("--rate", type=int, choices=[8000, 16000], help="send at this rate (default: the WAV's; Twilio and AudioHook: 8000)")
    p.add_argument("--roles", default="", help="role of each channel, e.g. customer,agent")
    p.add_argument("--score", default="", help="roles to score (default: customer)")
    p.add_argument("--call-id", required=True)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--team", required=True)
    p.add_argument("--tenant", default="")
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    live = p.add_mutually_exclusive_group()
    live.add_argument("--realtime", dest="realtime", action="store_true", default=None, help="declare a live call")
    live.add_argument("--replay", dest="realtime", action="store_false", help="declare a replay (read as fast as the model allows)")
    p.add_argument("--framing", choices=["raw", "seq64"], default="raw", help="native protocol binary framing")
    p.add_argument("--api-key", default="callpulse-dev-key", help="AudioHook X-API-KEY (without --token)")
    p.add_argument("--token", help="credential: authorization Bearer (gRPC, native), Twilio custom parameter, AudioHook X-API-KEY")
    p.add_argument("--ca-file", help="CA certificate of the server (grpcs://, wss://)")
    p.add_argument("--twilio-auth-token", help="sign the /twilio upgrade with X-Twilio-Signature (as Twilio does)")
    p.add_argument("--audiohook-client-secret", help="sign the /audiohook upgrade (base64 secret, as Genesys Cloud does)")
    p.add_argument("--hangup-after", type=float, help="drop the connection after this many seconds (fault testing)")
    p.add_argument("--transcript", help="JSON transcript segments to send beside the audio (gRPC and native protocol)")
    p.add_argument("--calls", type=int, default=1, help="stream this many calls at once (ids CALL-ID-1...; see clients.bridge_pool)")
    p.add_argument("--channels", type=int, help="with --calls: gRPC connections to spread them over (default one per 10 calls)")
    p.add_argument("--stagger", type=float, default=0.0, help="with --calls: seconds between call starts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731
    plan = CallPlan(
        call_id=args.call_id, agent_id=args.agent_id, team=args.team, tenant=args.tenant,
        encoding=args.encoding, rate=args.rate, roles=split(args.roles), score_roles=split(args.score), speed=args.speed,
        realtime=args.realtime, protocol=args.protocol, framing=args.framing, api_key=args.api_key,
        token=args.token, ca_file=args.ca_file, twilio_auth_token=args.twilio_auth_token,
        audiohook_client_secret=args.audiohook_client_secret,
    )
    if args.transcript:
        if args.protocol != "native" and args.target.startswith(("ws://", "wss://")):
            print(f"error: --transcript is for gRPC and the native protocol; {args.protocol} carries no transcript", file=sys.stderr)
            return 2
        try:
            plan = dataclasses.replace(plan, transcript=load_transcript(args.transcript))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    bad_roles = [r for r in plan.roles + plan.score_roles if r not in ROLES]
    if bad_roles or args.speed < 0:
        print(f"error: {'unknown role ' + bad_roles[0] if bad_roles else '--speed must be >= 0'}", file=sys.stderr)
        return 2
    if args.calls != 1 or args.channels is not None:
        return _main_pool(args, plan)
    try:
        result = run_call(args.target, args.wav, plan, on_event=lambda e: print(json.dumps(e), flush=True),
                          hangup_after_s=args.hangup_after)
    except InvalidStatus as exc:  # refused before the upgrade (credentials, signature)
        body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
        print(f"error: the server refused the connection: HTTP {exc.response.status_code} {body}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.error is not None:
        print(json.dumps({"error": result.error}), file=sys.stderr)
        return 3
    return 0


def _main_pool(args: argparse.Namespace, plan: CallPlan) -> int:
    """--calls N: N calls at once through clients.bridge_pool; every event as a JSON line with its "call", then a tally."""
    from clients.bridge_pool import default_channels, run_calls

    if args.calls < 1 or (args.channels is not None and args.channels < 1) or args.stagger < 0:
        print("error: --calls and --channels must be >= 1 and --stagger >= 0", file=sys.stderr)
        return 2
    plans = [dataclasses.replace(plan, call_id=f"{plan.call_id}-{i}", agent_id=f"{plan.agent_id}-{i}")
             for i in range(1, args.calls + 1)]
    lock = threading.Lock()

    def show(call: CallPlan, event: dict[str, Any]) -> None:
        with lock:
            print(json.dumps({"call": call.call_id, **event}), flush=True)

    try:
        results = run_calls(args.target, args.wav, plans, args.channels, on_event=show, stagger_s=args.stagger,
                            hangup_after_s=args.hangup_after)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [(p.call_id, r.error) for p, r in zip(plans, results) if r.error is not None]
    for call_id, error in failed:
        print(json.dumps({"call": call_id, "error": error}), file=sys.stderr)
    grpc_target = args.target.startswith(("grpc://", "grpcs://"))
    print(json.dumps({"type": "pool", "calls": len(plans), "connections": (args.channels or default_channels(len(plans))) if grpc_target
                      else len(plans), "failed": len(failed), "retried": sum(r.attempts - 1 for r in results)}), flush=True)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
