"""WebSocket transport: the native protocol, Twilio Media Streams (/twilio), Genesys AudioHook (/audiohook),
plus /healthz and /readyz. Each adapter only translates messages to CallSession calls and back.

Close codes (documented in README.md, "WebSocket"):
  1000 call ended normally        1003 binary frame where only text is defined (Twilio)
  1008 invalid input / protocol violation      1009 message larger than max_message_bytes
  1011 internal error             1013 server full or not ready (try again later)
  4408 idle timeout or maximum call duration   4409 call_id already streaming
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import ssl
import time
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from service import metrics
from service.auth import credential_from
from service.calls import CallRegistry
from service.config import IngestConfig, ServerConfig
from service.domain import AudioFormat, CallConfig, CallSummary, Encoding, Role
from service.errors import CallLimitExceeded, CallPulseError, ConfigError, InvalidArgument, PermissionDenied, Unauthenticated
from service.session import CallSession
from service.transport.json_events import error_to_json, event_to_json, start_from_json, transcript_from_json
from service.transport.signatures import NonceCache, SignatureError, decode_client_secret, verify_audiohook, verify_twilio

log = logging.getLogger(__name__)
# The websockets library traces every frame at DEBUG, and frames carry transcripts and caller details:
# our connections log through a logger that never goes below INFO, whatever the service's level.
_CONNECTION_LOG = logging.getLogger("callpulse.websockets")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_TIMEOUT = 4408
CLOSE_DUPLICATE = 4409

CLOSE_BY_KIND = {
    "invalid_argument": CLOSE_POLICY,
    "already_exists": CLOSE_DUPLICATE,
    "resource_exhausted": CLOSE_TRY_AGAIN,
    "unavailable": CLOSE_TRY_AGAIN,
    "deadline_exceeded": CLOSE_TIMEOUT,
    "unauthenticated": CLOSE_POLICY,
    "permission_denied": CLOSE_POLICY,
}
# error event codes mirror the gRPC status names
CODE_BY_KIND = {
    "invalid_argument": "INVALID_ARGUMENT",
    "already_exists": "ALREADY_EXISTS",
    "resource_exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
    "deadline_exceeded": "DEADLINE_EXCEEDED",
    "unauthenticated": "UNAUTHENTICATED",
    "permission_denied": "PERMISSION_DENIED",
}
NATIVE_PATHS = ("/", "/calls")
TWILIO_PATH = "/twilio"
AUDIOHOOK_PATH = "/audiohook"


def _close_reason(text: str) -> str:
    # a close reason is at most 123 bytes of UTF-8
    encoded = text.encode()[:123]
    return encoded.decode(errors="ignore")


class _Call:
    """What every adapter shares: the registry, limits, and the session's lifetime."""

    def __init__(self, ws: ServerConnection, calls: CallRegistry, ingest: IngestConfig) -> None:
        self.ws = ws
        self.calls = calls
        self.ingest = ingest
        self.session: CallSession | None = None
        self.outcome = "disconnected"

    async def receive(self) -> str | bytes:
        try:
            return await asyncio.wait_for(self.ws.recv(), self.ingest.idle_timeout_s)
        except asyncio.TimeoutError:
            raise CallLimitExceeded(f"no message for {self.ingest.idle_timeout_s:g} s (idle timeout)", reason="idle_timeout") from None

    @property
    def credential(self) -> str | None:
        """The caller's credential from the upgrade request's headers."""
        headers = self.ws.request.headers if self.ws.request is not None else {}
        return credential_from(headers.get("Authorization"), headers.get("X-API-Key"))

    def open_session(self, config: CallConfig, credential: str | None = None) -> CallSession:
        self.session = self.calls.open(config, credential if credential is not None else self.credential)
        self.session.start()
        return self.session

    def release(self) -> None:
        if self.session is not None:
            if not self.session.closed:
                self.session.abort(self.outcome)
            self.calls.release(self.session, self.outcome)

    @staticmethod
    def note_error(exc: CallPulseError) -> None:
        metrics.error(exc.kind)
        log.info("websocket call ended with %s: %s", exc.kind, exc)


