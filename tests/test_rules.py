"""The rule language (parsing, line-precise errors) and the engine's timing semantics, on scripted observations."""

import pytest

from service.analytics.conversation import ConversationSnapshot, Interruption
from service.analytics.prosody import ProsodyFigures
from service.config import DEFAULT_RULES_PATH
from service.domain import Role, Severity
from service.errors import RulesError
from service.rules import RuleEngine, ScoredWindow, load_rules, parse_rules, rule_errors
from service.rules.model import AnyOf, EmotionCondition, MeasureCondition, NotOf, SilenceCondition

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


def figures(loudness=-20.0, over=None, pitch=150.0, rate=200.0, relative=None):
    return ProsodyFigures(loudness_dbfs=loudness, loudness_over_baseline_db=over, pitch_hz=pitch, pitch_range_st=4.0,
                          speech_rate_spm=rate, voiced_ms=2500, nuclei=10, speech_rate_over_baseline=relative)


def snap(now_ms, dead_air=0, overtalk=0, by=None, interruptions=()):
    return ConversationSnapshot(now_ms=now_ms, dead_air_ms=dead_air, overtalk_ms=overtalk, overtalk_by=by,
                                recent_interruptions=tuple(interruptions))


def window(end_ms, new_ms=500, angry=0.9, fearful=0.0, speaker=Role.CUSTOMER, length=3000, prosody=None,
           conversation=None, speech_ms=60000, scored=True):
    scores = None
    if scored:
        scores = {label: 0.0 for label in LABELS}
        scores["angry"], scores["fearful"] = angry, fearful
        scores["neutral"] = max(0.0, 1 - angry - fearful)
    return ScoredWindow(speaker, max(0, end_ms - length), end_ms, end_ms - new_ms, scores, False,
                        prosody or figures(), conversation or snap(end_ms), speech_ms)


def feed(engine, state, windows):
    fired = []
    for w in windows:
        fired.extend(engine.evaluate_window(state, w))
    return fired


def ticks(engine, state, snapshots):
    fired = []
    for s in snapshots:
        fired.extend(engine.evaluate_tick(state, s))
    return fired


# -- the shipped rules -----------------------------------------------------------------------


def test_default_rules_file_has_the_four_documented_rules():
    """The shipped rules load, know the model's labels, and are the four the README documents."""
    rules = load_rules(DEFAULT_RULES_PATH)
    rules.check_labels(LABELS)
    by_id = {r.id: r for r in rules.rules}
    assert set(by_id) == {"customer-upset-fast", "dead-air", "customer-raised-voice", "agent-talks-over-customer"}
    upset = by_id["customer-upset-fast"]
    assert upset.speaker is Role.CUSTOMER and set(upset.notify) == {"agent", "supervisor"}
    emotion, rate = upset.leaves
    assert set(emotion.labels) == {"angry", "fearful"} and emotion.for_ms == 5000
    assert rate.measure == "speech_rate_over_baseline" and rate.op == "gt" and rate.threshold == 1.4 and rate.clear == 1.2
    assert rate.warmup_ms == 10000
    assert by_id["dead-air"].leaves[0].min_ms == 5000 and by_id["dead-air"].notify == ("agent",)
    loud = by_id["customer-raised-voice"].leaves[0]
    assert loud.measure == "loudness_over_baseline_db" and loud.threshold == 10 and loud.for_ms == 3000
    talk_over = by_id["agent-talks-over-customer"]
    assert talk_over.notify == ("supervisor",) and talk_over.leaves[0].by is Role.AGENT
    assert talk_over.conversation_only and by_id["dead-air"].conversation_only and not upset.conversation_only


