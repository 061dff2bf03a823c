"""Rule definitions and their YAML parser; every error names the rule and the field that is wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml

from service.domain import Role, Severity
from service.errors import RulesError

NOTIFY_TARGETS = ("agent", "supervisor")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class EmotionCondition:
    """The summed score of `labels` stays >= `min` for `for_ms` of the speaker's speech."""

    labels: tuple[str, ...]
    """Labels whose scores are summed in each window."""
    min: float
    """Threshold on the summed score, 0..1."""
    for_ms: int
    """Speech time the threshold must hold without interruption."""
    max_pause_ms: int
    """A silence longer than this between the speaker's windows restarts the count."""


@dataclass(frozen=True)
class Rule:
    """One alert rule."""

    id: str
    """Stable identifier; appears in alerts and metrics."""
    speaker: Role | None
    """Whose speech the rule watches; None means any scored speaker."""
    conditions: tuple[EmotionCondition, ...]
    """All must hold at once for the rule to fire."""
    severity: Severity
    """Alert severity."""
    notify: tuple[str, ...]
    """Targets: agent and/or supervisor."""
    cooldown_ms: int
    """After firing, the rule stays quiet for this long (call time) for that speaker."""
    message: str
    """Text shown to the agent or supervisor."""

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
            for cond in rule.conditions:
                unknown = [label for label in cond.labels if label not in known]
                if unknown:
                    raise RulesError(
                        f"{self.source}: rule {rule.id!r}: emotion label {unknown[0]!r} is not produced by the model "
                        f"(labels: {', '.join(sorted(known))})"
                    )


def parse_duration_ms(value: Any, where: str) -> int:
    """'5s', '500ms', '2m' or a number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise RulesError(f"{where}: expected a duration like 5s or 500ms, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if seconds < 0:
            raise RulesError(f"{where}: duration must not be negative")
        return int(round(seconds * 1000))
    match = _DURATION.match(str(value))
    if not match:
        raise RulesError(f"{where}: expected a duration like 5s or 500ms, got {value!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return int(round(number * {"ms": 1, "s": 1000, "m": 60000}[unit]))


def _condition(raw: Any, where: str) -> EmotionCondition:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a mapping with 'emotion', 'min' and 'for'")
    if "emotion" not in raw:
        kind = next(iter(raw), "?")
        raise RulesError(f"{where}: condition {kind!r} is not supported; supported: emotion")
    unknown = set(raw) - {"emotion", "min", "for", "max_pause"}
    if unknown:
        raise RulesError(f"{where}: unknown key {sorted(unknown)[0]!r} (allowed: emotion, min, for, max_pause)")
    labels = raw["emotion"]
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise RulesError(f"{where}.emotion: expected a non-empty list of labels")
    minimum = raw.get("min")
    if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or not 0 <= minimum <= 1:
        raise RulesError(f"{where}.min: expected a number between 0 and 1, got {minimum!r}")
    if "for" not in raw:
        raise RulesError(f"{where}.for: required (how long the score must hold, e.g. 5s)")
    for_ms = parse_duration_ms(raw["for"], f"{where}.for")
    max_pause_ms = parse_duration_ms(raw.get("max_pause", "3s"), f"{where}.max_pause")
    return EmotionCondition(tuple(x.lower() for x in labels), float(minimum), for_ms, max_pause_ms)


def _rule(raw: Any, index: int, source: str) -> Rule:
    where = f"{source}: rules[{index}]"
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a mapping")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise RulesError(f"{where}.id: expected an identifier of letters, digits, '-', '_' or '.', got {rule_id!r}")
    where = f"{source}: rule {rule_id!r}"
    allowed = {"id", "speaker", "all", "severity", "notify", "cooldown", "message"}
    unknown = set(raw) - allowed
    if unknown:
        key = sorted(unknown)[0]
        hint = " (only 'all' combinations of emotion conditions are supported)" if key in ("any", "not", "silence") else ""
        raise RulesError(f"{where}: unknown key {key!r}{hint}")
    speaker_raw = raw.get("speaker", "any")
    if speaker_raw == "any":
        speaker = None
    else:
        try:
            speaker = Role(speaker_raw)
        except ValueError:
            raise RulesError(f"{where}.speaker: expected customer, agent or any, got {speaker_raw!r}") from None
    conditions_raw = raw.get("all")
    if not isinstance(conditions_raw, list) or not conditions_raw:
        raise RulesError(f"{where}.all: expected a non-empty list of conditions")
    conditions = tuple(_condition(c, f"{where}.all[{i}]") for i, c in enumerate(conditions_raw))
    severity_raw = raw.get("severity", "medium")
    try:
        severity = Severity[str(severity_raw).upper()]
    except KeyError:
        raise RulesError(f"{where}.severity: expected low, medium, high or critical, got {severity_raw!r}") from None
    notify = raw.get("notify", ["agent"])
    if isinstance(notify, str):
        notify = [notify]
    if not isinstance(notify, list) or not notify or any(n not in NOTIFY_TARGETS for n in notify):
        raise RulesError(f"{where}.notify: expected a list of agent and/or supervisor, got {notify!r}")
    cooldown_ms = parse_duration_ms(raw.get("cooldown", "60s"), f"{where}.cooldown")
    message = raw.get("message", rule_id)
    if not isinstance(message, str) or not message.strip():
        raise RulesError(f"{where}.message: expected text")
    return Rule(rule_id, speaker, conditions, severity, tuple(dict.fromkeys(notify)), cooldown_ms, message.strip())


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate rules YAML."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RulesError(f"{source}: expected a top-level 'rules:' list")
    rules = tuple(_rule(raw, i, source) for i, raw in enumerate(doc["rules"]))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RulesError(f"{source}: rule id {rule.id!r} is used twice")
        seen.add(rule.id)
    return RuleSet(rules, source)


def load_rules(path: str) -> RuleSet:
    """Read and validate a rules file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise RulesError(f"cannot read rules file {path!r}: {exc.strerror}") from None
    return parse_rules(text, source=path)
