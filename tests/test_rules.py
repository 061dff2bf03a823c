"""Rule parsing and the rule engine's timing semantics (for, pauses, cooldown, speaker filter)."""

import pytest

from service.config import DEFAULT_RULES_PATH
from service.domain import Role, Severity
from service.errors import RulesError
from service.rules import RuleEngine, ScoredWindow, load_rules, parse_rules

LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")

RULES = """
rules:
  - id: angry
    speaker: customer
    all:
      - emotion: [angry, fearful]
        min: 0.6
        for: 2s
        max_pause: 1s
    severity: high
    notify: [agent, supervisor]
    cooldown: 10s
    message: upset
"""


def window(end_ms, new_ms=500, angry=0.9, fearful=0.0, speaker=Role.CUSTOMER, length=3000):
    scores = {label: 0.0 for label in LABELS}
    scores["angry"], scores["fearful"] = angry, fearful
    scores["neutral"] = max(0.0, 1 - angry - fearful)
    return ScoredWindow(speaker, max(0, end_ms - length), end_ms, end_ms - new_ms, scores, -20.0, False)


def feed(engine, state, windows):
    fired = []
    for w in windows:
        fired.extend(engine.evaluate(state, w))
    return fired


def test_default_rules_file_is_valid_and_watches_the_customer():
    """The shipped rules load and contain the sustained angry/fearful customer rule."""
    rules = load_rules(DEFAULT_RULES_PATH)
    rules.check_labels(LABELS)
    rule = rules.rules[0]
    assert rule.speaker is Role.CUSTOMER and rule.severity is Severity.HIGH
    assert set(rule.conditions[0].labels) == {"angry", "fearful"}
    assert rule.conditions[0].for_ms == 5000 and set(rule.notify) == {"agent", "supervisor"}


def test_fires_once_the_score_held_for_the_duration():
    """The rule fires on the first window at which 2 s of speech held the threshold, not before."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state(Role.CUSTOMER)
    assert feed(engine, state, [window(t) for t in (500, 1000, 1500)]) == []
    fired = engine.evaluate(state, window(2000))
    assert len(fired) == 1
    match = fired[0]
    assert match.start_ms == 0 and match.fired_ms == 2000
    assert match.conditions[0].held_ms == 2000 and len(match.conditions[0].points) == 4
    assert "angry+fearful 0.90 avg over 2.0 s" in match.reason


def test_labels_are_summed():
    """Scores of the listed labels are added: 0.35 angry + 0.35 fearful passes a 0.6 threshold."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state(Role.CUSTOMER)
    fired = feed(engine, state, [window(t, angry=0.35, fearful=0.35) for t in range(500, 2001, 500)])
    assert len(fired) == 1


def test_a_window_below_threshold_restarts_the_count():
    """One calm window in the middle means the full duration must hold again."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state(Role.CUSTOMER)
    seq = [window(500), window(1000), window(1500), window(2000, angry=0.1)]
    seq += [window(t) for t in (2500, 3000, 3500)]
    assert feed(engine, state, seq) == []
    assert len(engine.evaluate(state, window(4000))) == 1


def test_pauses_shorter_than_max_pause_do_not_reset_but_longer_ones_do():
    """Speech time accumulates across short pauses; a pause over max_pause restarts it."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state(Role.CUSTOMER)
    # 1 s of speech, 0.8 s pause, then 1 s more: fires
    seq = [window(500), window(1000), window(2300, new_ms=500), window(2800)]
    assert len(feed(engine, state, seq)) == 1
    state = engine.new_state(Role.CUSTOMER)
    # 1 s of speech, 1.5 s pause, then 1 s more: does not fire
    seq = [window(500), window(1000), window(3000, new_ms=500), window(3500)]
    assert feed(engine, state, seq) == []


def test_cooldown_suppresses_repeats_then_allows_them():
    """After firing the rule stays quiet for its cooldown (call time), then fires again if still true."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state(Role.CUSTOMER)
    fired = feed(engine, state, [window(t) for t in range(500, 20001, 500)])
    assert [m.fired_ms for m in fired] == [2000, 12000]


def test_speaker_filter():
    """A customer rule ignores the agent's windows."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state(Role.AGENT)
    assert feed(engine, state, [window(t, speaker=Role.AGENT) for t in range(500, 5001, 500)]) == []


@pytest.mark.parametrize(
    "text,message",
    [
        ("rules: 3", "top-level 'rules:' list"),
        ("rules:\n  - id: x\n    all: [{emotion: [angry], min: 0.5}]\n", r"all\[0\].for: required"),
        ("rules:\n  - id: x\n    all: [{emotion: [angry], min: 1.5, for: 1s}]\n", r"min: expected a number between 0 and 1"),
        ("rules:\n  - id: x\n    all: [{emotion: [angry], min: 0.5, for: soon}]\n", "expected a duration"),
        ("rules:\n  - id: x\n    severity: urgent\n    all: [{emotion: [angry], min: 0.5, for: 1s}]\n", "severity"),
        ("rules:\n  - id: x\n    notify: [sms]\n    all: [{emotion: [angry], min: 0.5, for: 1s}]\n", "notify"),
        ("rules:\n  - id: x\n    speaker: caller\n    all: [{emotion: [angry], min: 0.5, for: 1s}]\n", "speaker"),
        ("rules:\n  - id: x\n    colour: red\n    all: [{emotion: [angry], min: 0.5, for: 1s}]\n", "unknown key 'colour'"),
        ("rules:\n  - id: x\n    all: [{silence: 5s}]\n", "condition 'silence' is not supported"),
        ("rules:\n  - {id: x, all: [{emotion: [angry], min: 0.5, for: 1s}]}\n  - {id: x, all: [{emotion: [sad], min: 0.5, for: 1s}]}\n", "used twice"),
        ("rules: [", "not valid YAML"),
    ],
)
def test_invalid_rules_name_the_rule_and_field(text, message):
    """Each kind of mistake is reported with the rule and the field."""
    with pytest.raises(RulesError, match=message):
        parse_rules(text, source="r.yaml")


def test_unknown_label_is_caught_against_the_model():
    """A label the model does not produce is rejected before any call is served."""
    rules = parse_rules("rules:\n  - id: x\n    all: [{emotion: [furious], min: 0.5, for: 1s}]\n", "r.yaml")
    with pytest.raises(RulesError, match="'furious' is not produced by the model"):
        rules.check_labels(LABELS)