def test_the_demo_rules_are_the_shipped_rules_and_one_more():
    """make demo's rules file holds every shipped rule unchanged, plus customer-angry-sustained."""
    from pathlib import Path

    demo = load_rules(str(Path(DEFAULT_RULES_PATH).resolve().parent.parent.parent / "clients" / "samples" / "demo_rules.yaml"))
    shipped = load_rules(DEFAULT_RULES_PATH)
    by_id = {r.id: r for r in demo.rules}
    assert set(by_id) == {r.id for r in shipped.rules} | {"customer-angry-sustained"}
    assert all(by_id[r.id] == r for r in shipped.rules)


def test_default_upset_rule_needs_both_emotion_and_speech_faster_than_the_speakers_own():
    """Angry customer speech fires the shipped rule only while the customer speaks more than 1.4 times their own usual rate
    (whatever the absolute count), with a readable reason; not before 10 s of their speech."""
    engine = RuleEngine(load_rules(DEFAULT_RULES_PATH))
    state = engine.new_state()
    usual = [window(t, prosody=figures(rate=260.0, relative=1.05)) for t in range(500, 8001, 500)]
    assert [m.rule.id for m in feed(engine, state, usual)] == []
    state = engine.new_state()
    early = [window(t, prosody=figures(rate=212.0, relative=1.5), speech_ms=5000) for t in range(500, 8001, 500)]
    assert [m.rule.id for m in feed(engine, state, early)] == []
    state = engine.new_state()
    fast = [window(t, angry=0.5, fearful=0.24, prosody=figures(rate=150.0, relative=1.42)) for t in range(500, 8001, 500)]
    fired = feed(engine, state, fast)
    assert [m.rule.id for m in fired] == ["customer-upset-fast"]
    assert fired[0].fired_ms == 5000
    assert fired[0].reason == "angry+fearful 0.74 avg over 5.0 s; speaking 1.42x their usual rate"


# -- parsing -----------------------------------------------------------------------------------


def test_combinators_parse_into_a_tree():
    """all/any/not nest, leaves keep their order, and a rule of one condition needs no all."""
    text = """
rules:
  - id: mixed
    any:
      - all:
          - emotion: [angry]
            min: 0.5
            for: 1s
          - not: {loudness_dbfs: {lt: -40}}
      - pitch_hz: {gt: 300, for: 2s}
  - id: quiet
    silence: {ge: 4s}
"""
    rules = parse_rules(text)
    mixed, quiet = rules.rules
    assert isinstance(mixed.condition, AnyOf)
    assert [type(leaf) for leaf in mixed.leaves] == [EmotionCondition, MeasureCondition, MeasureCondition]
    assert isinstance(mixed.condition.children[0].children[1], NotOf)
    assert isinstance(quiet.condition, SilenceCondition) and quiet.conversation_only


