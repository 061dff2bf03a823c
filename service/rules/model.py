"""Rule definitions and their YAML parser; every error names the file, line, column, rule and field.

A rule is a condition tree (`all`, `any`, `not`) over leaf conditions on one speaker's windows
(emotion scores, loudness, pitch, speech rate) or on the conversation (dead air, over-talk,
interruptions); see README.md, "Rules", for the language.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Union

import yaml

from service.domain import Role, Severity
from service.errors import RulesError

NOTIFY_TARGETS = ("agent", "supervisor")
COMPARISONS = ("gt", "ge", "lt", "le")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)?\s*$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_PAUSE_MS = 3000
DEFAULT_BASELINE_WARMUP_MS = 10000

# Measures of one speaker's window: name -> (unit shown in reasons, default warm-up in ms of the speaker's speech).
SPEAKER_MEASURES: dict[str, tuple[str, int]] = {
    "loudness_dbfs": ("dBFS", 0),
    "loudness_over_baseline_db": ("dB over baseline", DEFAULT_BASELINE_WARMUP_MS),
    "pitch_hz": ("Hz", 0),
    "pitch_range_st": ("semitones pitch range", 0),
    "speech_rate_spm": ("syllables/min", 0),
    "speech_rate_cpm": ("characters/min", 0),
    "speech_rate_over_baseline": ("x the speaker's usual rate", DEFAULT_BASELINE_WARMUP_MS),
}
CONVERSATION_CONDITIONS = ("silence", "overtalk", "interruptions", "hold")
COMBINATORS = ("all", "any", "not")


# -- condition tree --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmotionCondition:
    """The summed score of `labels` stays >= `min` for `for_ms` of the speaker's speech."""

    labels: tuple[str, ...]
    """Labels whose scores are summed in each window."""
    min: float
    """Threshold on the summed score, 0..1."""
    for_ms: int
    """Speech time the threshold must hold without interruption (0: one window is enough)."""
    max_pause_ms: int = DEFAULT_MAX_PAUSE_MS
    """A silence longer than this between the speaker's windows restarts the count."""
    clear: float | None = None
    """Once the rule fired it stays active (no new alert) until the score falls below this; None: `min`."""


@dataclass(frozen=True)
class MeasureCondition:
    """A prosody measure of the speaker's windows compares to a threshold for `for_ms` of speech."""

    measure: str
    """One of SPEAKER_MEASURES."""
    op: str
    """gt, ge, lt or le."""
    threshold: float
    """The value compared against."""
    for_ms: int = 0
    """Speech time the comparison must hold without interruption (0: one window is enough)."""
    max_pause_ms: int = DEFAULT_MAX_PAUSE_MS
    """A silence longer than this between the speaker's windows restarts the count."""
    clear: float | None = None
    """Hysteresis: an active rule stays active while the measure still compares true against this."""
    warmup_ms: int = 0
    """The condition is not evaluated (counts as not holding) before the speaker spoke this long."""


@dataclass(frozen=True)
class SilenceCondition:
    """Mutual dead air (nobody speaks) has lasted at least `min_ms`."""

    min_ms: int
    """Length of the current dead-air stretch that makes the condition hold."""


@dataclass(frozen=True)
class OvertalkCondition:
    """Two speakers have been talking at once for at least `min_ms` (optionally: `by` started it)."""

    min_ms: int
    """Length of the current over-talk stretch that makes the condition hold."""
    by: Role | None = None
    """Only over-talk that this speaker started (by talking into the other); None: either."""


@dataclass(frozen=True)
class InterruptionsCondition:
    """At least `min_count` interruptions (by `by`, of the other speaker) within the last `within_ms`."""

    min_count: int
    """How many interruptions make the condition hold."""
    within_ms: int
    """The trailing period they are counted over (call time)."""
    by: Role | None = None
    """Who interrupted; None: either speaker."""


@dataclass(frozen=True)
class HoldCondition:
    """A channel has been playing steady sound (hold music, tones: service/analytics/gate.py) for at least `min_ms`."""

    min_ms: int
    """Length of the current hold that makes the condition hold."""
    channel: Role | None = None
    """Only steady sound on this speaker's channel; None: either."""


