"""What every WebSocket adapter shares: the handshake under its deadline, the reader task that feeds the
session, forwarding the session's events, and ending the call on the wire.

An adapter subclasses WsCall and supplies `handshake` (read until the call can open, return the
session), `pump` (read the rest of the call into the session), `forward` (send or drain the
session's events), `end_normally` and `refuse` (report an error the protocol's way). The shape is
the same for every protocol, so every call ends the same way whoever ends it: the bridge (stop,
close), a limit or a shutdown (the session finishes, then fails its event stream with the reason),
or bad input (the reader fails the session).
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from service import metrics
from service.auth import credential_from
from service.calls import CallRegistry
from service.config import IngestConfig
from service.domain import CallConfig, CallSummary
from service.errors import CallLimitExceeded, CallPulseError, HandshakeTimeout
from service.redact import redact
from service.session import CallSession
from service.transport.status import answer

log = logging.getLogger(__name__)

PUMP_WIND_DOWN_S = 2.0  # after the summary, how long the reader may take to finish its last reply


async def _stopped(task: asyncio.Task) -> None:
    """Cancel a task if it still runs and wait until it has ended."""
    if not task.done():
        task.cancel()
    await asyncio.wait({task})


def close_reason(text: str) -> str:
    """A close reason is at most 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore")


class WsCall:
    """One WebSocket connection carrying one call."""

    def __init__(self, ws: ServerConnection, calls: CallRegistry, ingest: IngestConfig, handshake_timeout_s: float) -> None:
        self.ws = ws
        self.calls = calls
        self.ingest = ingest
        self.handshake_timeout_s = handshake_timeout_s
        self.session: CallSession | None = None
        self.outcome = "disconnected"

    # -- to supply ----------------------------------------------------------------------------

    async def handshake(self) -> CallSession:
        """Read until the call can open; open it (`open_session`) and return its session."""
        raise NotImplementedError

    async def pump(self, session: CallSession) -> None:
        """Read the rest of the call into the session; return when the bridge ended it."""
        raise NotImplementedError

    async def forward(self, session: CallSession) -> bool:
        """Deliver (or drain) the session's events; True once the summary went through. Raises the error
        the session failed with."""
        raise NotImplementedError

    async def end_normally(self) -> None:
        """The call ended with its summary: close the connection the protocol's way."""
        raise NotImplementedError

    async def refuse(self, error: CallPulseError) -> None:
        """Report an error the protocol's way and close."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------

    @property
    def credential(self) -> str | None:
        """The caller's credential from the upgrade request's headers."""
        headers = self.ws.request.headers if self.ws.request is not None else {}
        return credential_from(headers.get("Authorization"), headers.get("X-API-Key"))

    def open_session(self, config: CallConfig, credential: str | None = None) -> CallSession:
        self.session = self.calls.open(config, credential if credential is not None else self.credential)
        self.session.start()
        return self.session

    async def run(self) -> None:
        """The connection's whole life."""
        pump: asyncio.Task | None = None
        handshaking = False
        try:
            self.calls.begin_handshake()
            handshaking = True
            try:
                async with asyncio.timeout(self.handshake_timeout_s):
                    session = await self.handshake()
            except TimeoutError:
                raise HandshakeTimeout(f"the call was not started within {self.handshake_timeout_s:g} s of connecting "
                                       "(handshake timeout)") from None
            handshaking = False
            self.calls.end_handshake()
            pump = asyncio.create_task(self._read(session), name="ws-call-pump")
            if await self.forward(session):
                await asyncio.wait({pump}, timeout=PUMP_WIND_DOWN_S)
                await _stopped(pump)
                self.outcome = "completed"
                await self.end_normally()
        except CallPulseError as exc:
            self.outcome = exc.kind
            if handshaking:
                handshaking = False
                self.calls.end_handshake(exc)
            metrics.error(exc.kind)
            log.info("websocket call ended with %s: %s", exc.kind, redact(exc))
            if pump is not None:
                await _stopped(pump)  # refuse() may read the connection (AudioHook's close transaction)
            try:
                await self.refuse(exc)
            except ConnectionClosed:
                pass
        except ConnectionClosed:
            pass
        finally:
            if handshaking:
                self.calls.end_handshake(CallPulseError("the connection ended before its call started"))
            if pump is not None and not pump.done():
                pump.cancel()
            if self.session is not None:
                if not self.session.closed:
                    self.session.abort(self.outcome)
                self.calls.release(self.session, self.outcome)

    async def _read(self, session: CallSession) -> None:
        """The reader task: the adapter's pump, with every way it can fail turned into the session's end."""
        try:
            await self.pump(session)
        except CallLimitExceeded as exc:
            await session.end_for_limit(exc)
        except CallPulseError as exc:
            session.fail(exc)
        except ConnectionClosed:
            session.abort("disconnected")
        except Exception:  # noqa: BLE001 - a bug in one call must end that call, not hang it
            log.exception("unexpected error while reading a websocket call")
            session.fail(CallPulseError("internal error while processing the call's audio"))

    async def close(self, code: int, reason: str) -> None:
        """Close with `code`. Frames the bridge is still sending are read and dropped meanwhile: unread, they
        would fill the incoming queue, reading would pause, and the bridge's close frame behind them would
        only be seen when the close times out."""
        discard = asyncio.create_task(self._discard_incoming())
        try:
            await self.ws.close(code, close_reason(reason))
        except ConnectionClosed:
            pass
        finally:
            discard.cancel()

    async def _discard_incoming(self) -> None:
        try:
            async for _ in self.ws:
                pass
        except ConnectionClosed:
            pass

    async def drain(self, session: CallSession) -> bool:
        """`forward` for protocols that carry no events back: consume them so the bounded buffer never fills."""
        summary = False
        async for event in session.events():
            summary = summary or isinstance(event, CallSummary)
        return summary

    @staticmethod
    def close_code(error: CallPulseError) -> int:
        return answer(error.kind).close
