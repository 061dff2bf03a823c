"""Alert rules: a YAML rule language and the engine that evaluates it over each speaker's scores."""

from service.rules.engine import ChannelRuleState, RuleEngine, RuleMatch, ScoredWindow
from service.rules.model import EmotionCondition, Rule, RuleSet, load_rules, parse_rules

__all__ = [
    "ChannelRuleState",
    "EmotionCondition",
    "Rule",
    "RuleEngine",
    "RuleMatch",
    "RuleSet",
    "ScoredWindow",
    "load_rules",
    "parse_rules",
]
