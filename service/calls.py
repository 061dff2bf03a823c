"""Admission and bookkeeping of active calls: unique call ids, the concurrent-call limit, readiness."""

from __future__ import annotations

import logging
from typing import Callable

from service import metrics
from service.domain import CallConfig
from service.errors import CallAlreadyActive, CapacityExceeded, ServiceUnavailable
from service.session import CallSession

log = logging.getLogger(__name__)


class CallRegistry:
    """Creates sessions for new calls and forgets them when they end."""

    def __init__(self, max_calls: int, session_factory: Callable[[CallConfig], CallSession]) -> None:
        self._max_calls = max_calls
        self._factory = session_factory
        self._calls: dict[str, CallSession] = {}
        self.accepting = False

    @property
    def active(self) -> int:
        return len(self._calls)

    def open(self, config: CallConfig) -> CallSession:
        """Admit a call and start its session. Raises CallAlreadyActive, CapacityExceeded or ServiceUnavailable."""
        if not self.accepting:
            raise ServiceUnavailable("the service is not accepting calls (starting up or shutting down)")
        if config.call_id in self._calls:
            raise CallAlreadyActive(f"call_id {config.call_id!r} is already streaming")
        if len(self._calls) >= self._max_calls:
            raise CapacityExceeded(f"the server is at its limit of {self._max_calls} concurrent calls")
        session = self._factory(config)
        self._calls[config.call_id] = session
        metrics.call_opened()
        return session

    def release(self, session: CallSession, outcome: str) -> None:
        """Forget a session (idempotent); `outcome` labels the calls_total metric."""
        if self._calls.get(session.config.call_id) is session:
            del self._calls[session.config.call_id]
            metrics.call_closed(outcome)
            log.info("call ended (%s); %d active", outcome, len(self._calls))