class NativeCall(_Call):
    """Native protocol: text `start` -> binary audio frames -> text `stop`; JSON events back.

    Binary framing, chosen in `start`: "raw" (default; each frame is one chunk, seq = arrival order)
    or "seq64" (an 8-byte big-endian seq, then the chunk).
    """

    async def run(self) -> None:
        pump: asyncio.Task | None = None
        try:
            first = await self.receive()
            if isinstance(first, bytes):
                raise InvalidArgument("the first message must be a JSON start message, got a binary frame")
            config, framing = start_from_json(_parse_json(first))
            session = self.open_session(config)
            pump = asyncio.create_task(self._pump(session, framing), name="ws-native-pump")
            async for event in session.events():
                await self.ws.send(json.dumps(event_to_json(event)))
                if isinstance(event, CallSummary):
                    self.outcome = "completed"
            if self.outcome == "completed":
                await self.ws.close(CLOSE_NORMAL, "call ended")
        except CallPulseError as exc:
            self.outcome = exc.kind
            self.note_error(exc)
            await self._send_error(exc)
        except ConnectionClosed:
            pass
        finally:
            if pump is not None and not pump.done():
                pump.cancel()
            self.release()

    async def _pump(self, session: CallSession, framing: str) -> None:
        counter = 0
        try:
            while True:
                message = await self.receive()
                if isinstance(message, bytes):
                    if framing == "seq64":
                        if len(message) < 8:
                            raise InvalidArgument(f"a seq64 frame needs an 8-byte seq header, got {len(message)} bytes")
                        seq, data = int.from_bytes(message[:8], "big"), message[8:]
                    else:
                        counter += 1
                        seq, data = counter, message
                    session.push_audio(seq, data, time.monotonic())
                    await session.flow_control()
                    continue
                doc = _parse_json(message)
                kind = doc.get("type") if isinstance(doc, dict) else None
                if kind == "stop":
                    await session.finish(str(doc.get("reason") or "end_of_call"))
                    return
                if kind == "transcript":
                    try:
                        segment = transcript_from_json(doc)
                    except InvalidArgument as exc:  # a bad transcript is refused with a warning, the call goes on
                        session.transcript_rejected(str(exc))
                    else:
                        session.push_transcript(segment)
                    continue
                if kind == "start":
                    raise InvalidArgument("start was sent twice; it must be the first message only")
                raise InvalidArgument(f"unknown message type {kind!r}; expected transcript or stop (audio goes in binary frames)")
        except CallLimitExceeded as exc:
            await session.end_for_limit(exc)
        except CallPulseError as exc:
            session.fail(exc)
        except ConnectionClosed:
            session.abort("disconnected")
        except Exception:  # noqa: BLE001 - a bug in one call must end that call, not hang it
            log.exception("unexpected error while processing a websocket call's audio")
            session.fail(CallPulseError("internal error while processing the call's audio"))

    async def _send_error(self, exc: CallPulseError) -> None:
        try:
            await self.ws.send(json.dumps(error_to_json(CODE_BY_KIND.get(exc.kind, "INTERNAL"), str(exc))))
            await self.ws.close(CLOSE_BY_KIND.get(exc.kind, CLOSE_INTERNAL), _close_reason(str(exc)))
        except ConnectionClosed:
            pass


