"""The native WebSocket protocol: text `start` -> binary audio frames (and text `transcript`) -> text `stop`;
JSON events back; errors as an `error` event, then a close code from the one status table.

Binary framing, chosen in `start`: "raw" (default; each frame is one chunk, seq = arrival order)
or "seq64" (an 8-byte big-endian seq, then the chunk).
"""

from __future__ import annotations

import json
import time

from service.domain import CallSummary
from service.errors import CallPulseError, InvalidArgument
from service.session import CallSession
from service.transport.json_events import (
    MAX_MESSAGE_CHARS,
    error_to_json,
    event_to_json,
    native_message,
    start_from_json,
    stop_from_json,
    transcript_from_json,
)
from service.transport.status import CLOSE_NORMAL, answer
from service.transport.wire_json import parse_json
from service.transport.ws_base import WsCall


class NativeCall(WsCall):
    """One call over the native protocol."""

    framing = "raw"

    async def handshake(self) -> CallSession:
        first = await self.ws.recv()
        if isinstance(first, bytes):
            raise InvalidArgument("the first message must be a JSON start message, got a binary frame")
        config, self.framing = start_from_json(parse_json(first, max_chars=MAX_MESSAGE_CHARS, what="message"))
        return self.open_session(config)

    async def pump(self, session: CallSession) -> None:
        counter = 0
        seq64 = self.framing == "seq64"
        async for message in self.ws:
            if isinstance(message, bytes):
                if seq64:
                    if len(message) < 8:
                        raise InvalidArgument(f"a seq64 frame needs an 8-byte seq header, got {len(message)} bytes")
                    seq, data = int.from_bytes(message[:8], "big"), message[8:]
                else:
                    counter += 1
                    seq, data = counter, message
                session.push_audio(seq, data, time.monotonic())
                await session.flow_control()
                continue
            kind, doc = native_message(message, max_chars=MAX_MESSAGE_CHARS)
            if kind == "stop":
                await session.finish(stop_from_json(doc))
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
            raise InvalidArgument(f"unknown message type {kind[:32]!r}; expected transcript or stop (audio goes in binary frames)")
        session.abort("disconnected")

    async def forward(self, session: CallSession) -> bool:
        summary = False
        async for event in session.events():
            await self.ws.send(json.dumps(event_to_json(event)))
            summary = summary or isinstance(event, CallSummary)
        return summary

    async def end_normally(self) -> None:
        await self.close(CLOSE_NORMAL, "call ended")

    async def refuse(self, error: CallPulseError) -> None:
        await self.ws.send(json.dumps(error_to_json(answer(error.kind).code, str(error))))
        await self.close(answer(error.kind).close, str(error))
