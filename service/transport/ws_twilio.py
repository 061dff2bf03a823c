"""Twilio Media Streams (/twilio): connected / start / media / mark / dtmf / stop, Twilio sends, we listen.

Message formats: https://www.twilio.com/docs/voice/media-streams/websocket-messages
TwiML <Stream> (tracks, <Parameter> custom parameters): https://www.twilio.com/docs/voice/twiml/stream
Audio is base64 mu-law, 8 kHz, mono per track; `inbound` (the caller) and `outbound` tracks
become two channels. customParameters carry agent_id and team (required), and optionally
call_id (default: callSid), tenant (default: accountSid), score_roles ("customer,agent"),
realtime ("false" for a replay) and token (Twilio cannot set headers). Twilio expects nothing back:
errors close the socket with a code from the status table and a reason naming the problem.
"""

from __future__ import annotations

import time

from websockets.asyncio.server import ServerConnection

from service.calls import CallRegistry
from service.config import IngestConfig
from service.domain import AudioFormat, CallConfig, Encoding, Role
from service.errors import CallPulseError, InvalidArgument
from service.session import CallSession
from service.transport.status import CLOSE_NORMAL, CLOSE_UNSUPPORTED_DATA
from service.transport.twilio_wire import MAX_MESSAGE_CHARS, TwilioMedia, TwilioStart, TwilioStop, parse_twilio
from service.transport.wire_json import roles_list
from service.transport.ws_base import WsCall


class BinaryFrame(InvalidArgument):
    """Twilio sends text only: a binary frame closes with 1003."""


class TwilioCall(WsCall):
    """One Twilio Media Stream carrying one call."""

    def __init__(self, ws: ServerConnection, calls: CallRegistry, ingest: IngestConfig, handshake_timeout_s: float,
                 inbound_role: Role) -> None:
        super().__init__(ws, calls, ingest, handshake_timeout_s)
        self.inbound_role = inbound_role
        self.tracks: tuple[str, ...] = ()

    def _parse(self, message: str | bytes):
        if isinstance(message, bytes):
            raise BinaryFrame("Twilio Media Streams sends JSON text messages only")
        return parse_twilio(message, max_chars=MAX_MESSAGE_CHARS, max_payload_bytes=self.ingest.max_chunk_bytes)

    async def handshake(self) -> CallSession:
        async for message in self.ws:
            parsed = self._parse(message)
            if isinstance(parsed, TwilioStart):
                token = parsed.custom.get("token")
                return self.open_session(self.call_config(parsed), self.credential or token)
            if isinstance(parsed, (TwilioMedia, TwilioStop)):
                raise InvalidArgument(f"{'media' if isinstance(parsed, TwilioMedia) else 'stop'} received before start")
        raise InvalidArgument("the stream ended before start")

    async def pump(self, session: CallSession) -> None:
        async for message in self.ws:
            parsed = self._parse(message)
            if isinstance(parsed, TwilioMedia):
                if parsed.track not in self.tracks:
                    raise InvalidArgument(f"media.track {parsed.track!r} was not announced in start.tracks {list(self.tracks)}")
                session.push_track(self.tracks.index(parsed.track), parsed.chunk, parsed.payload, time.monotonic(),
                                   start_ms=parsed.timestamp_ms)
                await session.flow_control()
            elif isinstance(parsed, TwilioStop):
                await session.finish("end_of_call")
                return
            elif isinstance(parsed, TwilioStart):
                raise InvalidArgument("start was received twice")
            else:
                session.touch()  # connected, mark, dtmf
        session.abort("disconnected")

    def call_config(self, start: TwilioStart) -> CallConfig:
        """The call a `start` message describes (the custom parameters name the agent and the team)."""
        self.tracks = start.tracks
        outbound_role = Role.AGENT if self.inbound_role is Role.CUSTOMER else Role.CUSTOMER
        roles = tuple(self.inbound_role if t == "inbound" else outbound_role for t in start.tracks)
        custom = start.custom
        for key in ("agent_id", "team"):
            if not custom.get(key):
                raise InvalidArgument(f"start.customParameters.{key} is required (set it with <Parameter name=\"{key}\"> in <Stream>)")
        score = roles_list(custom.get("score_roles", ""), "start.customParameters.score_roles") or (
            (Role.CUSTOMER,) if Role.CUSTOMER in roles else roles
        )
        return CallConfig(
            call_id=custom.get("call_id") or start.call_sid,
            agent_id=custom["agent_id"],
            team=custom["team"],
            tenant=custom.get("tenant") or start.account_sid,
            audio=AudioFormat(Encoding.MULAW, 8000, roles),
            score_roles=score,
            realtime=custom.get("realtime", "true").lower() != "false",
        )

    async def forward(self, session: CallSession) -> bool:
        return await self.drain(session)

    async def end_normally(self) -> None:
        await self.close(CLOSE_NORMAL, "stream stopped")

    async def refuse(self, error: CallPulseError) -> None:
        await self.close(CLOSE_UNSUPPORTED_DATA if isinstance(error, BinaryFrame) else self.close_code(error), str(error))