class TwilioCall(_Call):
    """Twilio Media Streams: connected / start / media / mark / dtmf / stop (Twilio sends, we listen).

    Message formats: https://www.twilio.com/docs/voice/media-streams/websocket-messages
    TwiML <Stream> (tracks, <Parameter> custom parameters): https://www.twilio.com/docs/voice/twiml/stream
    Audio is base64 mu-law, 8 kHz, mono per track; `inbound` (the caller) and `outbound` tracks
    become two channels. customParameters carry agent_id and team (required), and optionally
    call_id (default: callSid), tenant (default: accountSid), score_roles ("customer,agent") and
    realtime ("false" for a replay).
    """

    def __init__(self, ws: ServerConnection, calls: CallRegistry, ingest: IngestConfig, inbound_role: Role) -> None:
        super().__init__(ws, calls, ingest)
        self.inbound_role = inbound_role
        self.tracks: list[str] = []

    async def run(self) -> None:
        drain: asyncio.Task | None = None
        try:
            while True:
                message = await self.receive()
                if isinstance(message, bytes):
                    raise _WsClose(CLOSE_UNSUPPORTED_DATA, "Twilio Media Streams sends JSON text messages only")
                doc = _parse_json(message)
                if not isinstance(doc, dict):
                    raise InvalidArgument("a Twilio message must be a JSON object")
                event = doc.get("event")
                if event == "connected":
                    continue
                if event == "start":
                    if self.session is not None:
                        raise InvalidArgument("start was received twice")
                    custom = (doc.get("start") or {}).get("customParameters") if isinstance(doc.get("start"), dict) else None
                    token = custom.get("token") if isinstance(custom, dict) and isinstance(custom.get("token"), str) else None
                    session = self.open_session(self._config(doc), self.credential or token)
                    drain = asyncio.create_task(_drain_events(session), name="twilio-events")
                elif event == "media":
                    session = self._require_session(event)
                    self._media(session, doc)
                    await session.flow_control()
                elif event == "stop":
                    session = self._require_session(event)
                    await session.finish("end_of_call")
                    self.outcome = "completed"
                    await self.ws.close(CLOSE_NORMAL, "stream stopped")
                    return
                elif event not in ("mark", "dtmf"):
                    log.debug("ignoring Twilio event %r", event)
        except CallLimitExceeded as exc:
            self.outcome = exc.kind
            self.note_error(exc)
            if self.session is not None:
                await self.session.end_for_limit(exc)
            await self._close(CLOSE_TIMEOUT, str(exc))
        except CallPulseError as exc:
            self.outcome = exc.kind
            self.note_error(exc)
            await self._close(CLOSE_BY_KIND.get(exc.kind, CLOSE_INTERNAL), str(exc))
        except _WsClose as exc:
            self.outcome = "invalid_argument"
            await self._close(exc.code, exc.reason)
        except ConnectionClosed:
            pass
        finally:
            if drain is not None:
                drain.cancel()
            self.release()

    def _require_session(self, event: str) -> CallSession:
        if self.session is None:
            raise InvalidArgument(f"{event} received before start")
        return self.session

    def _config(self, doc: dict[str, Any]) -> CallConfig:
        start = doc.get("start")
        if not isinstance(start, dict):
            raise InvalidArgument("start: the start object is missing")
        media_format = start.get("mediaFormat") or {}
        if (media_format.get("encoding"), media_format.get("sampleRate"), media_format.get("channels", 1)) != ("audio/x-mulaw", 8000, 1):
            raise InvalidArgument(f"start.mediaFormat: expected audio/x-mulaw 8000 Hz mono, got {media_format}")
        tracks = start.get("tracks") or ["inbound"]
        if not isinstance(tracks, list) or not tracks or len(tracks) > 2 or any(t not in ("inbound", "outbound") for t in tracks) or len(set(tracks)) != len(tracks):
            raise InvalidArgument(f"start.tracks: expected inbound and/or outbound, got {tracks!r}")
        self.tracks = tracks
        outbound_role = Role.AGENT if self.inbound_role is Role.CUSTOMER else Role.CUSTOMER
        roles = tuple(self.inbound_role if t == "inbound" else outbound_role for t in tracks)
        custom = start.get("customParameters") or {}
        if not isinstance(custom, dict):
            raise InvalidArgument("start.customParameters: expected an object")
        for key in ("agent_id", "team"):
            if not custom.get(key):
                raise InvalidArgument(f"start.customParameters.{key} is required (set it with <Parameter name=\"{key}\"> in <Stream>)")
        score = _roles_list(custom.get("score_roles", ""), "start.customParameters.score_roles") or (
            (Role.CUSTOMER,) if Role.CUSTOMER in roles else roles
        )
        return CallConfig(
            call_id=str(custom.get("call_id") or start.get("callSid") or ""),
            agent_id=str(custom["agent_id"]),
            team=str(custom["team"]),
            tenant=str(custom.get("tenant") or start.get("accountSid") or ""),
            audio=AudioFormat(Encoding.MULAW, 8000, roles),
            score_roles=score,
            realtime=str(custom.get("realtime", "true")).lower() != "false",
        )

    def _media(self, session: CallSession, doc: dict[str, Any]) -> None:
        media = doc.get("media")
        if not isinstance(media, dict):
            raise InvalidArgument("media: the media object is missing")
        track = media.get("track", "inbound")
        if track not in self.tracks:
            raise InvalidArgument(f"media.track {track!r} was not announced in start.tracks {self.tracks}")
        try:
            chunk = int(media["chunk"])
            timestamp = int(media["timestamp"])
            payload = base64.b64decode(media["payload"], validate=True)
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise InvalidArgument(f"media: chunk, timestamp and a base64 payload are required ({type(exc).__name__})") from None
        session.push_track(self.tracks.index(track), chunk, payload, time.monotonic(), start_ms=timestamp)

    async def _close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, _close_reason(reason))
        except ConnectionClosed:
            pass


