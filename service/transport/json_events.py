"""JSON wire shapes of the native WebSocket protocol: the `start`, `transcript` and `stop` messages in (strictly typed),
events and errors out."""

from __future__ import annotations

import re
from typing import Any

from service.domain import (
    MAX_TRANSCRIPT_TEXT_CHARS,
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
from service.transport.wire_json import boolean, integer, obj, parse_json, string, string_list

ENCODINGS = {"pcm16le": Encoding.PCM16LE, "pcm16": Encoding.PCM16LE, "mulaw": Encoding.MULAW, "alaw": Encoding.ALAW}
FRAMINGS = ("raw", "seq64")
START_KEYS = {"type", "call_id", "agent_id", "team", "tenant", "audio", "score_roles", "realtime", "framing"}
AUDIO_KEYS = {"encoding", "sample_rate_hz", "channels", "channel_roles"}
TRANSCRIPT_KEYS = {"type", "speaker", "start_ms", "end_ms", "text"}
MAX_MESSAGE_CHARS = 128 * 1024
"""A suggested `max_chars` for native text messages: a transcript of MAX_TRANSCRIPT_TEXT_CHARS fits, escapes included."""
MAX_OFFSET_MS = 10**12
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _shown(value: str) -> str:
    """An enumeration value the caller sent, for an error text: quoted, at most 40 characters."""
    return repr(value[:40] + "..." if len(value) > 40 else value)


def _role(value: Any, where: str) -> Role:
    try:
        return Role(string(value, where, max_len=64))
    except ValueError:
        raise InvalidArgument(f"{where}: unknown role {_shown(value)}; expected customer or agent") from None


def _unknown(doc: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise InvalidArgument(f"{where}: unknown field {_shown(unknown[0])}{more}")


def native_message(text: str, *, max_chars: int) -> tuple[str, dict[str, Any]]:
    """Parse one native text message into its `type` and the whole object (start_from_json, transcript_from_json
    and stop_from_json read the rest)."""
    doc = parse_json(text, max_chars=max_chars, what="message")
    try:
        return string(obj(doc, "message").get("type"), "type", max_len=64), doc
    except InvalidArgument:
        raise InvalidArgument('a message must be a JSON object with a "type" string of at most 64 characters') from None


def start_from_json(doc: Any) -> tuple[CallConfig, str]:
    """Translate a `start` message into a CallConfig and the binary framing ("raw" or "seq64"); every field is
    type-checked (numbers are JSON integers, never 2.0 or true)."""
    if type(doc) is not dict or doc.get("type") != "start":
        raise InvalidArgument('the first message must be a JSON object with "type": "start"')
    _unknown(doc, START_KEYS, "start")
    audio = doc.get("audio")
    if type(audio) is not dict:
        raise InvalidArgument("audio: the audio format object is required")
    _unknown(audio, AUDIO_KEYS, "audio")
    encoding_name = string(audio.get("encoding"), "audio.encoding", max_len=64)
    encoding = ENCODINGS.get(encoding_name.lower())
    if encoding is None:
        raise InvalidArgument(f"audio.encoding: unsupported encoding {_shown(encoding_name)}; expected pcm16le, mulaw or alaw")
    rate = integer(audio.get("sample_rate_hz"), "audio.sample_rate_hz", lo=0, hi=2**31 - 1)
    channels = integer(audio.get("channels", 1), "audio.channels", lo=1, hi=2)
    roles_raw = string_list(audio.get("channel_roles", ["customer", "agent"][:channels]), "audio.channel_roles", max_items=2)
    roles = tuple(_role(r, f"audio.channel_roles[{i}]") for i, r in enumerate(roles_raw))
    if len(roles) != channels:
        raise InvalidArgument(f"audio.channel_roles: {len(roles)} roles given for {channels} channel(s)")
    score_raw = string_list(doc.get("score_roles", []), "score_roles", max_items=4) or ["customer"]
    realtime = boolean(doc.get("realtime", True), "realtime")
    framing = string(doc.get("framing", "raw"), "framing", max_len=64)
    if framing not in FRAMINGS:
        raise InvalidArgument(f"framing: expected raw or seq64, got {_shown(framing)}")
    config = CallConfig(
        call_id=string(doc.get("call_id"), "call_id"),
        agent_id=string(doc.get("agent_id"), "agent_id"),
        team=string(doc.get("team"), "team"),
        tenant=string(doc.get("tenant", ""), "tenant", required=False),
        audio=AudioFormat(encoding, rate, roles),
        score_roles=tuple(dict.fromkeys(_role(r, f"score_roles[{i}]") for i, r in enumerate(score_raw))),
        realtime=realtime,
    )
    return config, framing


def transcript_from_json(doc: Any) -> TranscriptSegment:
    """Translate a `transcript` message ({"type": "transcript", "speaker", "start_ms", "end_ms", "text"}); the
    text is never part of an error message."""
    if type(doc) is not dict:
        raise InvalidArgument("transcript: expected an object")
    _unknown(doc, TRANSCRIPT_KEYS, "transcript")
    for key in ("speaker", "start_ms", "end_ms", "text"):
        if key not in doc:
            raise InvalidArgument(f"transcript.{key} is required")
    return TranscriptSegment(
        _role(doc["speaker"], "transcript.speaker"),
        integer(doc["start_ms"], "transcript.start_ms", lo=0, hi=MAX_OFFSET_MS),
        integer(doc["end_ms"], "transcript.end_ms", lo=0, hi=MAX_OFFSET_MS),
        string(doc["text"], "transcript.text", required=False, max_len=MAX_TRANSCRIPT_TEXT_CHARS),
    )


def stop_from_json(doc: Any) -> str:
    """The reason of a `stop` message: a word of letters, digits, "_" and "-" up to 64 characters ("end_of_call"
    when absent). Other fields are ignored."""
    if type(doc) is not dict or doc.get("type") != "stop":
        raise InvalidArgument('stop: expected a JSON object with "type": "stop"')
    reason = string(doc.get("reason", "end_of_call"), "stop.reason", max_len=64)
    if not _TOKEN.fullmatch(reason):
        raise InvalidArgument("stop.reason: expected a word of letters, digits, '_' or '-'")
    return reason


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
