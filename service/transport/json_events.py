"""JSON wire shapes of the native WebSocket protocol: the `start` and `transcript` messages in, events and errors out."""

from __future__ import annotations

from typing import Any

from service.domain import (
    Alert,
    AudioFormat,
    CallConfig,
    CallEvent,
    CallSummary,
    EmotionUpdate,
    Encoding,
    Role,
    SessionStarted,
    TranscriptSegment,
    Warning,
)
from service.errors import InvalidArgument

ENCODINGS = {"pcm16le": Encoding.PCM16LE, "pcm16": Encoding.PCM16LE, "mulaw": Encoding.MULAW, "alaw": Encoding.ALAW}
FRAMINGS = ("raw", "seq64")
START_KEYS = {"type", "call_id", "agent_id", "team", "tenant", "audio", "score_roles", "realtime", "framing"}
AUDIO_KEYS = {"encoding", "sample_rate_hz", "channels", "channel_roles"}


def _role(value: Any, where: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidArgument(f"{where}: unknown role {value!r}; expected customer or agent") from None


def _str(doc: dict, key: str, required: bool = True) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"{key}: expected a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidArgument(f"{key} is required")
    return value


def start_from_json(doc: Any) -> tuple[CallConfig, str]:
    """Translate a `start` message into a CallConfig and the binary framing ("raw" or "seq64")."""
    if not isinstance(doc, dict) or doc.get("type") != "start":
        raise InvalidArgument('the first message must be a JSON object with "type": "start"')
    unknown = set(doc) - START_KEYS
    if unknown:
        raise InvalidArgument(f"start: unknown field {sorted(unknown)[0]!r}")
    audio = doc.get("audio")
    if not isinstance(audio, dict):
        raise InvalidArgument("audio: the audio format object is required")
    unknown = set(audio) - AUDIO_KEYS
    if unknown:
        raise InvalidArgument(f"audio: unknown field {sorted(unknown)[0]!r}")
    encoding = ENCODINGS.get(str(audio.get("encoding", "")).lower())
    if encoding is None:
        raise InvalidArgument(f"audio.encoding: unsupported encoding {audio.get('encoding')!r}; expected pcm16le, mulaw or alaw")
    rate, channels = audio.get("sample_rate_hz"), audio.get("channels", 1)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise InvalidArgument(f"audio.sample_rate_hz: expected 8000 or 16000, got {rate!r}")
    if channels not in (1, 2) or isinstance(channels, bool):
        raise InvalidArgument(f"audio.channels: {channels!r} channels are not supported; expected 1 or 2")
    roles_raw = audio.get("channel_roles") or (["customer"] if channels == 1 else ["customer", "agent"])
    if not isinstance(roles_raw, list):
        raise InvalidArgument("audio.channel_roles: expected a list")
    roles = tuple(_role(r, f"audio.channel_roles[{i}]") for i, r in enumerate(roles_raw))
    if len(roles) != channels:
        raise InvalidArgument(f"audio.channel_roles: {len(roles)} roles given for {channels} channel(s)")
    score_raw = doc.get("score_roles") or ["customer"]
    if not isinstance(score_raw, list):
        raise InvalidArgument("score_roles: expected a list")
    realtime = doc.get("realtime", True)
    if not isinstance(realtime, bool):
        raise InvalidArgument(f"realtime: expected true or false, got {realtime!r}")
    framing = doc.get("framing", "raw")
    if framing not in FRAMINGS:
        raise InvalidArgument(f"framing: expected raw or seq64, got {framing!r}")
    config = CallConfig(
        call_id=_str(doc, "call_id"),
        agent_id=_str(doc, "agent_id"),
        team=_str(doc, "team"),
        tenant=_str(doc, "tenant", required=False),
        audio=AudioFormat(encoding, rate, roles),
        score_roles=tuple(dict.fromkeys(_role(r, f"score_roles[{i}]") for i, r in enumerate(score_raw))),
        realtime=realtime,
    )
    return config, framing


TRANSCRIPT_KEYS = {"type", "speaker", "start_ms", "end_ms", "text"}


def transcript_from_json(doc: dict) -> TranscriptSegment:
    """Translate a `transcript` message ({"type": "transcript", "speaker", "start_ms", "end_ms", "text"})."""
    unknown = sorted(set(doc) - TRANSCRIPT_KEYS)
    if unknown:
        raise InvalidArgument(f"transcript: unknown field(s) {', '.join(map(repr, unknown))}")
    for key in ("speaker", "start_ms", "end_ms", "text"):
        if key not in doc:
            raise InvalidArgument(f"transcript.{key} is required")
    return TranscriptSegment(_role(doc["speaker"], "transcript.speaker"), doc["start_ms"], doc["end_ms"], doc["text"])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def event_to_json(event: CallEvent) -> dict[str, Any]:
    """A domain event as the native protocol sends it (same content as the gRPC CallEvent)."""
    if isinstance(event, EmotionUpdate):
        return {
            "type": "emotion",
            "speaker": event.speaker.value,
            "window_start_ms": event.window_start_ms,
            "window_end_ms": event.window_end_ms,
            "scores": [{"label": l, "score": round(s, 6)} for l, s in zip(event.labels, event.scores)],
            "top_label": event.top_label,
            "top_score": round(event.top_score, 6),
            "segment_final": event.segment_final,
            "degraded": event.degraded,
            "latency_ms": round(event.latency_ms, 1),
            "loudness_dbfs": round(event.loudness_dbfs, 1),
            "completed_ms": event.completed_ms,
            "loudness_over_baseline_db": _round(event.loudness_over_baseline_db),
            "pitch_hz": _round(event.pitch_hz),
            "pitch_range_st": _round(event.pitch_range_st),
            "speech_rate_spm": _round(event.speech_rate_spm),
            "speech_rate_cpm": _round(event.speech_rate_cpm),
        }
    if isinstance(event, Alert):
        return {
            "type": "alert",
            "alert_id": event.alert_id,
            "rule_id": event.rule_id,
            "severity": event.severity.label,
            "speaker": event.speaker.value if event.speaker else None,
            "start_ms": event.start_ms,
            "fired_ms": event.fired_ms,
            "message": event.message,
            "degraded": event.degraded,
            "latency_ms": round(event.latency_ms, 1),
            "document": event.document,
        }
    if isinstance(event, SessionStarted):
        return {
            "type": "started",
            "call_id": event.call_id,
            "model": event.model,
            "labels": list(event.labels),
            "scored_roles": [r.value for r in event.scored_roles],
            "window_ms": event.window_ms,
            "hop_ms": event.hop_ms,
        }
    if isinstance(event, Warning):
        return {"type": "warning", "code": event.code, "message": event.message}
    if isinstance(event, CallSummary):
        return {
            "type": "summary",
            "call_id": event.call_id,
            "duration_ms": event.duration_ms,
            "speakers": [
                {
                    "speaker": s.speaker.value,
                    "speech_ms": s.speech_ms,
                    "segments": s.segments,
                    "windows_scored": s.windows_scored,
                    "windows_dropped": s.windows_dropped,
                    "windows_merged": s.windows_merged,
                    "top_labels": [{"label": l, "count": c} for l, c in s.top_labels],
                }
                for s in event.speakers
            ],
            "alert_ids": list(event.alert_ids),
            "reason": event.reason,
            "document": event.document,
        }
    raise TypeError(f"no JSON form for {type(event).__name__}")


def error_to_json(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}