class AudioHookCall(_Call):
    """Genesys Cloud AudioHook (protocol version 2), server side.

    Protocol: https://developer.genesys.cloud/devapps/audiohook/protocol-reference
    Session walkthrough and message fields: https://developer.genesys.cloud/devapps/audiohook/session-walkthrough
    Reference implementation: https://github.com/purecloudlabs/audiohook-reference-implementation
    The client (Genesys) sends open / ping / paused / resumed / discarded / update / error / close
    and binary audio; the server answers opened / pong / closed, or disconnect (reason error or
    unauthorized) after which the client closes. Every client message carries seq (+1 each),
    serverseq (the last server seq it saw), id (the session id of the Audiohook-Session-Id header)
    and position. PCMU 8 kHz is negotiated; stereo puts external (customer) and internal (agent)
    in the order the offer lists them. customConfig may set agent_id (default: the conversation
    id), team (default "default"), score_roles and realtime.
    """

    CLIENT_TYPES = ("open", "ping", "paused", "resumed", "discarded", "update", "error", "close")
    MAX_TEXT = 65535

    def __init__(self, ws: ServerConnection, calls: CallRegistry, ingest: IngestConfig, api_keys: tuple[str, ...]) -> None:
        super().__init__(ws, calls, ingest)
        headers = ws.request.headers
        self.session_id = headers.get("Audiohook-Session-Id", "")
        self.organization_id = headers.get("Audiohook-Organization-Id", "")
        self.api_key = headers.get("X-API-KEY", "")
        self.api_keys = api_keys
        self.seq = 0
        self.clientseq = 0
        self.state = "PREPARING"
        self.audio_seq = 0
        self.channels = 0
        self.drain: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            while True:
                message = await self.receive()
                if isinstance(message, bytes):
                    await self._audio(message)
                    continue
                if await self._text(message):
                    return
        except CallLimitExceeded as exc:
            self.outcome = exc.kind
            self.note_error(exc)
            if self.session is not None:
                await self.session.end_for_limit(exc)
            await self._disconnect("error", str(exc), CLOSE_TIMEOUT)
        except _AudioHookError as exc:
            self.outcome = "invalid_argument" if exc.reason == "error" else "unauthenticated"
            metrics.error(self.outcome)
            log.info("audiohook session ended with %s: %s", exc.reason, exc.info)
            await self._disconnect(exc.reason, exc.info, exc.close_code)
        except CallPulseError as exc:
            self.outcome = exc.kind
            self.note_error(exc)
            await self._disconnect("error", str(exc), CLOSE_BY_KIND.get(exc.kind, CLOSE_INTERNAL))
        except ConnectionClosed:
            pass
        finally:
            if self.drain is not None:
                self.drain.cancel()
            self.release()

    async def _text(self, text: str) -> bool:
        """Handle one client message; True when the session is over."""
        if len(text) > self.MAX_TEXT:
            raise _AudioHookError("error", f"Text message too large (>64K). Length: {len(text)}")
        try:
            message = json.loads(text)
        except ValueError:
            raise _AudioHookError("error", "Text message not valid JSON") from None
        if not _is_client_message(message):
            raise _AudioHookError("error", "Message not a well-formed client message")
        if message["seq"] != self.clientseq + 1:
            raise _AudioHookError("error", f"Invalid seq value (not monotonically increasing): expected {self.clientseq + 1}, got {message['seq']}")
        self.clientseq = message["seq"]
        if message["serverseq"] > self.seq:
            raise _AudioHookError("error", f"Invalid serverseq value: {message['serverseq']} is higher than the server's seq {self.seq}")
        if message["id"] != self.session_id:
            raise _AudioHookError("error", "Session identifier mismatch (id must equal the Audiohook-Session-Id header)")
        kind, params = message["type"], message["parameters"]
        if kind not in self.CLIENT_TYPES:
            raise _AudioHookError("error", f"Invalid Message: '{kind}' is not a supported client message")
        if kind == "open":
            await self._open(params)
        elif kind == "ping":
            await self._send("pong", {})
        elif kind == "paused":
            if self.state == "ACTIVE":
                self.state = "PAUSED"
        elif kind in ("resumed", "discarded"):
            if kind == "resumed" and self.state == "PAUSED":
                self.state = "ACTIVE"
            if self.session is not None and "discarded" in params:
                self.session.skip_audio(_duration_ms(params["discarded"], f"{kind}.parameters.discarded"))
        elif kind == "update":
            pass  # language changes do not affect emotion scoring
        elif kind == "error":
            log.warning("audiohook client reported error %s", params.get("code"))
        elif kind == "close":
            if self.session is not None and not self.session.closed:
                await self.session.finish(f"close_{params.get('reason', 'end')}")
            if self.outcome == "disconnected":
                self.outcome = "completed"
            self.state = "CLOSED"
            await self._send("closed", {})
            await self.ws.close(CLOSE_NORMAL, "session closed")
            return True
        return False

    async def _open(self, params: dict[str, Any]) -> None:
        if self.state != "PREPARING":
            raise _AudioHookError("error", f"'open' received in state {self.state}")
        self.state = "OPENING"
        if not self.api_key or (self.api_keys and not any(hmac.compare_digest(self.api_key, k) for k in self.api_keys)):
            raise _AudioHookError("unauthorized", "Missing or unknown X-API-KEY", CLOSE_POLICY)
        if not self.organization_id or params.get("organizationId") != self.organization_id:
            raise _AudioHookError("unauthorized", 'Mismatch between "organizationId" open parameter and "audiohook-organization-id" header field', CLOSE_POLICY)
        media = _select_media(params.get("media"))
        if media is None:
            raise _AudioHookError("error", "No supported media offered (PCMU, 8000 Hz, external and/or internal channels)")
        roles = tuple(Role.CUSTOMER if c == "external" else Role.AGENT for c in media["channels"])
        custom = params.get("customConfig") or {}
        if not isinstance(custom, dict):
            raise _AudioHookError("error", "Invalid Message: customConfig must be an object")
        conversation = str(params.get("conversationId") or "")
        score = _roles_list(custom.get("score_roles", ""), "customConfig.score_roles") or (
            (Role.CUSTOMER,) if Role.CUSTOMER in roles else roles
        )
        config = CallConfig(
            call_id=conversation,
            agent_id=str(custom.get("agent_id") or conversation),
            team=str(custom.get("team") or "default"),
            tenant=self.organization_id,
            audio=AudioFormat(Encoding.MULAW, 8000, roles),
            score_roles=score,
            realtime=custom.get("realtime", True) is not False,
        )
        try:
            session = self.open_session(config, self.api_key)
        except (Unauthenticated, PermissionDenied) as exc:
            raise _AudioHookError("unauthorized", str(exc), CLOSE_POLICY) from None
        self.drain = asyncio.create_task(_drain_events(session), name="audiohook-events")
        self.channels = len(roles)
        await self._send("opened", {"media": [media], "startPaused": False})
        self.state = "ACTIVE"

    async def _audio(self, data: bytes) -> None:
        if self.state == "PAUSED":
            return  # audio still in flight when the client paused
        if self.state != "ACTIVE" or self.session is None:
            raise _AudioHookError("error", f"Received audio in state {self.state}")
        self.audio_seq += 1
        self.session.push_audio(self.audio_seq, data, time.monotonic())
        await self.session.flow_control()

    async def _send(self, kind: str, parameters: dict[str, Any]) -> None:
        self.seq += 1
        message = {"version": "2", "type": kind, "id": self.session_id, "seq": self.seq, "clientseq": self.clientseq, "parameters": parameters}
        await self.ws.send(json.dumps(message))

    async def _disconnect(self, reason: str, info: str, close_code: int) -> None:
        """Send disconnect, let the client run its close transaction (bounded wait), then close."""
        try:
            if self.state not in ("CLOSED", "SIGNALED"):
                self.state = "SIGNALED"
                await self._send("disconnect", {"reason": reason, "info": info})
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    message = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
                    if isinstance(message, str):
                        try:
                            doc = json.loads(message)
                        except ValueError:
                            continue
                        if isinstance(doc, dict) and doc.get("type") == "close":
                            self.clientseq = doc.get("seq", self.clientseq) if isinstance(doc.get("seq"), int) else self.clientseq
                            await self._send("closed", {})
                            break
            await self.ws.close(close_code, _close_reason(info))
        except (ConnectionClosed, asyncio.TimeoutError):
            try:
                await self.ws.close(close_code, _close_reason(info))
            except ConnectionClosed:
                pass