@pytest.mark.parametrize(
    "text,message",
    [
        ("rules: 3", "r.yaml:1:1: rules: expected a top-level 'rules:' list"),
        ("rules:\n  - id: x\n    all: [{emotion: [angry], min: 0.5}]\n", r"r.yaml:3:11: rule 'x'.all\[0\].for: required"),
        ("rules:\n  - id: x\n    all:\n      - emotion: [angry]\n        min: 1.5\n        for: 1s\n",
         "r.yaml:5:14: rule 'x'.all\\[0\\].min: expected a number between 0 and 1, got 1.5"),
        ("rules:\n  - id: x\n    all: [{emotion: [angry], min: 0.5, for: soon}]\n", r"r.yaml:3:45: .*expected a duration"),
        ("rules:\n  - id: x\n    severity: urgent\n    silence: {ge: 5s}\n", r"r.yaml:3:15: rule 'x'.severity"),
        ("rules:\n  - id: x\n    notify: [sms]\n    silence: {ge: 5s}\n", r"r.yaml:3:13: rule 'x'.notify"),
        ("rules:\n  - id: x\n    speaker: caller\n    silence: {ge: 5s}\n", r"r.yaml:3:14: rule 'x'.speaker"),
        ("rules:\n  - id: x\n    silence: {ge: 5s}\n    colour: red\n", r"r.yaml:4:5: rule 'x'.colour: unknown key 'colour'"),
        ("rules:\n  - id: x\n    silence: {gt: 5s}\n", r"r.yaml:3:15: rule 'x'.silence.gt: unknown key 'gt'"),
        ("rules:\n  - id: x\n    silence: {ge: 5s, for: 2s}\n", r"rule 'x'.silence.for: silence is measured in time"),
        ("rules:\n  - id: x\n    speech_rate_spm: {gt: 180, lt: 300}\n", r"r.yaml:3:22: .*exactly one comparison"),
        ("rules:\n  - id: x\n    speech_rate_spm: {gt: fast}\n", r"r.yaml:3:27: .*gt: expected a number, got 'fast'"),
        ("rules:\n  - id: x\n    loudness_dbfs: {gt: -20, clear: -10}\n", r"clear level must be on the far side"),
        ("rules:\n  - id: x\n    shouting: {gt: 1}\n", r"r.yaml:3:5: rule 'x'.shouting: unknown key 'shouting'"),
        ("rules:\n  - id: x\n    any: []\n", r"r.yaml:3:10: rule 'x'.any: expected a non-empty list"),
        ("rules:\n  - id: x\n    interruptions: {ge: 3}\n", r"rule 'x'.interruptions.within: required"),
        ("rules:\n  - id: x\n    escalate: {after: 1, within: 5m}\n    silence: {ge: 5s}\n", r"r.yaml:3:23: .*escalate.after"),
        ("rules:\n  - {id: x, silence: {ge: 5s}}\n  - {id: x, silence: {ge: 6s}}\n", r"r.yaml:3:10: rule 'x': id is used twice \(first at line 2\)"),
        ("rules:\n  - id: x\n    id: y\n", r"r.yaml:3:5: key 'id': appears twice"),
        ("rules: [", "r.yaml:1:9: YAML: not valid YAML"),
    ],
)
def test_invalid_rules_name_the_line_column_rule_and_field(text, message):
    """Each kind of mistake is reported as FILE:LINE:COLUMN with the rule and the field."""
    with pytest.raises(RulesError, match=message):
        parse_rules(text, source="r.yaml")


def test_every_invalid_rule_is_reported_not_just_the_first():
    """rule_errors lists one error per invalid rule, each with its own line, and no rule set."""
    text = "rules:\n  - id: a\n    silence: {ge: soon}\n  - id: ok\n    silence: {ge: 5s}\n  - id: b\n    pitch_hz: {gt: high}\n"
    rules, errors = rule_errors(text, "r.yaml")
    assert rules is None
    assert [e.split(": ")[0] for e in errors] == ["r.yaml:3:19", "r.yaml:7:20"]


def test_unknown_label_is_caught_against_the_model():
    """A label the model does not produce is rejected before any call is served."""
    rules = parse_rules("rules:\n  - id: x\n    all: [{emotion: [furious], min: 0.5, for: 1s}]\n", "r.yaml")
    with pytest.raises(RulesError, match="'furious' is not produced by the model"):
        rules.check_labels(LABELS)


# -- timing: for, pauses ----------------------------------------------------------------------


def test_fires_once_the_score_held_for_the_duration():
    """The rule fires on the first window at which 2 s of speech held the threshold, not before."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state()
    assert feed(engine, state, [window(t) for t in (500, 1000, 1500)]) == []
    fired = engine.evaluate_window(state, window(2000))
    assert len(fired) == 1
    match = fired[0]
    assert match.start_ms == 0 and match.fired_ms == 2000 and match.severity is Severity.HIGH
    evidence = match.conditions[0]
    assert evidence.held_ms == 2000 and len(evidence.points) == 4
    assert match.reason == "angry+fearful 0.90 avg over 2.0 s"
    assert [p["end_ms"] for p in match.series] == [500, 1000, 1500, 2000]
    assert match.series[0]["scores"] == {"angry": 0.9, "fearful": 0.0} and match.series[0]["speech_rate_spm"] == 200.0


def test_labels_are_summed():
    """Scores of the listed labels are added: 0.35 angry + 0.35 fearful passes a 0.6 threshold."""
    engine = RuleEngine(parse_rules(RULES))
    fired = feed(engine, engine.new_state(), [window(t, angry=0.35, fearful=0.35) for t in range(500, 2001, 500)])
    assert len(fired) == 1


def test_a_window_below_threshold_restarts_the_count():
    """One calm window in the middle means the full duration must hold again."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state()
    seq = [window(500), window(1000), window(1500), window(2000, angry=0.1)]
    seq += [window(t) for t in (2500, 3000, 3500)]
    assert feed(engine, state, seq) == []
    assert len(engine.evaluate_window(state, window(4000))) == 1


