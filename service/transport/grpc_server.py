"""gRPC transport: agentassist.v1.AgentAssist/StreamCall and grpc.health.v1, translating wire <-> domain only."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from service import metrics
from service.auth import credential_from
from service.calls import CallRegistry
from service.config import ServerConfig
from service.domain import (
    Alert,
    AudioFormat,
    CallConfig,
    CallEvent,
    CallSummary,
    EmotionUpdate,
    Encoding,
    Role,
    SessionStarted,
    TranscriptSegment,
    Warning,
)
from service.errors import CallLimitExceeded, CallPulseError, ConfigError, HandshakeTimeout, InvalidArgument
from service.redact import redact
from service.session import CallSession
from service.transport.status import answer

log = logging.getLogger(__name__)

SERVICE_NAME = "agentassist.v1.AgentAssist"
AFTER_END_S = 1.0
"""After a call's summary the RPC stays open up to this long for the bridge to half-close its request stream (what it
still sends is read and dropped, `callpulse_chunks_dropped_total{reason="after_end"}`): an RPC that ends before the
bridge half-closed can reach grpcio's asyncio client as INTERNAL "Internal error from Core" instead of OK
(grpc/grpc#36066)."""

_ENCODINGS = {
    pb.AUDIO_ENCODING_PCM16LE: Encoding.PCM16LE,
    pb.AUDIO_ENCODING_MULAW: Encoding.MULAW,
    pb.AUDIO_ENCODING_ALAW: Encoding.ALAW,
}
_ROLES = {pb.ROLE_CUSTOMER: Role.CUSTOMER, pb.ROLE_AGENT: Role.AGENT}
_ROLE_TO_PB = {v: k for k, v in _ROLES.items()}


def _role(value: int, where: str) -> Role:
    if value not in _ROLES:
        raise InvalidArgument(f"{where}: unknown role {value}; expected ROLE_CUSTOMER or ROLE_AGENT")
    return _ROLES[value]


def call_config_from_proto(msg: pb.CallConfig) -> CallConfig:
    """Translate a CallConfig message, raising InvalidArgument that names the offending field."""
    if not msg.HasField("audio"):
        raise InvalidArgument("audio: the audio format is required")
    audio = msg.audio
    if audio.encoding not in _ENCODINGS:
        name = pb.AudioEncoding.Name(audio.encoding) if audio.encoding in pb.AudioEncoding.values() else str(audio.encoding)
        raise InvalidArgument(f"audio.encoding: unsupported encoding {name}; expected PCM16LE, MULAW or ALAW")
    if audio.channels not in (1, 2):
        raise InvalidArgument(f"audio.channels: {audio.channels} channels are not supported; expected 1 or 2")
    roles = tuple(_role(r, f"audio.channel_roles[{i}]") for i, r in enumerate(audio.channel_roles))
    if not roles:
        roles = (Role.CUSTOMER,) if audio.channels == 1 else (Role.CUSTOMER, Role.AGENT)
    if len(roles) != audio.channels:
        raise InvalidArgument(f"audio.channel_roles: {len(roles)} roles given for {audio.channels} channel(s)")
    score_roles = tuple(_role(r, f"score_roles[{i}]") for i, r in enumerate(msg.score_roles)) or (Role.CUSTOMER,)
    return CallConfig(
        call_id=msg.call_id,
        agent_id=msg.agent_id,
        team=msg.team,
        tenant=msg.tenant,
        audio=AudioFormat(_ENCODINGS[audio.encoding], audio.sample_rate_hz, roles),
        score_roles=tuple(dict.fromkeys(score_roles)),
        realtime=msg.realtime if msg.HasField("realtime") else True,
    )


def event_to_proto(event: CallEvent) -> pb.CallEvent:
    """Translate a domain event into its CallEvent message."""
    if isinstance(event, EmotionUpdate):
        return pb.CallEvent(
            emotion=pb.EmotionUpdate(
                speaker=_ROLE_TO_PB[event.speaker],
                window_start_ms=event.window_start_ms,
                window_end_ms=event.window_end_ms,
                scores=[pb.EmotionScore(label=l, score=s) for l, s in zip(event.labels, event.scores)],
                top_label=event.top_label,
                top_score=event.top_score,
                segment_final=event.segment_final,
                degraded=event.degraded,
                latency_ms=event.latency_ms,
                loudness_dbfs=event.loudness_dbfs,
                completed_ms=event.completed_ms,
                loudness_over_baseline_db=event.loudness_over_baseline_db,
                pitch_hz=event.pitch_hz,
                pitch_range_st=event.pitch_range_st,
                speech_rate_spm=event.speech_rate_spm,
                speech_rate_cpm=event.speech_rate_cpm,
            )
        )
    if isinstance(event, Alert):
        return pb.CallEvent(
            alert=pb.Alert(
                alert_id=event.alert_id,
                rule_id=event.rule_id,
                severity=int(event.severity),
                speaker=_ROLE_TO_PB[event.speaker] if event.speaker else pb.ROLE_UNSPECIFIED,
                start_ms=event.start_ms,
                fired_ms=event.fired_ms,
                message=event.message,
                degraded=event.degraded,
                latency_ms=event.latency_ms,
                document_json=json.dumps(event.document),
            )
        )
    if isinstance(event, SessionStarted):
        return pb.CallEvent(
            started=pb.SessionStarted(
                call_id=event.call_id,
                model=event.model,
                labels=list(event.labels),
                scored_roles=[_ROLE_TO_PB[r] for r in event.scored_roles],
                window_ms=event.window_ms,
                hop_ms=event.hop_ms,
            )
        )
    if isinstance(event, Warning):
        return pb.CallEvent(warning=pb.Warning(code=event.code, message=event.message))
    if isinstance(event, CallSummary):
        return pb.CallEvent(
            summary=pb.CallSummary(
                call_id=event.call_id,
                duration_ms=event.duration_ms,
                speakers=[
                    pb.SpeakerSummary(
                        speaker=_ROLE_TO_PB[s.speaker],
                        speech_ms=s.speech_ms,
                        segments=s.segments,
                        windows_scored=s.windows_scored,
                        windows_dropped=s.windows_dropped,
                        windows_merged=s.windows_merged,
                        top_labels=[pb.LabelCount(label=l, count=c) for l, c in s.top_labels],
                    )
                    for s in event.speakers
                ],
                alert_ids=list(event.alert_ids),
                reason=event.reason,
                document_json=json.dumps(event.document),
            )
        )
    raise TypeError(f"no wire form for {type(event).__name__}")


class AgentAssistServicer(pb_grpc.AgentAssistServicer):
    """Streams one call per RPC through a CallSession."""

    def __init__(self, calls: CallRegistry, handshake_timeout_s: float) -> None:
        self._calls = calls
        self._handshake_timeout_s = handshake_timeout_s

    async def StreamCall(self, request_iterator, context) -> AsyncIterator[pb.CallEvent]:
        session: CallSession | None = None
        pump: asyncio.Task | None = None
        outcome = "disconnected"
        handshaking = False
        try:
            self._calls.begin_handshake()
            handshaking = True
            metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
            credential = credential_from(metadata.get("authorization"), metadata.get("x-api-key"))
            # The first message is read before the credential is judged, so that a refusal never ends the
            # call while the bridge's CallConfig is still being written: grpcio's asyncio client reports
            # such an interrupted write as INTERNAL instead of the status (grpc/grpc#36066).
            first = await self._first_request(request_iterator)
            self._calls.check_credential(credential)
            kind = first.WhichOneof("payload")
            if kind != "config":
                raise InvalidArgument(f"the first message must be a CallConfig, got {kind or 'an empty CallRequest'}")
            session = self._calls.open(call_config_from_proto(first.config), credential)
            handshaking = False
            self._calls.end_handshake()
            session.start()
            pump = asyncio.create_task(self._pump(request_iterator, session), name="grpc-call-pump")
            async for event in session.events():
                yield event_to_proto(event)
            outcome = "completed"
            ended, session = session, None
            self._calls.release(ended, outcome)  # the call is over: its slot is free while the stream closes
            await self._await_half_close(pump, request_iterator)
        except CallPulseError as exc:
            outcome = exc.kind
            if handshaking:
                handshaking = False
                self._calls.end_handshake(exc)
            metrics.error(exc.kind)
            log.info("call refused or ended with %s: %s", exc.kind, redact(exc))
            if pump is not None and not pump.done():
                pump.cancel()  # before the abort, which fails a read in progress
            await context.abort(grpc.StatusCode[answer(exc.kind).grpc], str(exc))
        finally:
            if handshaking:
                self._calls.end_handshake(CallPulseError("the connection ended before its call started"))
            if pump is not None and not pump.done():
                pump.cancel()
            if session is not None:
                if not session.closed:
                    session.abort(outcome)
                self._calls.release(session, outcome)

    async def _first_request(self, request_iterator) -> pb.CallRequest:
        try:
            return await asyncio.wait_for(request_iterator.__anext__(), self._handshake_timeout_s)
        except StopAsyncIteration:
            raise InvalidArgument("the stream ended before a CallConfig was sent") from None
        except asyncio.TimeoutError:
            raise HandshakeTimeout(f"no CallConfig within {self._handshake_timeout_s:g} s of the call's start "
                                   "(handshake timeout)") from None

    @staticmethod
    async def _await_half_close(pump: asyncio.Task, request_iterator) -> None:
        """After the summary: once the pump has stopped reading (at EndOfCall), read and drop what the bridge still
        sends until it half-closes, for at most AFTER_END_S."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AFTER_END_S
        done, _ = await asyncio.wait({pump}, timeout=AFTER_END_S)
        if not done:
            return
        try:
            while (remaining := deadline - loop.time()) > 0:
                await asyncio.wait_for(request_iterator.__anext__(), remaining)
                metrics.chunk_dropped("after_end")
        except (StopAsyncIteration, asyncio.TimeoutError):
            pass

    async def _pump(self, request_iterator, session: CallSession) -> None:
        """Feed requests into the session; bad input fails the session's event stream. (The session's own
        watchdog ends a call whose bridge goes quiet.)"""
        try:
            monotonic = time.monotonic
            async for request in request_iterator:
                kind = request.WhichOneof("payload")
                if kind == "audio":
                    audio = request.audio
                    session.push_audio(audio.seq, audio.data, monotonic())
                    await session.flow_control()
                elif kind == "transcript":
                    _push_transcript(session, request.transcript)
                elif kind == "end":
                    await session.finish(request.end.reason or "end_of_call")
                    return
                elif kind == "config":
                    raise InvalidArgument("CallConfig was sent twice; it must be the first message only")
                else:
                    raise InvalidArgument("empty CallRequest: set config, audio, transcript or end")
            await session.finish("stream_closed")  # half-close without EndOfCall still ends the call cleanly
        except CallLimitExceeded as exc:
            await session.end_for_limit(exc)
        except CallPulseError as exc:
            session.fail(exc)
        except grpc.aio.AbortError:
            pass  # the RPC was ended from the handler's side
        except Exception:  # noqa: BLE001 - a bug in one call must end that call, not hang it
            log.exception("unexpected error while processing a call's audio")
            session.fail(CallPulseError("internal error while processing the call's audio"))


def _push_transcript(session: CallSession, msg: pb.TranscriptSegment) -> None:
    """A bad transcript segment is refused with a warning; it never ends the call."""
    try:
        segment = TranscriptSegment(_role(msg.speaker, "transcript.speaker"), msg.start_ms, msg.end_ms, msg.text)
    except InvalidArgument as exc:
        session.transcript_rejected(str(exc))
        return
    session.push_transcript(segment)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path!r}: {exc.strerror}") from None


class GrpcServer:
    """The grpc.aio server with AgentAssist and the standard health service."""

    def __init__(self, config: ServerConfig, calls: CallRegistry) -> None:
        self._config = config
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 1 if config.reuse_port else 0),
            ]
        )
        pb_grpc.add_AgentAssistServicer_to_server(AgentAssistServicer(calls, config.handshake_timeout_s), self._server)
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port = 0

    async def start(self) -> int:
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self._config.host}:{self._config.grpc_port}"
        if self._config.tls_cert_file:
            credentials = grpc.ssl_server_credentials([(_read(self._config.tls_key_file), _read(self._config.tls_cert_file))])
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind gRPC to {self._config.host}:{self._config.grpc_port}")
        await self._server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
