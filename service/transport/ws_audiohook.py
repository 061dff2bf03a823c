"""Genesys Cloud AudioHook (protocol version 2), server side (/audiohook).

Protocol: https://developer.genesys.cloud/devapps/audiohook/protocol-reference
Session walkthrough and message fields: https://developer.genesys.cloud/devapps/audiohook/session-walkthrough
Reference implementation: https://github.com/purecloudlabs/audiohook-reference-implementation
The client (Genesys) sends open / ping / paused / resumed / discarded / update / error / close
and binary audio; the server answers opened / pong / closed, or disconnect (reason error or
unauthorized) after which the client closes. Every client message carries seq (+1 each),
serverseq (the last server seq it saw), id (the session id of the Audiohook-Session-Id header)
and position. PCMU 8 kHz is negotiated; stereo puts external (customer) and internal (agent)
in the order the offer lists them. customConfig may set agent_id (default: the conversation
id), team (default "default"), score_roles and realtime. The X-API-KEY is checked at the
upgrade (see ws_server); the organization id and the tenant's token when `open` arrives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from service.calls import CallRegistry
from service.config import IngestConfig
from service.domain import AudioFormat, CallConfig, Encoding, Role
from service.errors import CallPulseError, InvalidArgument, PermissionDenied, Unauthenticated
from service.session import CallSession
from service.transport.audiohook_wire import (
    AudioHookProtocolError,
    ClientMessage,
    close_reason,
    discarded_ms,
    error_code,
    open_parameters,
    parse_client_message,
)
from service.transport.status import CLOSE_NORMAL, CLOSE_POLICY
from service.transport.ws_base import WsCall

log = logging.getLogger(__name__)

CLIENT_TYPES = ("open", "ping", "paused", "resumed", "discarded", "update", "error", "close")
CLOSE_TRANSACTION_S = 5.0  # after `disconnect`, how long the client has to send `close`


class AudioHookError(InvalidArgument):
    """A protocol violation: answered with `disconnect` (reason error) and the info text."""


class AudioHookUnauthorized(Unauthenticated):
    """Answered with `disconnect` (reason unauthorized)."""


class AudioHookCall(WsCall):
    """One AudioHook session carrying one call."""

    def __init__(self, ws: ServerConnection, calls: CallRegistry, ingest: IngestConfig, handshake_timeout_s: float) -> None:
        super().__init__(ws, calls, ingest, handshake_timeout_s)
        headers = ws.request.headers
        self.session_id = headers.get("Audiohook-Session-Id", "")
        self.organization_id = headers.get("Audiohook-Organization-Id", "")
        self.api_key = headers.get("X-API-KEY", "")
        self.seq = 0
        self.clientseq = 0
        self.state = "PREPARING"
        self.audio_seq = 0

    # -- handshake: until `open` -----------------------------------------------------------

    async def handshake(self) -> CallSession:
        async for message in self.ws:
            if isinstance(message, bytes):
                raise AudioHookError(f"Received audio in state {self.state}")
            msg = self._message(message)
            if msg.type == "open":
                return await self._open(msg.parameters)
            if msg.type == "ping":
                await self._send("pong", {})
                continue
            raise AudioHookError(f"'{msg.type}' received in state {self.state}")
        raise InvalidArgument("the connection ended before open")

    async def _open(self, params: dict[str, Any]) -> CallSession:
        self.state = "OPENING"
        opened = _protocol(open_parameters, params)
        if not self.organization_id or opened.organization_id != self.organization_id:
            raise AudioHookUnauthorized('Mismatch between "organizationId" open parameter and "audiohook-organization-id" header field')
        if opened.media is None:
            raise AudioHookError("No supported media offered (PCMU, 8000 Hz, external and/or internal channels)")
        roles = tuple(Role.CUSTOMER if c == "external" else Role.AGENT for c in opened.media["channels"])
        custom = opened.custom
        config = CallConfig(
            call_id=opened.conversation_id,
            agent_id=custom["agent_id"] or opened.conversation_id,
            team=custom["team"] or "default",
            tenant=self.organization_id,
            audio=AudioFormat(Encoding.MULAW, 8000, roles),
            score_roles=custom["score_roles"] or ((Role.CUSTOMER,) if Role.CUSTOMER in roles else roles),
            realtime=custom["realtime"],
        )
        try:
            session = self.open_session(config, self.api_key)
        except (Unauthenticated, PermissionDenied) as exc:
            raise AudioHookUnauthorized(str(exc)) from None
        await self._send("opened", {"media": [opened.media], "startPaused": False})
        self.state = "ACTIVE"
        return session

    # -- the call ----------------------------------------------------------------------------

    async def pump(self, session: CallSession) -> None:
        async for message in self.ws:
            if isinstance(message, bytes):
                if self.state == "PAUSED":
                    continue  # audio still in flight when the client paused
                if self.state != "ACTIVE":
                    raise AudioHookError(f"Received audio in state {self.state}")
                self.audio_seq += 1
                session.push_audio(self.audio_seq, message, time.monotonic())
                await session.flow_control()
                continue
            msg = self._message(message)
            session.touch()
            if await self._control(session, msg):
                return
        session.abort("disconnected")

    async def _control(self, session: CallSession, msg: ClientMessage) -> bool:
        """Handle one client message during the call; True when the session is over."""
        kind, params = msg.type, msg.parameters
        if kind == "ping":
            await self._send("pong", {})
        elif kind == "paused":
            if self.state == "ACTIVE":
                self.state = "PAUSED"
        elif kind in ("resumed", "discarded"):
            if kind == "resumed" and self.state == "PAUSED":
                self.state = "ACTIVE"
            discarded = _protocol(discarded_ms, params, kind)
            if discarded is not None:
                session.skip_audio(discarded)
        elif kind == "update":
            pass  # language changes do not affect emotion scoring
        elif kind == "error":
            code = _protocol(error_code, params)
            log.warning("audiohook client reported error %s", code if code is not None else "(no code)")
        elif kind == "close":
            reason = _protocol(close_reason, params)
            await session.finish(f"close_{reason}")
            self.state = "CLOSED"
            await self._send("closed", {})
            return True
        else:
            raise AudioHookError(f"'{kind}' received in state {self.state}")
        return False

    def _message(self, text: str) -> ClientMessage:
        """Parse and sequence-check one client message."""
        msg = _protocol(parse_client_message, text)
        if msg.seq != self.clientseq + 1:
            raise AudioHookError(f"Invalid seq value (not monotonically increasing): expected {self.clientseq + 1}, got {msg.seq}")
        self.clientseq = msg.seq
        if msg.serverseq > self.seq:
            raise AudioHookError(f"Invalid serverseq value: {msg.serverseq} is higher than the server's seq {self.seq}")
        if msg.id != self.session_id:
            raise AudioHookError("Session identifier mismatch (id must equal the Audiohook-Session-Id header)")
        if msg.type not in CLIENT_TYPES:
            raise AudioHookError(f"Invalid Message: '{msg.type[:40]}' is not a supported client message")
        return msg

    async def forward(self, session: CallSession) -> bool:
        return await self.drain(session)

    async def end_normally(self) -> None:
        await self.close(CLOSE_NORMAL, "session closed")

    async def refuse(self, error: CallPulseError) -> None:
        """Send disconnect, let the client run its close transaction (bounded wait), then close."""
        unauthorized = error.kind in ("unauthenticated", "permission_denied")
        reason = "unauthorized" if unauthorized else "error"
        code = CLOSE_POLICY if unauthorized else self.close_code(error)
        info = str(error)
        try:
            if self.state not in ("CLOSED", "SIGNALED"):
                self.state = "SIGNALED"
                await self._send("disconnect", {"reason": reason, "info": info})
                await asyncio.wait_for(self._await_close(), CLOSE_TRANSACTION_S)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        await self.close(code, info)

    async def _await_close(self) -> None:
        async for message in self.ws:
            if not isinstance(message, str):
                continue
            try:
                msg = parse_client_message(message)
            except AudioHookProtocolError:
                continue
            if msg.type == "close":
                self.clientseq = msg.seq
                await self._send("closed", {})
                return

    async def _send(self, kind: str, parameters: dict[str, Any]) -> None:
        self.seq += 1
        message = {"version": "2", "type": kind, "id": self.session_id, "seq": self.seq, "clientseq": self.clientseq,
                   "parameters": parameters}
        await self.ws.send(json.dumps(message))


def _protocol(accessor, *args):
    """Run an audiohook_wire parser, turning its protocol error into the call's."""
    try:
        return accessor(*args)
    except AudioHookProtocolError as exc:
        raise AudioHookError(exc.info) from None

