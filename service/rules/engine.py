"""Rule evaluation: a deterministic function of (rule state, observation) -> (new state, matches).

Time is call time (audio offsets), never wall time, so a replayed call fires the same alerts at the
same offsets. Observations are a speaker's analysis windows (emotion scores when that speaker is
scored, prosody, and the conversation as it stood when the window was cut) and conversation ticks
(every 100 ms of call time). Rules whose conditions all look at the conversation run on ticks, once
per call; the others run on each window of the speaker they watch.

Timing semantics:
- `for`: a speaker condition accumulates the new speech of every window in which it holds; a window
  in which it fails, or a pause longer than its `max_pause`, restarts the count.
- One alert per episode: after firing, a rule is active and does not fire again until its
  condition, evaluated with the `clear` levels (hysteresis), stops holding.
- `cooldown`: no new alert of the rule (for the same speaker) sooner than this after the last one.
- `escalate`: the n-th alert within a period gets the escalation's severity and recipients.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from service.domain import Role, Severity
from service.rules.model import (
    AllOf,
    AnyOf,
    Condition,
    EmotionCondition,
    HoldCondition,
    InterruptionsCondition,
    Leaf,
    MeasureCondition,
    NotOf,
    OvertalkCondition,
    Rule,
    RuleSet,
    SilenceCondition,
    SPEAKER_MEASURES,
)

if TYPE_CHECKING:
    from service.analytics.conversation import ConversationSnapshot
    from service.analytics.prosody import ProsodyFigures

EVIDENCE_POINTS = 64
FIRED_HISTORY = 64


@dataclass(frozen=True)
class ScoredWindow:
    """One speaker's analysis window as the rules see it."""

    speaker: Role
    start_ms: int
    end_ms: int
    new_from_ms: int
    """Start of the speech this window adds; [new_from_ms, end_ms) has not been counted before."""
    scores: dict[str, float] | None
    """Emotion scores by label; None when the speaker is not scored."""
    degraded: bool = False
    """Windows of this speaker were dropped before this one (the scores may have missed something)."""
    prosody: ProsodyFigures | None = None
    """Loudness, pitch and speech rate of the window."""
    conversation: ConversationSnapshot | None = None
    """Dead air, over-talk and interruptions as they stood when the window was cut."""
    speech_ms: int = 0
    """The speaker's speech so far in the call (for baseline warm-up)."""

    @property
    def top_label(self) -> str | None:
        return max(self.scores, key=self.scores.__getitem__) if self.scores else None


@dataclass(frozen=True)
class EvidencePoint:
    """The value of one condition in one window while it held."""

    start_ms: int
    end_ms: int
    value: float