@dataclass(frozen=True)
class AllOf:
    """Every child holds."""

    children: tuple["Condition", ...]


@dataclass(frozen=True)
class AnyOf:
    """At least one child holds."""

    children: tuple["Condition", ...]


@dataclass(frozen=True)
class NotOf:
    """The child does not hold."""

    child: "Condition"


Leaf = Union[EmotionCondition, MeasureCondition, SilenceCondition, OvertalkCondition, InterruptionsCondition, HoldCondition]
Condition = Union[Leaf, AllOf, AnyOf, NotOf]
SPEAKER_LEAVES = (EmotionCondition, MeasureCondition)


def iter_leaves(node: Condition) -> Iterator[Leaf]:
    """The leaves of a condition tree, depth first (the order rule state is kept in)."""
    if isinstance(node, (AllOf, AnyOf)):
        for child in node.children:
            yield from iter_leaves(child)
    elif isinstance(node, NotOf):
        yield from iter_leaves(node.child)
    else:
        yield node


@dataclass(frozen=True)
class Escalation:
    """A rule that fires again within `within_ms` escalates: higher severity, more recipients."""

    after: int
    """The n-th alert of the rule in one call (for one speaker) within the period escalates (n >= 2)."""
    within_ms: int
    """The period the alerts are counted over (call time)."""
    severity: Severity
    """Severity of escalated alerts."""
    notify: tuple[str, ...]
    """Recipients added to escalated alerts."""


