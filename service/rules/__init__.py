"""Alert rules: a YAML rule language and the engine that evaluates it over a call's observations."""

from service.rules.engine import CallRuleState, ConditionEvidence, RuleEngine, RuleMatch, ScoredWindow
from service.rules.model import Rule, RuleSet, load_rules, parse_rules, rule_errors

__all__ = [
    "CallRuleState",
    "ConditionEvidence",
    "Rule",
    "RuleEngine",
    "RuleMatch",
    "RuleSet",
    "ScoredWindow",
    "load_rules",
    "parse_rules",
    "rule_errors",
]