@dataclass(frozen=True)
class ConditionEvidence:
    """Why one condition held when its rule fired."""

    kind: str
    """emotion, measure, silence, overtalk or interruptions."""
    name: str
    """The labels (joined with +), the measure's name, or the conversation condition."""
    op: str
    """gt, ge, lt or le."""
    threshold: float
    for_ms: int
    held_ms: int
    """How long it held (speech time for speaker conditions, call time for the conversation)."""
    value: float
    """Mean over the held windows (speaker conditions) or the current value (conversation)."""
    text: str
    """The readable part of the alert's reason."""
    points: tuple[EvidencePoint, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleMatch:
    """A rule fired."""

    rule: Rule
    speaker: Role | None
    """The watched speaker; None for a conversation rule watching no one in particular."""
    start_ms: int
    fired_ms: int
    conditions: tuple[ConditionEvidence, ...]
    series: tuple[dict[str, Any], ...]
    """The speaker's windows over the rule's span: scores of the rule's labels and prosody."""
    degraded: bool
    severity: Severity
    notify: tuple[str, ...]
    occurrence: int
    """How many times the rule fired in this call for this speaker, this one included."""
    escalated: bool

    @property
    def reason(self) -> str:
        return "; ".join(c.text for c in self.conditions)


@dataclass
class _LeafRun:
    held_ms: int = 0
    start_ms: int | None = None
    last_end_ms: int | None = None
    points: deque = field(default_factory=lambda: deque(maxlen=EVIDENCE_POINTS))
    value: float | None = None
    holds: bool = False
    """Holds at the set level (and for its duration)."""
    still: bool = False
    """Holds at the clear level (keeps an active rule active)."""
    details: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        self.held_ms = 0
        self.start_ms = None
        self.points.clear()


@dataclass
class _RuleState:
    rule: Rule
    runs: list[_LeafRun]
    active: bool = False
    last_fired_ms: int | None = None
    fired_count: int = 0
    fired_at: deque = field(default_factory=lambda: deque(maxlen=FIRED_HISTORY))


@dataclass
class _SubjectState:
    rules: dict[str, _RuleState] = field(default_factory=dict)
    recent: deque = field(default_factory=lambda: deque(maxlen=EVIDENCE_POINTS))

    def rule_state(self, rule: Rule) -> _RuleState:
        state = self.rules.get(rule.id)
        if state is None or state.rule != rule:  # a reloaded rule that changed starts fresh
            state = self.rules[rule.id] = _RuleState(rule, [_LeafRun() for _ in rule.leaves])
        return state


@dataclass
class CallRuleState:
    """Rule state of one call: per watched speaker, and for the conversation as a whole (key None)."""

    subjects: dict[Role | None, _SubjectState] = field(default_factory=dict)

    def subject(self, role: Role | None) -> _SubjectState:
        state = self.subjects.get(role)
        if state is None:
            state = self.subjects[role] = _SubjectState()
        return state

    def active_rules(self) -> dict[str, list[str]]:
        """Rules currently active (fired and not cleared), by speaker ('call' for conversation rules)."""
        return {
            (role.value if role else "call"): sorted(rid for rid, s in subject.rules.items() if s.active)
            for role, subject in self.subjects.items()
        }


class RuleEngine:
    """Evaluates a RuleSet over a call's observations."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._window_rules = tuple(r for r in rules.rules if not r.conversation_only)
        self._tick_rules = tuple(r for r in rules.rules if r.conversation_only)
        self._positive = {r.id: tuple(_positive_leaves(r.condition)) for r in rules.rules}

    @property
    def needs_ticks(self) -> bool:
        """Some rule watches the conversation's clock (dead air, over-talk, interruptions, holds)."""
        return bool(self._tick_rules)

    def new_state(self) -> CallRuleState:
        return CallRuleState()

    def evaluate_window(self, state: CallRuleState, window: ScoredWindow) -> list[RuleMatch]:
        """Advance the speaker's rules by one of its windows; returns the rules that fired on it."""
        subject = state.subject(window.speaker)
        subject.recent.append(window)
        matches = []
        for rule in self._window_rules:
            if not rule.applies_to(window.speaker):
                continue
            rule_state = subject.rule_state(rule)
            for leaf, run in zip(rule.leaves, rule_state.runs):
                if isinstance(leaf, (EmotionCondition, MeasureCondition)):
                    _observe_speaker(leaf, run, window)
                else:
                    _observe_conversation(leaf, run, window.conversation)
            match = self._decide(rule, rule_state, window.end_ms, window.speaker, subject, window.degraded)
            if match is not None:
                matches.append(match)
        return matches

    def evaluate_tick(self, state: CallRuleState, snapshot: ConversationSnapshot) -> list[RuleMatch]:
        """Advance the conversation rules to `snapshot.now_ms`; returns the rules that fired."""
        subject = state.subject(None)
        matches = []
        for rule in self._tick_rules:
            rule_state = subject.rule_state(rule)
            for leaf, run in zip(rule.leaves, rule_state.runs):
                _observe_conversation(leaf, run, snapshot)
            match = self._decide(rule, rule_state, snapshot.now_ms, rule.speaker, subject, False)
            if match is not None:
                matches.append(match)
        return matches

    def _decide(self, rule: Rule, state: _RuleState, now_ms: int, speaker: Role | None, subject: _SubjectState,
                degraded: bool) -> RuleMatch | None:
        if state.active:
            if _holds(rule.condition, iter([run.still for run in state.runs])):
                return None  # the same episode goes on: no second alert
            state.active = False
        if not _holds(rule.condition, iter([run.holds for run in state.runs])):
            return None
        if state.last_fired_ms is not None and now_ms - state.last_fired_ms < rule.cooldown_ms:
            return None
        match = _match(rule, state, now_ms, speaker, subject, degraded, self._positive[rule.id])
        state.active = True
        state.last_fired_ms = now_ms
        state.fired_count += 1
        state.fired_at.append(now_ms)
        for run in state.runs:
            run.reset()
        return match


def _holds(node: Condition, truths: Iterator[bool]) -> bool:
    """Evaluate the tree from its leaves' truths (depth-first order); consumes every leaf."""
    if isinstance(node, AllOf):
        return all([_holds(child, truths) for child in node.children])
    if isinstance(node, AnyOf):
        return any([_holds(child, truths) for child in node.children])
    if isinstance(node, NotOf):
        return not _holds(node.child, truths)
    return next(truths)


def _positive_leaves(node: Condition, negated: bool = False) -> Iterator[bool]:
    """Per leaf (depth first): True when it is not under a `not` (it is evidence when it holds)."""
    if isinstance(node, (AllOf, AnyOf)):
        for child in node.children:
            yield from _positive_leaves(child, negated)
    elif isinstance(node, NotOf):
        yield from _positive_leaves(node.child, not negated)
    else:
        yield not negated


def _compare(value: float, op: str, threshold: float) -> bool:
    if op == "gt":
        return value > threshold
    if op == "ge":
        return value >= threshold
    if op == "lt":
        return value < threshold
    return value <= threshold


def _observe_speaker(leaf: EmotionCondition | MeasureCondition, run: _LeafRun, window: ScoredWindow) -> None:
    if isinstance(leaf, EmotionCondition):
        value = None if window.scores is None else sum(window.scores.get(label, 0.0) for label in leaf.labels)
        op, threshold, clear = "ge", leaf.min, leaf.min if leaf.clear is None else leaf.clear
    else:
        value = None
        if window.prosody is not None and window.speech_ms >= leaf.warmup_ms:
            value = getattr(window.prosody, leaf.measure)
        op, threshold, clear = leaf.op, leaf.threshold, leaf.threshold if leaf.clear is None else leaf.clear
    if run.start_ms is not None and run.last_end_ms is not None and window.new_from_ms - run.last_end_ms > leaf.max_pause_ms:
        run.reset()
    ok = value is not None and _compare(value, op, threshold)
    if ok:
        if run.start_ms is None:
            run.start_ms = window.new_from_ms
        run.held_ms += max(0, window.end_ms - window.new_from_ms)
        run.points.append(EvidencePoint(window.start_ms, window.end_ms, round(float(value), 4)))
    else:
        run.reset()
    run.last_end_ms = window.end_ms
    run.value = value
    run.holds = ok and run.held_ms >= leaf.for_ms
    run.still = value is not None and _compare(value, op, clear)


def _stretch(run: _LeafRun, ms: int, min_ms: int, now: int, key: str = "", who: Role | None = None,
             wanted: Role | None = None) -> int:
    """A stretch running at `now` for `ms` (dead air, over-talk, a hold) as the run of a condition asking for `min_ms`
    of it: it holds from min_ms on and lasts while it runs. `who` is whose stretch it is (reported as details[key]);
    with `wanted` set, another's stretch counts as none. Returns the value observed."""
    value = ms if wanted is None or who is wanted else 0
    run.holds, run.still = value >= min_ms, value > 0
    run.start_ms = now - value
    if key and value and who is not None:
        run.details = {key: who.value}
    return value


def _observe_conversation(leaf: Leaf, run: _LeafRun, snapshot: ConversationSnapshot | None) -> None:
    run.details = {}
    if snapshot is None:
        run.value, run.holds, run.still, run.start_ms = None, False, False, None
        return
    now = snapshot.now_ms
    if isinstance(leaf, SilenceCondition):
        value = _stretch(run, snapshot.dead_air_ms, leaf.min_ms, now)
    elif isinstance(leaf, OvertalkCondition):
        value = _stretch(run, snapshot.overtalk_ms, leaf.min_ms, now, "by", snapshot.overtalk_by, leaf.by)
    elif isinstance(leaf, HoldCondition):
        value = _stretch(run, snapshot.hold_ms, leaf.min_ms, now, "channel", snapshot.hold_channel, leaf.channel)
    elif isinstance(leaf, InterruptionsCondition):
        if leaf.by is None:
            events = tuple(e for e in snapshot.recent_interruptions if e.at_ms > now - leaf.within_ms)
        else:
            events = snapshot.interruptions_by(leaf.by, leaf.within_ms)
        value = len(events)
        run.holds = run.still = value >= leaf.min_count
        run.start_ms = events[0].at_ms if events else None
        run.details = {"events": [{"at_ms": e.at_ms, "by": e.by.value, "of": e.of.value, "overlap_ms": e.overlap_ms} for e in events[-EVIDENCE_POINTS:]]}
    else:  # a speaker condition cannot be evaluated on the conversation's clock
        value, run.holds, run.still = None, False, False
    run.value = None if value is None else float(value)
    run.held_ms = 0 if value is None or isinstance(leaf, InterruptionsCondition) else int(value)


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s"


def _period(ms: int) -> str:
    return f"{ms / 60000:g} min" if ms % 60000 == 0 else f"{ms / 1000:g} s"


def _evidence(leaf: Leaf, run: _LeafRun) -> ConditionEvidence:
    points = tuple(run.points)
    if isinstance(leaf, EmotionCondition):
        mean = sum(p.value for p in points) / len(points) if points else (run.value or 0.0)
        name = "+".join(leaf.labels)
        return ConditionEvidence("emotion", name, "ge", leaf.min, leaf.for_ms, run.held_ms, round(mean, 4),
                                 f"{name} {mean:.2f} avg over {_seconds(run.held_ms)}", points)
    if isinstance(leaf, MeasureCondition):
        mean = sum(p.value for p in points) / len(points) if points else (run.value or 0.0)
        text = {
            "speech_rate_spm": f"{mean:.0f} syllables/min",
            "speech_rate_cpm": f"{mean:.0f} characters/min",
            "speech_rate_over_baseline": f"speaking {mean:.2f}x their usual rate",
            "loudness_over_baseline_db": f"{mean:+.1f} dB over the speaker's baseline",
            "loudness_dbfs": f"loudness {mean:.1f} dBFS",
            "pitch_hz": f"pitch {mean:.0f} Hz",
            "pitch_range_st": f"pitch range {mean:.1f} semitones",
        }.get(leaf.measure, f"{leaf.measure} {mean:.1f} {SPEAKER_MEASURES[leaf.measure][0]}")
        if leaf.for_ms:
            text += f" over {_seconds(run.held_ms)}"
        return ConditionEvidence("measure", leaf.measure, leaf.op, leaf.threshold, leaf.for_ms, run.held_ms,
                                 round(mean, 2), text, points)
    value = run.value or 0.0
    if isinstance(leaf, SilenceCondition):
        return ConditionEvidence("silence", "silence", "ge", leaf.min_ms, 0, int(value), value,
                                 f"dead air {_seconds(value)}", details={"start_ms": run.start_ms})
    if isinstance(leaf, OvertalkCondition):
        by = run.details.get("by")
        other = {"agent": "customer", "customer": "agent"}.get(by or "", "")
        text = f"over-talk {_seconds(value)}" + (f" ({by} talking over the {other})" if by else "")
        return ConditionEvidence("overtalk", "overtalk", "ge", leaf.min_ms, 0, int(value), value, text,
                                 details={"start_ms": run.start_ms, **run.details})
    if isinstance(leaf, HoldCondition):
        channel = run.details.get("channel")
        text = f"on hold {_seconds(value)}" + (f" (music or tones on the {channel}'s channel)" if channel else "")
        return ConditionEvidence("hold", "hold", "ge", leaf.min_ms, 0, int(value), value, text,
                                 details={"start_ms": run.start_ms, **run.details})
    assert isinstance(leaf, InterruptionsCondition)
    who = leaf.by.value if leaf.by else "speakers"
    whom = {Role.AGENT: "the customer", Role.CUSTOMER: "the agent"}.get(leaf.by, "each other")
    text = f"{who} interrupted {whom} {int(value)} times in {_period(leaf.within_ms)}"
    return ConditionEvidence("interruptions", "interruptions", "ge", leaf.min_count, 0, 0, value, text,
                             details={"within_ms": leaf.within_ms, **run.details})


def _series_point(window: ScoredWindow, labels: tuple[str, ...]) -> dict[str, Any]:
    point: dict[str, Any] = {"start_ms": window.start_ms, "end_ms": window.end_ms}
    if window.scores:
        top = window.top_label
        point["top_label"] = top
        point["top_score"] = round(window.scores[top], 4)
        point["scores"] = {label: round(window.scores.get(label, 0.0), 4) for label in labels}
    if window.prosody is not None:
        point.update(window.prosody.as_dict())
    return point


def _match(rule: Rule, state: _RuleState, now_ms: int, speaker: Role | None, subject: _SubjectState,
           degraded: bool, positive: tuple[bool, ...]) -> RuleMatch:
    evidence = [_evidence(leaf, run) for leaf, run, pos in zip(rule.leaves, state.runs, positive) if pos and run.holds]
    starts = [run.start_ms for run, pos in zip(state.runs, positive) if pos and run.holds and run.start_ms is not None]
    start_ms = min(starts) if starts else now_ms
    labels = tuple(dict.fromkeys(label for leaf in rule.leaves if isinstance(leaf, EmotionCondition) for label in leaf.labels))
    series = ()
    if speaker is not None and not rule.conversation_only:
        series = tuple(_series_point(w, labels) for w in subject.recent if w.speaker is speaker and w.end_ms > start_ms)
        degraded = degraded or any(w.degraded for w in subject.recent if w.speaker is speaker and w.end_ms > start_ms)
    escalation = rule.escalation
    within = 1 + sum(1 for t in state.fired_at if now_ms - t <= escalation.within_ms) if escalation else 0
    escalated = escalation is not None and within >= escalation.after
    severity, notify = rule.severity, rule.notify
    if escalation is not None and escalated:
        severity = max(rule.severity, escalation.severity)
        notify = tuple(dict.fromkeys((*rule.notify, *escalation.notify)))
    return RuleMatch(rule, speaker, start_ms, now_ms, tuple(evidence), series, degraded, severity, notify,
                     state.fired_count + 1, escalated)