@dataclass(frozen=True)
class Rule:
    """One alert rule."""

    id: str
    """Stable identifier; appears in alerts and metrics."""
    speaker: Role | None
    """Whose windows the rule watches; None means every speaker (each separately)."""
    condition: Condition
    """The condition tree that must hold for the rule to fire."""
    severity: Severity
    """Alert severity."""
    notify: tuple[str, ...]
    """Targets: agent and/or supervisor."""
    cooldown_ms: int
    """After firing, the rule stays quiet for this long (call time) for that speaker."""
    message: str
    """Text shown to the agent or supervisor."""
    escalation: Escalation | None = None
    """Repeated firing within a period escalates; None: never."""
    leaves: tuple[Leaf, ...] = field(default=(), compare=False)
    """The condition's leaves, depth first."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "leaves", tuple(iter_leaves(self.condition)))

    @property
    def conversation_only(self) -> bool:
        """True when no leaf looks at one speaker's windows: the rule is evaluated on the call's clock."""
        return not any(isinstance(leaf, SPEAKER_LEAVES) for leaf in self.leaves)

    def applies_to(self, role: Role) -> bool:
        return self.speaker is None or self.speaker is role


@dataclass(frozen=True)
class RuleSet:
    """A validated set of rules and where it came from."""

    rules: tuple[Rule, ...]
    source: str

    def check_labels(self, labels: Iterable[str]) -> None:
        """Raise RulesError if a rule names a label the model does not produce."""
        known = set(labels)
        for rule in self.rules:
            for leaf in rule.leaves:
                if isinstance(leaf, EmotionCondition):
                    unknown = [label for label in leaf.labels if label not in known]
                    if unknown:
                        raise RulesError(
                            f"{self.source}: rule {rule.id!r}: emotion label {unknown[0]!r} is not produced by the model "
                            f"(labels: {', '.join(sorted(known))})"
                        )


# -- YAML with positions ---------------------------------------------------------------------


class _Map(dict):
    """A YAML mapping that remembers where it and each of its keys and values are."""

    mark: yaml.Mark
    key_marks: dict[Any, yaml.Mark]
    value_marks: dict[Any, yaml.Mark]


class _Seq(list):
    """A YAML sequence that remembers where it and each item are."""

    mark: yaml.Mark
    item_marks: list[yaml.Mark]


class _Loader(yaml.SafeLoader):
    pass


class _DuplicateKey(Exception):
    def __init__(self, key: Any, mark: yaml.Mark) -> None:
        self.key, self.mark = key, mark


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.mark, out.key_marks, out.value_marks = node.start_mark, {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise _DuplicateKey(key, key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_marks[key] = key_node.start_mark
        out.value_marks[key] = value_node.start_mark
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.mark, out.item_marks = node.start_mark, [child.start_mark for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class _Invalid(Exception):
    """One mistake, with where it is."""

    def __init__(self, mark: yaml.Mark | None, path: str, message: str) -> None:
        super().__init__(message)
        self.mark, self.path, self.message = mark, path, message


def _value_mark(container: Any, key: Any) -> yaml.Mark | None:
    if isinstance(container, _Map):
        return container.value_marks.get(key, container.mark)
    if isinstance(container, _Seq) and isinstance(key, int) and key < len(container.item_marks):
        return container.item_marks[key]
    return getattr(container, "mark", None)


def _key_mark(container: Any, key: Any) -> yaml.Mark | None:
    if isinstance(container, _Map):
        return container.key_marks.get(key, container.mark)
    return getattr(container, "mark", None)


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else ("a mapping" if isinstance(value, dict) else "a list")


# -- parsing ---------------------------------------------------------------------------------


def parse_duration_ms(value: Any, where: str, mark: yaml.Mark | None = None) -> int:
    """'5s', '500ms', '2m' or a number of seconds -> milliseconds."""
    if isinstance(value, bool) or value is None:
        raise _Invalid(mark, where, f"expected a duration like 5s or 500ms, got {_describe(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if seconds < 0:
            raise _Invalid(mark, where, "a duration must not be negative")
        return int(round(seconds * 1000))
    match = _DURATION.match(str(value))
    if not match:
        raise _Invalid(mark, where, f"expected a duration like 5s or 500ms, got {_describe(value)}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return int(round(number * {"ms": 1, "s": 1000, "m": 60000, "min": 60000}[unit]))


def _number(container: Any, key: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    value = container[key]
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and low is not None and value < low:
        ok = False
    if ok and high is not None and value > high:
        ok = False
    if not ok:
        span = f" between {low:g} and {high:g}" if low is not None and high is not None else (f" >= {low:g}" if low is not None else "")
        raise _Invalid(_value_mark(container, key), where, f"expected a number{span}, got {_describe(value)}")
    return float(value)


def _duration(container: Any, key: Any, where: str, default: Any = None) -> int:
    if key not in container:
        return parse_duration_ms(default, where) if default is not None else 0
    return parse_duration_ms(container[key], where, _value_mark(container, key))


def _check_keys(raw: dict, allowed: Iterable[str], where: str, what: str) -> None:
    allowed = tuple(allowed)
    for key in raw:
        if key not in allowed:
            raise _Invalid(_key_mark(raw, key), f"{where}.{key}", f"unknown key {key!r} in {what} (allowed: {', '.join(allowed)})")


def _role(container: Any, key: str, where: str) -> Role | None:
    raw = container.get(key, "any")
    if raw == "any":
        return None
    try:
        return Role(raw)
    except ValueError:
        raise _Invalid(_value_mark(container, key), f"{where}.{key}", f"expected customer, agent or any, got {_describe(raw)}") from None


def _emotion(raw: dict, where: str) -> EmotionCondition:
    _check_keys(raw, ("emotion", "min", "for", "max_pause", "clear"), where, "an emotion condition")
    labels = raw["emotion"]
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise _Invalid(_value_mark(raw, "emotion"), f"{where}.emotion", "expected a label or a non-empty list of labels")
    if "min" not in raw:
        raise _Invalid(raw.mark, f"{where}.min", "required (the summed score that must be reached, 0..1)")
    minimum = _number(raw, "min", f"{where}.min", 0, 1)
    if "for" not in raw:
        raise _Invalid(raw.mark, f"{where}.for", "required (how long the score must hold, e.g. 5s)")
    clear = _number(raw, "clear", f"{where}.clear", 0, minimum) if "clear" in raw else None
    return EmotionCondition(
        labels=tuple(dict.fromkeys(x.lower() for x in labels)),
        min=minimum,
        for_ms=_duration(raw, "for", f"{where}.for"),
        max_pause_ms=_duration(raw, "max_pause", f"{where}.max_pause", "3s"),
        clear=clear,
    )


def _comparison(body: dict, where: str, what: str) -> tuple[str, str]:
    ops = [key for key in COMPARISONS if key in body]
    if len(ops) != 1:
        found = "none" if not ops else ", ".join(ops)
        raise _Invalid(body.mark, where, f"{what} needs exactly one comparison of gt, ge, lt, le (found {found})")
    return ops[0], f"{where}.{ops[0]}"


def _measure(name: str, body: Any, where: str, mark: yaml.Mark | None) -> MeasureCondition:
    if not isinstance(body, dict):
        raise _Invalid(mark, where, f"expected a mapping like {{gt: 180, for: 2s}}, got {_describe(body)}")
    _check_keys(body, (*COMPARISONS, "for", "max_pause", "clear", "warmup"), where, f"a {name} condition")
    op, op_where = _comparison(body, where, name)
    threshold = _number(body, op, op_where)
    clear = _number(body, "clear", f"{where}.clear") if "clear" in body else None
    if clear is not None and ((op in ("gt", "ge") and clear > threshold) or (op in ("lt", "le") and clear < threshold)):
        raise _Invalid(_value_mark(body, "clear"), f"{where}.clear", f"the clear level must be on the far side of the threshold ({op} {threshold:g})")
    return MeasureCondition(
        measure=name,
        op=op,
        threshold=threshold,
        for_ms=_duration(body, "for", f"{where}.for"),
        max_pause_ms=_duration(body, "max_pause", f"{where}.max_pause", "3s"),
        clear=clear,
        warmup_ms=_duration(body, "warmup", f"{where}.warmup") if "warmup" in body else SPEAKER_MEASURES[name][1],
    )


def _conversation(name: str, body: Any, where: str, mark: yaml.Mark | None) -> Leaf:
    if not isinstance(body, dict):
        example = {"silence": "{ge: 5s}", "overtalk": "{ge: 2s, by: agent}", "interruptions": "{by: agent, ge: 3, within: 2m}",
                   "hold": "{ge: 90s, channel: agent}"}[name]
        raise _Invalid(mark, where, f"expected a mapping like {example}, got {_describe(body)}")
    if "for" in body:
        raise _Invalid(_key_mark(body, "for"), f"{where}.for", f"{name} is measured in time already; say how long with ge (e.g. ge: 5s)")
    if name == "silence":
        _check_keys(body, ("ge",), where, "a silence condition")
        if "ge" not in body:
            raise _Invalid(body.mark, f"{where}.ge", "required (how long nobody has spoken, e.g. ge: 5s)")
        return SilenceCondition(_duration(body, "ge", f"{where}.ge"))
    if name == "hold":
        _check_keys(body, ("ge", "channel"), where, "a hold condition")
        if "ge" not in body:
            raise _Invalid(body.mark, f"{where}.ge", "required (how long a channel has played music or tones, e.g. ge: 90s)")
        return HoldCondition(_duration(body, "ge", f"{where}.ge"), _role(body, "channel", where))
    if name == "overtalk":
        _check_keys(body, ("ge", "by"), where, "an overtalk condition")
        if "ge" not in body:
            raise _Invalid(body.mark, f"{where}.ge", "required (how long both have spoken at once, e.g. ge: 2s)")
        return OvertalkCondition(_duration(body, "ge", f"{where}.ge"), _role(body, "by", where))
    _check_keys(body, ("ge", "by", "within"), where, "an interruptions condition")
    if "ge" not in body:
        raise _Invalid(body.mark, f"{where}.ge", "required (how many interruptions, e.g. ge: 3)")
    count = _number(body, "ge", f"{where}.ge", 1)
    if count != int(count):
        raise _Invalid(_value_mark(body, "ge"), f"{where}.ge", f"expected a whole number of interruptions, got {count:g}")
    if "within" not in body:
        raise _Invalid(body.mark, f"{where}.within", "required (the period they are counted over, e.g. within: 2m)")
    within = _duration(body, "within", f"{where}.within")
    if within <= 0:
        raise _Invalid(_value_mark(body, "within"), f"{where}.within", "must be longer than 0")
    return InterruptionsCondition(int(count), within, _role(body, "by", where))


def _node(raw: Any, where: str, mark: yaml.Mark | None) -> Condition:
    """One condition: a combinator, an emotion condition, a measure or a conversation condition."""
    if not isinstance(raw, dict) or not raw:
        raise _Invalid(mark, where, f"expected a condition (a mapping such as {{emotion: [angry], min: 0.6, for: 5s}}), got {_describe(raw)}")
    if "emotion" in raw:
        return _emotion(raw, where)
    if len(raw) != 1:
        keys = ", ".join(str(k) for k in raw)
        raise _Invalid(raw.mark, where, f"a condition has exactly one key (found {keys}); combine conditions with all/any")
    (name,) = raw
    body, body_mark, at = raw[name], _value_mark(raw, name), f"{where}.{name}"
    if name in ("all", "any"):
        if not isinstance(body, list) or not body:
            raise _Invalid(body_mark, at, f"expected a non-empty list of conditions, got {_describe(body)}")
        children = tuple(_node(child, f"{at}[{i}]", _value_mark(body, i)) for i, child in enumerate(body))
        return AllOf(children) if name == "all" else AnyOf(children)
    if name == "not":
        if isinstance(body, list):
            if len(body) != 1:
                raise _Invalid(body_mark, at, "expected one condition (use not: {any: [...]} to negate several)")
            return NotOf(_node(body[0], f"{at}[0]", _value_mark(body, 0)))
        return NotOf(_node(body, at, body_mark))
    if name in SPEAKER_MEASURES:
        return _measure(name, body, at, body_mark)
    if name in CONVERSATION_CONDITIONS:
        return _conversation(name, body, at, body_mark)
    known = ", ".join(("emotion", *SPEAKER_MEASURES, *CONVERSATION_CONDITIONS, *COMBINATORS))
    raise _Invalid(_key_mark(raw, name), at, f"unknown condition {name!r} (known: {known})")


def _escalation(raw: Any, where: str, mark: yaml.Mark | None, severity: Severity) -> Escalation:
    if not isinstance(raw, dict):
        raise _Invalid(mark, where, f"expected a mapping like {{after: 3, within: 10m, severity: critical}}, got {_describe(raw)}")
    _check_keys(raw, ("after", "within", "severity", "notify"), where, "escalate")
    if "after" not in raw or "within" not in raw:
        raise _Invalid(raw.mark, where, "needs 'after' (the n-th alert that escalates) and 'within' (the period)")
    after = _number(raw, "after", f"{where}.after", 2)
    if after != int(after):
        raise _Invalid(_value_mark(raw, "after"), f"{where}.after", f"expected a whole number >= 2, got {after:g}")
    within = _duration(raw, "within", f"{where}.within")
    default = Severity(min(severity + 1, Severity.CRITICAL)).label
    esc_severity = _severity(raw, "severity", f"{where}.severity", default)
    notify = _notify(raw, "notify", f"{where}.notify", ["supervisor"])
    return Escalation(int(after), within, esc_severity, notify)


def _severity(raw: dict, key: str, where: str, default: str) -> Severity:
    value = raw.get(key, default)
    try:
        return Severity[str(value).upper()]
    except KeyError:
        raise _Invalid(_value_mark(raw, key), where, f"expected low, medium, high or critical, got {_describe(value)}") from None


def _notify(raw: dict, key: str, where: str, default: list[str]) -> tuple[str, ...]:
    notify = raw.get(key, default)
    if isinstance(notify, str):
        notify = [notify]
    if not isinstance(notify, list) or not notify or any(n not in NOTIFY_TARGETS for n in notify):
        raise _Invalid(_value_mark(raw, key), where, f"expected a list of agent and/or supervisor, got {_describe(notify)}")
    return tuple(dict.fromkeys(notify))


RULE_KEYS = ("id", "speaker", "severity", "notify", "cooldown", "message", "escalate")


def _rule(raw: Any, index: int, mark: yaml.Mark | None) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise _Invalid(mark, where, f"expected a mapping, got {_describe(raw)}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise _Invalid(_value_mark(raw, "id"), f"{where}.id", f"expected an identifier of letters, digits, '-', '_' or '.', got {_describe(rule_id)}")
    where = f"rule {rule_id!r}"
    condition_keys = [key for key in raw if key not in RULE_KEYS]
    if not condition_keys:
        raise _Invalid(raw.mark, where, "has no condition (all, any, not, or one condition such as silence: {ge: 5s})")
    if len(condition_keys) > 1:
        key = condition_keys[1]
        raise _Invalid(_key_mark(raw, key), f"{where}.{key}", f"unknown key {key!r} or a second condition "
                       f"(a rule has one: {condition_keys[0]!r}; combine several with all/any)")
    key = condition_keys[0]
    if key in ("emotion", "min", "for", "max_pause", "clear"):
        raise _Invalid(_key_mark(raw, key), f"{where}.{key}", "an emotion condition goes inside all/any: all: [{emotion: [angry], min: 0.6, for: 5s}]")
    if key not in (*COMBINATORS, *SPEAKER_MEASURES, *CONVERSATION_CONDITIONS):
        raise _Invalid(_key_mark(raw, key), f"{where}.{key}", f"unknown key {key!r} (rule keys: {', '.join(RULE_KEYS)}; "
                       f"conditions: {', '.join((*COMBINATORS, *SPEAKER_MEASURES, *CONVERSATION_CONDITIONS))})")
    condition = _node(_map_of(raw, key), where, raw.mark)
    speaker = _role(raw, "speaker", where)
    severity = _severity(raw, "severity", f"{where}.severity", "medium")
    notify = _notify(raw, "notify", f"{where}.notify", ["agent"])
    cooldown_ms = _duration(raw, "cooldown", f"{where}.cooldown", "60s")
    message = raw.get("message", rule_id)
    if not isinstance(message, str) or not message.strip():
        raise _Invalid(_value_mark(raw, "message"), f"{where}.message", "expected text")
    escalation = _escalation(raw["escalate"], f"{where}.escalate", _value_mark(raw, "escalate"), severity) if "escalate" in raw else None
    return Rule(rule_id, speaker, condition, severity, notify, cooldown_ms, message.strip(), escalation)


def _map_of(raw: _Map, key: str) -> _Map:
    """{key: raw[key]} keeping the positions, so a rule's condition is parsed like a nested one."""
    out = _Map({key: raw[key]})
    out.mark, out.key_marks, out.value_marks = raw.key_marks[key], {key: raw.key_marks[key]}, {key: raw.value_marks[key]}
    return out