def test_pauses_shorter_than_max_pause_do_not_reset_but_longer_ones_do():
    """Speech time accumulates across short pauses; a pause over max_pause restarts it."""
    engine = RuleEngine(parse_rules(RULES))
    seq = [window(500), window(1000), window(2300, new_ms=500), window(2800)]
    assert len(feed(engine, engine.new_state(), seq)) == 1
    seq = [window(500), window(1000), window(3000, new_ms=500), window(3500)]
    assert feed(engine, engine.new_state(), seq) == []


def test_speaker_filter_and_unscored_speakers():
    """A customer rule ignores the agent's windows, and an unscored speaker never satisfies an emotion condition."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state()
    assert feed(engine, state, [window(t, speaker=Role.AGENT) for t in range(500, 5001, 500)]) == []
    assert feed(engine, state, [window(t, scored=False) for t in range(500, 5001, 500)]) == []


# -- one alert per episode: hysteresis, cooldown ----------------------------------------------


def test_a_sustained_condition_raises_one_alert_not_one_per_window():
    """While the condition keeps holding the rule stays active and raises nothing more (de-duplication)."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state()
    fired = feed(engine, state, [window(t) for t in range(500, 30001, 500)])
    assert [m.fired_ms for m in fired] == [2000]
    assert state.active_rules() == {"customer": ["angry"]}


def test_hysteresis_keeps_the_alert_active_between_the_clear_and_the_set_level():
    """With clear 0.4 a dip to 0.5 does not end the episode; a dip to 0.3 does, and a new episode can fire."""
    engine = RuleEngine(parse_rules(RULES.replace("min: 0.6", "min: 0.6\n        clear: 0.4").replace("cooldown: 10s", "cooldown: 0s")))
    state = engine.new_state()
    seq = [window(t) for t in range(500, 2001, 500)]                   # fires at 2000
    seq += [window(2500, angry=0.5)] + [window(t) for t in range(3000, 5001, 500)]  # still the same episode
    seq += [window(5500, angry=0.3)]                                    # clears
    seq += [window(t) for t in range(6000, 8001, 500)]                  # a new episode: 2 s more
    assert [m.fired_ms for m in feed(engine, state, seq)] == [2000, 7500]
    no_clear = RuleEngine(parse_rules(RULES.replace("cooldown: 10s", "cooldown: 0s")))
    seq = [window(t) for t in range(500, 2001, 500)] + [window(2500, angry=0.5)] + [window(t) for t in range(3000, 5001, 500)]
    assert [m.fired_ms for m in feed(no_clear, no_clear.new_state(), seq)] == [2000, 4500]


def test_cooldown_holds_back_a_new_episode():
    """After firing, a cleared and re-established condition stays quiet until the cooldown (call time) has passed."""
    engine = RuleEngine(parse_rules(RULES))
    state = engine.new_state()
    seq = [window(t) for t in range(500, 2001, 500)] + [window(2500, angry=0.1)]
    seq += [window(t) for t in range(3000, 20001, 500)]
    assert [m.fired_ms for m in feed(engine, state, seq)] == [2000, 12000]


# -- escalation --------------------------------------------------------------------------------


