"""Admission and bookkeeping of active calls: unique call ids, the concurrent-call limit, connections waiting
to start a call, readiness."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from service import metrics
from service.auth import Authenticator
from service.domain import CallConfig
from service.errors import CallAlreadyActive, CallPulseError, CapacityExceeded, HandshakeTimeout, ServiceUnavailable
from service.session import CallSession

log = logging.getLogger(__name__)


def resident_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class CallRegistry:
    """Creates sessions for new calls and forgets them when they end."""

    def __init__(self, max_calls: int, session_factory: Callable[[CallConfig], CallSession],
                 authenticator: Authenticator | None = None, max_rss_mb: int = 0, max_handshakes: int = 256, pod=None) -> None:
        """`pod`: a pod worker's PodSlot; then max_calls and max_rss_mb count the whole pod."""
        self._max_calls = max_calls
        self._pod = pod
        self._max_handshakes = max_handshakes
        self._handshakes = 0
        self._max_rss_mb = max_rss_mb
        self._factory = session_factory
        self._auth = authenticator or Authenticator({})
        self._calls: dict[tuple[str, str], CallSession] = {}
        self.accepting = False

    @property
    def active(self) -> int:
        return len(self._calls)

    @property
    def handshakes(self) -> int:
        """Connections open but not yet started."""
        return self._handshakes

    @property
    def handshakes_full(self) -> bool:
        return self._handshakes >= self._max_handshakes

    def begin_handshake(self) -> None:
        """A connection opened: count it until its call starts (or it ends). Raises CapacityExceeded when
        max_handshakes connections are already waiting."""
        if self.handshakes_full:
            metrics.handshake_ended("busy", self._handshakes)
            raise CapacityExceeded(f"{self._max_handshakes} connections are already waiting to start a call (max_handshakes); try again")
        self._handshakes += 1
        metrics.handshake_begun(self._handshakes)

    def end_handshake(self, error: CallPulseError | None = None) -> None:
        """The connection started its call (`error` None) or ended before that."""
        self._handshakes -= 1
        if error is None:
            outcome = "started"
        elif isinstance(error, HandshakeTimeout):
            outcome = "timeout"
        else:
            outcome = "refused"
        metrics.handshake_ended(outcome, self._handshakes)

    @property
    def auth_required(self) -> bool:
        return self._auth.enabled

    def check_credential(self, credential: str | None) -> None:
        """Raise Unauthenticated unless the credential is known (or authentication is off)."""
        self._auth.tenant_for(credential)

    def open(self, config: CallConfig, credential: str | None = None) -> CallSession:
        """Admit a call for the caller holding `credential` and start its session. Raises Unauthenticated,
        PermissionDenied, CallAlreadyActive, CapacityExceeded or ServiceUnavailable."""
        config = self._auth.bind(config, credential)
        if not self.accepting:
            raise ServiceUnavailable("the service is not accepting calls (starting up or shutting down)")
        key = (config.tenant, config.call_id)  # call ids are unique per tenant
        if key in self._calls:
            raise CallAlreadyActive(f"call_id {config.call_id!r} is already streaming")
        if self._max_rss_mb:
            rss = self._pod.state.rss_mb if self._pod is not None else resident_mb()
            if rss > self._max_rss_mb:
                raise CapacityExceeded(f"the server uses {rss:.0f} MB, over its limit of {self._max_rss_mb} MB; "
                                       "calls in progress go on, new ones go elsewhere")
        if self._pod is not None:
            refused = self._pod.admit()
            if refused is not None:
                raise CapacityExceeded(refused)
        elif len(self._calls) >= self._max_calls:
            raise CapacityExceeded(f"the server is at its limit of {self._max_calls} concurrent calls")
        try:
            session = self._factory(config)
        except BaseException:
            if self._pod is not None:
                self._pod.release()
            raise
        self._calls[key] = session
        metrics.call_opened()
        return session

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is left (every connection has ended); False if some still are after `timeout`."""
        deadline = time.monotonic() + timeout
        while self._calls and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._calls

    def sessions(self) -> list[CallSession]:
        """The sessions of the calls streaming now."""
        return list(self._calls.values())

    def release(self, session: CallSession, outcome: str) -> None:
        """Forget a session (idempotent); `outcome` labels the calls_total metric. A session still finishing
        (its bridge gone after EndOfCall, or a shutdown under way) is forgotten when its summary is out,
        so that a shutdown still waits for it."""
        finishing = session.finishing
        if finishing is not None and not finishing.done():
            finishing.add_done_callback(lambda _: self._forget(session, outcome))
            return
        self._forget(session, outcome)

    def _forget(self, session: CallSession, outcome: str) -> None:
        key = (session.config.tenant, session.config.call_id)
        if self._calls.get(key) is session:
            del self._calls[key]
            if self._pod is not None:
                self._pod.release()
            metrics.call_closed(outcome)
            log.info("call ended (%s); %d active", outcome, len(self._calls))
