"""The documents a call publishes about itself: the lifecycle events (call_started, call_ended) and the call summary
(per speaker: speech, windows, emotion trajectory and peaks, prosody and sounds; the conversation; the alerts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from service.alerts import wall_time_iso
from service.audio.channel import ChannelPipeline
from service.call_analytics import CallAnalytics
from service.call_rules import CallRules
from service.call_scoring import CallScoring
from service.domain import CallConfig, CallSummary

if TYPE_CHECKING:
    from service.session import SessionContext

SUMMARY_SCHEMA_VERSION = 2


def lifecycle_document(config: CallConfig, kind: str, **extra) -> dict:
    """A document of `kind` about the call (its ids, the wall time) with `extra` fields."""
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "type": kind,
        "call_id": config.call_id,
        "agent_id": config.agent_id,
        "team": config.team,
        "tenant": config.tenant,
        "wall_time": wall_time_iso(),
        **extra,
    }


def build_summary(config: CallConfig, ctx: "SessionContext", reason: str, duration_ms: int, pipelines: Sequence[ChannelPipeline],
                  scoring: CallScoring, analytics: CallAnalytics, rules: CallRules) -> CallSummary:
    """The call summary (the CallSummary event and its `call_summary` document) from what the call's parts measured."""
    labels = ctx.labels
    speakers = tuple(scoring.timeline(p.role).summary(speech_ms=p.speech_ms, segments=p.segments) for p in pipelines)
    separation_ms = ctx.windows.window_ms
    speaker_documents = []
    for s in speakers:
        timeline = scoring.timeline(s.speaker)
        speaker_documents.append({
            "speaker": s.speaker.value,
            "scored": s.speaker in config.score_roles,
            "speech_ms": s.speech_ms,
            "segments": s.segments,
            "windows_scored": s.windows_scored,
            "windows_merged": s.windows_merged,
            "windows_dropped": s.windows_dropped,
            "windows_skipped": scoring.skipped_windows(s.speaker),
            "windows_not_speech": scoring.not_speech_windows(s.speaker),
            "top_labels": dict(s.top_labels),
            **analytics.speaker_summary(s.speaker),
            "trajectory": {
                "resolution_ms": 1000,
                "points": [{"t_ms": t_ms, "scores": [round(float(x), 4) for x in scores]} for t_ms, scores in timeline.trajectory()],
            },
            "peaks": timeline.peaks(labels, ctx.analytics.peaks, separation_ms),
        })
    document = lifecycle_document(
        config,
        "call_summary",
        reason=reason,
        duration_ms=duration_ms,
        model=ctx.model_name,
        alert_count=rules.count,
        labels=list(labels),
        speakers=speaker_documents,
        conversation=analytics.conversation_summary(),
        alerts=[
            {
                "alert_id": a.alert_id,
                "rule_id": a.rule_id,
                "severity": a.severity.label,
                "speaker": a.speaker.value if a.speaker else None,
                "start_ms": a.start_ms,
                "fired_ms": a.fired_ms,
                "message": a.message,
                "reason": a.document["evidence"]["reason"],
                "escalated": a.document["escalated"],
            }
            for a in rules.alerts
        ],
    )
    return CallSummary(
        call_id=config.call_id,
        duration_ms=duration_ms,
        speakers=speakers,
        alert_ids=tuple(a.alert_id for a in rules.alerts),
        reason=reason,
        document=document,
    )
