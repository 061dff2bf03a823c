"""Rule evaluation: a deterministic function of (rule state, scored window) -> (new state, matches).

Time is call time (audio offsets), never wall time, so a replayed call fires the same alerts at the
same offsets. A condition accumulates the speaker's new speech of every window in which it holds;
a window in which it fails, or a pause longer than its max_pause, restarts it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from service.domain import Role
from service.rules.model import EmotionCondition, Rule, RuleSet

EVIDENCE_POINTS = 64


@dataclass(frozen=True)
class ScoredWindow:
    """One speaker's scored window as the rules see it."""

    speaker: Role
    start_ms: int
    end_ms: int
    new_from_ms: int
    """Start of the speech this window adds; [new_from_ms, end_ms) has not been counted before."""
    scores: dict[str, float]
    loudness_dbfs: float
    degraded: bool


@dataclass(frozen=True)
class EvidencePoint:
    start_ms: int
    end_ms: int
    score: float
    """Summed score of the condition's labels."""
    top_label: str
    loudness_dbfs: float
    degraded: bool


@dataclass
class _Run:
    speech_ms: int = 0
    start_ms: int | None = None
    last_end_ms: int = 0
    points: deque = field(default_factory=lambda: deque(maxlen=EVIDENCE_POINTS))

    def reset(self) -> None:
        self.speech_ms = 0
        self.start_ms = None
        self.points.clear()


@dataclass
class _RuleState:
    runs: list[_Run]
    last_fired_ms: int | None = None


@dataclass
class ChannelRuleState:
    """Per-speaker state of every rule, keyed by rule id (new rules start fresh)."""

    speaker: Role
    rules: dict[str, _RuleState] = field(default_factory=dict)


@dataclass(frozen=True)
class ConditionEvidence:
    labels: tuple[str, ...]
    min: float
    for_ms: int
    held_ms: int
    mean_score: float
    points: tuple[EvidencePoint, ...]


@dataclass(frozen=True)
class RuleMatch:
    """A rule fired on a window."""

    rule: Rule
    speaker: Role
    start_ms: int
    fired_ms: int
    conditions: tuple[ConditionEvidence, ...]
    degraded: bool

    @property
    def reason(self) -> str:
        parts = [
            f"{'+'.join(c.labels)} {c.mean_score:.2f} avg over {c.held_ms / 1000:.1f} s (min {c.min:.2f} for {c.for_ms / 1000:.1f} s)"
            for c in self.conditions
        ]
        return "; ".join(parts)


class RuleEngine:
    """Evaluates a RuleSet over scored windows."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def new_state(self, speaker: Role) -> ChannelRuleState:
        return ChannelRuleState(speaker)

    def evaluate(self, state: ChannelRuleState, window: ScoredWindow) -> list[RuleMatch]:
        """Advance `state` by one window of its speaker; returns the rules that fired on it."""
        matches: list[RuleMatch] = []
        top_label = max(window.scores, key=window.scores.__getitem__)
        for rule in self.rules.rules:
            if not rule.applies_to(window.speaker):
                continue
            rule_state = state.rules.get(rule.id)
            if rule_state is None or len(rule_state.runs) != len(rule.conditions):
                rule_state = state.rules[rule.id] = _RuleState([_Run() for _ in rule.conditions])
            for cond, run in zip(rule.conditions, rule_state.runs):
                _advance(cond, run, window, top_label)
            held = all(run.speech_ms >= cond.for_ms for cond, run in zip(rule.conditions, rule_state.runs))
            cooling = rule_state.last_fired_ms is not None and window.end_ms - rule_state.last_fired_ms < rule.cooldown_ms
            if held and not cooling:
                matches.append(_match(rule, window, rule_state))
                rule_state.last_fired_ms = window.end_ms
                for run in rule_state.runs:
                    run.reset()
        return matches


def _advance(cond: EmotionCondition, run: _Run, window: ScoredWindow, top_label: str) -> None:
    score = sum(window.scores.get(label, 0.0) for label in cond.labels)
    if run.start_ms is not None and window.new_from_ms - run.last_end_ms > cond.max_pause_ms:
        run.reset()
    if score < cond.min:
        run.reset()
        run.last_end_ms = window.end_ms
        return
    if run.start_ms is None:
        run.start_ms = window.new_from_ms
    run.speech_ms += max(0, window.end_ms - window.new_from_ms)
    run.last_end_ms = window.end_ms
    run.points.append(
        EvidencePoint(window.start_ms, window.end_ms, round(score, 4), top_label, round(window.loudness_dbfs, 1), window.degraded)
    )


def _match(rule: Rule, window: ScoredWindow, state: _RuleState) -> RuleMatch:
    evidence = []
    for cond, run in zip(rule.conditions, state.runs):
        points = tuple(run.points)
        mean = sum(p.score for p in points) / len(points) if points else 0.0
        evidence.append(ConditionEvidence(cond.labels, cond.min, cond.for_ms, run.speech_ms, round(mean, 4), points))
    start = min(run.start_ms for run in state.runs if run.start_ms is not None)
    degraded = any(p.degraded for c in evidence for p in c.points)
    return RuleMatch(rule, window.speaker, start, window.end_ms, tuple(evidence), degraded)