def _format(source: str, mark: yaml.Mark | None, path: str, message: str) -> str:
    at = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    return f"{at}: {path}: {message}"


def rule_errors(text: str, source: str = "<rules>") -> tuple[RuleSet | None, list[str]]:
    """Parse rules YAML; returns the rule set (None if anything is wrong) and every error found,
    each as 'FILE:LINE:COLUMN: rule 'id'.field: what is wrong'."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as exc:
        return None, [_format(source, exc.mark, f"key {exc.key!r}", "appears twice in the same mapping")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return None, [_format(source, mark, "YAML", f"not valid YAML: {exc.problem or exc.context}")]
    except yaml.YAMLError as exc:
        return None, [f"{source}: not valid YAML: {exc}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        mark = getattr(doc, "mark", None)
        return None, [_format(source, mark, "rules", "expected a top-level 'rules:' list")]
    for key in doc:
        if key != "rules":
            return None, [_format(source, _key_mark(doc, key), str(key), "unknown top-level key (only 'rules:' is read)")]
    rules_raw = doc["rules"]
    rules: list[Rule] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for index, raw in enumerate(rules_raw):
        mark = _value_mark(rules_raw, index)
        try:
            rule = _rule(raw, index, mark)
        except _Invalid as exc:
            errors.append(_format(source, exc.mark, exc.path, exc.message))
            continue
        if rule.id in first_line:
            errors.append(_format(source, _value_mark(raw, "id"), f"rule {rule.id!r}", f"id is used twice (first at line {first_line[rule.id]})"))
            continue
        first_line[rule.id] = (mark.line + 1) if mark is not None else 0
        rules.append(rule)
    if errors:
        return None, errors
    return RuleSet(tuple(rules), source), []


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate rules YAML; RulesError lists every mistake, one per line."""
    rules, errors = rule_errors(text, source)
    if errors:
        raise RulesError("\n".join(errors))
    assert rules is not None
    return rules


def load_rules(path: str) -> RuleSet:
    """Read and validate a rules file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RulesError(f"rules file {path!r} is not UTF-8 text: {exc.reason}") from None
    return parse_rules(text, source=path)