class _WsClose(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _AudioHookError(Exception):
    def __init__(self, reason: str, info: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(info)
        self.reason = reason
        self.info = info
        self.close_code = close_code


_DURATION = re.compile(r"^PT(\d+\.\d*|\.?\d+)S$")


def _duration_ms(value: Any, where: str) -> int:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise _AudioHookError("error", f"Invalid Message: {where} must be an ISO 8601 duration like PT1.5S, got {value!r}")
    return int(round(float(match.group(1)) * 1000))


def _is_client_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("version") == "2"
        and isinstance(message.get("id"), str)
        and isinstance(message.get("type"), str)
        and isinstance(message.get("seq"), int)
        and isinstance(message.get("serverseq"), int)
        and isinstance(message.get("position"), str)
        and isinstance(message.get("parameters"), dict)
    )


def _select_media(offered: Any) -> dict[str, Any] | None:
    """Prefer PCMU 8 kHz stereo (external + internal), then external only, then internal only."""
    if not isinstance(offered, list):
        return None
    candidates = [
        m for m in offered
        if isinstance(m, dict) and m.get("type") == "audio" and m.get("format") == "PCMU" and m.get("rate") == 8000
        and isinstance(m.get("channels"), list) and m["channels"]
        and set(m["channels"]) <= {"external", "internal"} and len(set(m["channels"])) == len(m["channels"])
    ]
    for wanted in (2, ("external",), ("internal",)):
        for m in candidates:
            if (wanted == 2 and len(m["channels"]) == 2) or tuple(m["channels"]) == wanted:
                return {"type": "audio", "format": "PCMU", "channels": list(m["channels"]), "rate": 8000}
    return None


def _roles_list(value: Any, where: str) -> tuple[Role, ...]:
    if value in (None, ""):
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) and not isinstance(items, tuple):
        raise InvalidArgument(f"{where}: expected customer and/or agent")
    try:
        return tuple(dict.fromkeys(Role(str(i).strip()) for i in items if str(i).strip()))
    except ValueError:
        raise InvalidArgument(f"{where}: expected customer and/or agent, got {value!r}") from None


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"message is not valid JSON: {exc.msg} at position {exc.pos}") from None