ESCALATING = """
rules:
  - id: loud
    speaker: customer
    loudness_dbfs: {gt: -15, for: 1s}
    severity: medium
    notify: [agent]
    cooldown: 5s
    escalate: {after: 3, within: 60s}
"""


def test_repeated_alerts_within_the_period_escalate_to_the_supervisor():
    """The third alert within 60 s is escalated: one severity up and the supervisor added; later ones outside the period are not."""
    engine = RuleEngine(parse_rules(ESCALATING))
    state = engine.new_state()

    def episode(start):
        loud = [window(t, prosody=figures(loudness=-10)) for t in range(start, start + 1001, 500)]
        return loud + [window(start + 1500, prosody=figures(loudness=-30))]

    seq = episode(500) + episode(10500) + episode(20500) + episode(200500)
    fired = feed(engine, state, seq)
    assert [m.fired_ms for m in fired] == [1000, 11000, 21000, 201000]
    assert [m.escalated for m in fired] == [False, False, True, False]
    assert [m.severity for m in fired] == [Severity.MEDIUM, Severity.MEDIUM, Severity.HIGH, Severity.MEDIUM]
    assert fired[2].notify == ("agent", "supervisor") and fired[3].notify == ("agent",)
    assert [m.occurrence for m in fired] == [1, 2, 3, 4]


# -- prosody and baselines ---------------------------------------------------------------------


RAISED = """
rules:
  - id: raised
    speaker: customer
    loudness_over_baseline_db: {ge: 10, for: 3s, warmup: 10s}
"""


def test_relative_loudness_waits_for_the_baseline_warm_up_and_then_needs_its_duration():
    """Before 10 s of the speaker's speech the condition cannot hold; after it, 3 s at +10 dB fires."""
    engine = RuleEngine(parse_rules(RAISED))
    state = engine.new_state()
    early = [window(t, prosody=figures(over=14.0), speech_ms=t) for t in range(500, 9501, 500)]
    assert feed(engine, state, early) == []
    late = [window(t, prosody=figures(over=14.0), speech_ms=t) for t in range(10000, 14001, 500)]
    fired = feed(engine, state, late)
    assert [m.fired_ms for m in fired] == [12500]
    assert fired[0].reason == "+14.0 dB over the speaker's baseline over 3.0 s"
    unknown = [window(t, prosody=figures(over=None), speech_ms=60000) for t in range(500, 6001, 500)]
    assert feed(engine, engine.new_state(), unknown) == []


# -- conversation: dead air, over-talk, interruptions -----------------------------------------


def test_dead_air_fires_once_per_silence_on_the_call_clock():
    """A 5 s mutual silence fires at 5 s with its start as evidence; it fires again only after speech and a new silence."""
    engine = RuleEngine(parse_rules("rules:\n  - id: dead\n    silence: {ge: 5s}\n    cooldown: 0s\n"))
    state = engine.new_state()
    seq = [snap(t, dead_air=t) for t in range(100, 9001, 100)]            # 9 s of silence
    seq += [snap(9100 + t, dead_air=0) for t in range(0, 1000, 100)]      # someone speaks
    seq += [snap(10100 + t, dead_air=t) for t in range(100, 5001, 100)]   # silence again
    fired = ticks(engine, state, seq)
    assert [m.fired_ms for m in fired] == [5000, 15100]
    assert fired[0].speaker is None and fired[0].start_ms == 0 and fired[0].reason == "dead air 5.0 s"


