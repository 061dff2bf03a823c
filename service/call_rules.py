"""One call's rules: each window (with its scores and what was measured over it) and each conversation tick through the
current rule engine, and the alerts they raise: published, sent to the bridge, and kept for the call summary."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from service import metrics
from service.alerts import EventSink, build_alert
from service.analytics.conversation import ConversationSnapshot
from service.audio.channel import AnalysisWindow
from service.call_analytics import WindowAnalytics
from service.domain import Alert, CallConfig, CallEvent
from service.rules import CallRuleState, RuleEngine, RuleMatch, ScoredWindow

MAX_SUMMARY_ALERTS = 1000  # the summary lists at most this many (the newest); the count is exact


class CallRules:
    """The rule state of one call and the alerts it raised so far."""

    def __init__(self, config: CallConfig, rules: Callable[[], RuleEngine], publisher: EventSink, model_name: str,
                 emit: Callable[[CallEvent], None]) -> None:
        """`rules` returns the current engine (rules may be replaced while the call runs); `emit` queues an event for
        the bridge."""
        self._config = config
        self._rules = rules
        self._publisher = publisher
        self._model_name = model_name
        self._emit = emit
        self._state = CallRuleState()
        self.alerts: deque[Alert] = deque(maxlen=MAX_SUMMARY_ALERTS)
        """The newest alerts raised (at most MAX_SUMMARY_ALERTS), for the summary."""
        self.count = 0
        """Alerts raised in all."""

    def evaluate(self, window: AnalysisWindow, scores: dict[str, float] | None, degraded: bool, heard: bool = True) -> None:
        """The rules on one window (`heard` False: no prosody, as the engine's speech check found no speech in it, or its
        audio is mostly a tone or music)."""
        analytics: WindowAnalytics = window.analytics
        observed = ScoredWindow(
            speaker=window.role,
            start_ms=window.start_ms,
            end_ms=window.end_ms,
            new_from_ms=window.new_from_sample * 1000 // window.sample_rate,
            scores=scores,
            degraded=degraded,
            prosody=analytics.prosody if heard else None,
            conversation=analytics.conversation,
            speech_ms=analytics.speech_ms,
        )
        for match in self._rules().evaluate_window(self._state, observed):
            self._raise(match, window.arrival)

    def on_ticks(self, ticks: list[ConversationSnapshot], arrival: float) -> None:
        """The conversation rules on each tick of the turn-taking clock (`arrival`: when the audio that completed them
        came in)."""
        if not ticks:
            return
        engine = self._rules()
        if not engine.needs_ticks:
            return
        for snapshot in ticks:
            for match in engine.evaluate_tick(self._state, snapshot):
                self._raise(match, arrival)

    def _raise(self, match: RuleMatch, arrival: float) -> None:
        alert = build_alert(match, self._config, self._model_name, (time.monotonic() - arrival) * 1000)
        self.alerts.append(alert)
        self.count += 1
        metrics.alert_raised(alert.rule_id, alert.severity.label)
        self._publisher.publish_alert(alert, self._config, arrival)
        self._emit(alert)