async def _drain_events(session: CallSession) -> None:
    """Protocols that carry no events back still consume them, so the bounded buffer never fills."""
    try:
        async for event in session.events():
            if isinstance(event, CallSummary):
                return
    except CallPulseError:
        return


class WebSocketServer:
    """One websockets server for all protocols, on its own port, sharing the call registry with gRPC."""

    def __init__(self, config: ServerConfig, calls: CallRegistry, ingest: IngestConfig, ready: Callable[[], bool],
                 degraded: Callable[[], str | None] = lambda: None) -> None:
        """`ready`: calls are accepted; `degraded`: why the service runs with a dependency away (None: it does not)."""
        self._config = config
        self._calls = calls
        self._ingest = ingest
        self._ready = ready
        self._degraded = degraded
        self._inbound_role = Role(config.twilio_inbound_role)
        self._audiohook_key = decode_client_secret(config.audiohook_client_secret) if config.audiohook_client_secret else None
        self._audiohook_nonces = NonceCache()
        self._server = None
        self.port = 0

    async def start(self) -> int:
        _CONNECTION_LOG.setLevel(logging.INFO)
        self._server = await serve(
            self._handle,
            self._config.host,
            self._config.ws_port,
            process_request=self._process_request,
            max_size=self._config.max_message_bytes,
            max_queue=32,
            ssl=self._tls_context(),
            logger=_CONNECTION_LOG,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _tls_context(self) -> ssl.SSLContext | None:
        """WSS when a certificate is configured."""
        if not self._config.tls_cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self._config.tls_cert_file, self._config.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate and key: {exc}") from None
        return context

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request):
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self._ready():
                # Still 200 when degraded: calls are served (alerts wait in the buffer), so the
                # instance must stay in rotation.
                why = self._degraded()
                return connection.respond(HTTPStatus.OK, f"degraded: {why}\n" if why else "ready\n")
            why = self._degraded() if self._calls.accepting else None  # accepting calls, yet not ready: alerts are being lost
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"not ready: {why}\n" if why else "not ready: the model is loading or the service is stopping\n")
        if path not in NATIVE_PATHS + (TWILIO_PATH, AUDIOHOOK_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such endpoint {path}; use /, /twilio or /audiohook\n")
        refused = self._check_signature(path, request)
        if refused is not None:
            metrics.error("unauthenticated")
            log.info("refused a %s connection: %s", path, refused[1])
            return connection.respond(refused[0], f"{refused[1]}\n")
        if path in NATIVE_PATHS and self._calls.auth_required:
            # Refused before the upgrade; Twilio (custom parameter) and AudioHook (X-API-KEY, answered
            # in its own protocol) are checked when their call opens.
            try:
                self._calls.check_credential(credential_from(request.headers.get("Authorization"), request.headers.get("X-API-Key")))
            except Unauthenticated as exc:
                metrics.error(exc.kind)
                return connection.respond(HTTPStatus.UNAUTHORIZED, f"{exc}\n")
        return None

    def _check_signature(self, path: str, request) -> tuple[HTTPStatus, str] | None:
        """The platform's request signature where one is configured: None when valid (or not required),
        else the HTTP status and reason to refuse the upgrade with."""
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        host = headers.get("host", "")
        if path == TWILIO_PATH and self._config.twilio_auth_token:
            # Twilio signs the URL of its <Stream>; without public_ws_url that is this Host, and behind a
            # TLS-terminating proxy the scheme Twilio used is not known here, so both are tried.
            bases = [self._config.public_ws_url.rstrip("/")] if self._config.public_ws_url else [f"wss://{host}", f"ws://{host}"]
            errors = []
            for base in bases:
                try:
                    verify_twilio(self._config.twilio_auth_token, headers.get("x-twilio-signature"), base + request.path)
                    break
                except SignatureError as exc:
                    errors.append(str(exc))
            else:
                return HTTPStatus.FORBIDDEN, errors[0]
        if path == AUDIOHOOK_PATH and self._audiohook_key is not None:
            try:
                verify_audiohook(self._audiohook_key, request.path, host, headers, time.time(), self._audiohook_nonces)
            except SignatureError as exc:
                return HTTPStatus.UNAUTHORIZED, str(exc)
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        path = urlsplit(connection.request.path).path
        if path == TWILIO_PATH:
            await TwilioCall(connection, self._calls, self._ingest, self._inbound_role).run()
        elif path == AUDIOHOOK_PATH:
            await AudioHookCall(connection, self._calls, self._ingest, self._config.audiohook_api_keys).run()
        else:
            await NativeCall(connection, self._calls, self._ingest).run()