def test_a_hold_fires_once_it_lasts_long_enough_on_the_named_channel():
    """`hold: {ge: 90s, channel: agent}` fires when the agent's channel has played steady sound for 90 s, with the hold's
    start and channel as evidence; steady sound on the customer's channel does not count for it."""
    engine = RuleEngine(parse_rules("rules:\n  - id: long-hold\n    hold: {ge: 90s, channel: agent}\n    notify: [agent]\n"))
    state = engine.new_state()
    on_customer = [ConversationSnapshot(t, 0, 0, None, (), hold_ms=t, hold_channel=Role.CUSTOMER) for t in range(1000, 120_001, 1000)]
    assert ticks(engine, state, on_customer) == []
    on_agent = [ConversationSnapshot(130_000 + t, 0, 0, None, (), hold_ms=t, hold_channel=Role.AGENT) for t in range(1000, 100_001, 1000)]
    fired = ticks(engine, state, on_agent)
    assert [m.fired_ms for m in fired] == [220_000] and fired[0].start_ms == 130_000
    assert fired[0].reason == "on hold 90.0 s (music or tones on the agent's channel)"
    with pytest.raises(RulesError, match=r"rule 'x'.hold.ge: required"):
        parse_rules("rules:\n  - id: x\n    hold: {channel: agent}\n")


def test_interruptions_count_by_speaker_within_the_period():
    """Three interruptions by the agent within 2 min fire; the customer's interruptions do not count for the agent rule."""
    engine = RuleEngine(parse_rules("rules:\n  - id: over\n    speaker: agent\n    interruptions: {by: agent, ge: 3, within: 2m}\n"))
    state = engine.new_state()

    def by(role, at):
        return Interruption(at_ms=at, by=role, of=Role.CUSTOMER if role is Role.AGENT else Role.AGENT, overlap_ms=700)

    events = [by(Role.AGENT, 10000), by(Role.CUSTOMER, 20000), by(Role.AGENT, 30000)]
    assert ticks(engine, state, [snap(40000, interruptions=events)]) == []
    events.append(by(Role.AGENT, 45000))
    fired = ticks(engine, state, [snap(46000, interruptions=events)])
    assert len(fired) == 1 and fired[0].speaker is Role.AGENT and fired[0].start_ms == 10000
    assert fired[0].reason == "agent interrupted the customer 3 times in 2 min"
    assert [e["at_ms"] for e in fired[0].conditions[0].details["events"]] == [10000, 30000, 45000]
    spread = [by(Role.AGENT, 0), by(Role.AGENT, 70000), by(Role.AGENT, 140000)]
    assert ticks(engine, engine.new_state(), [snap(141000, interruptions=spread)]) == []


def test_speaker_rule_can_use_the_conversation_at_the_window():
    """A speaker rule combining emotion and over-talk fires only when the window's conversation shows the over-talk."""
    text = """
rules:
  - id: angry-overtalk
    speaker: customer
    all:
      - emotion: [angry]
        min: 0.6
        for: 1s
      - overtalk: {ge: 1s, by: customer}
"""
    engine = RuleEngine(parse_rules(text))
    calm = [window(t, conversation=snap(t)) for t in range(500, 3001, 500)]
    assert feed(engine, engine.new_state(), calm) == []
    over = [window(t, conversation=snap(t, overtalk=1500, by=Role.CUSTOMER)) for t in range(500, 3001, 500)]
    fired = feed(engine, engine.new_state(), over)
    assert [m.fired_ms for m in fired] == [1000]
    assert "over-talk 1.5 s (customer talking over the agent)" in fired[0].reason


def test_a_changed_rule_starts_fresh_but_an_unchanged_one_keeps_its_state():
    """After a reload, a rule whose definition changed forgets its progress; an identical rule keeps it."""
    old = RuleEngine(parse_rules(RULES))
    state = old.new_state()
    feed(old, state, [window(t) for t in (500, 1000, 1500)])
    same = RuleEngine(parse_rules(RULES))
    assert [m.fired_ms for m in same.evaluate_window(state, window(2000))] == [2000]
    state = old.new_state()
    feed(old, state, [window(t) for t in (500, 1000, 1500)])
    changed = RuleEngine(parse_rules(RULES.replace("for: 2s", "for: 1s")))
    assert changed.evaluate_window(state, window(2000)) == []
    assert [m.fired_ms for m in changed.evaluate_window(state, window(2500))] == [2500]
