"""Domain types shared by the core and the transports: call configuration, audio format and events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from service.config import SUPPORTED_SAMPLE_RATES
from service.errors import InvalidArgument


class Encoding(enum.Enum):
    """Audio sample encoding on the wire."""

    PCM16LE = "pcm16le"
    MULAW = "mulaw"
    ALAW = "alaw"

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is Encoding.PCM16LE else 1


class Role(enum.Enum):
    """Who speaks on a channel."""

    CUSTOMER = "customer"
    AGENT = "agent"


class Severity(enum.IntEnum):
    """Alert severity; ordered so that escalation can compare."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class AudioFormat:
    """How the bridge encodes the call's audio."""

    encoding: Encoding
    """Sample encoding."""
    sample_rate: int
    """Samples per second per channel: 8000 or 16000."""
    channel_roles: tuple[Role, ...]
    """Role of each channel in channel order; its length is the channel count (1 or 2)."""

    def __post_init__(self) -> None:
        if not isinstance(self.encoding, Encoding):
            raise InvalidArgument(f"audio.encoding: unsupported encoding {self.encoding!r}; expected PCM16LE, MULAW or ALAW")
        if self.sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise InvalidArgument(f"audio.sample_rate_hz: {self.sample_rate} Hz is not supported; expected 8000 or 16000")
        if len(self.channel_roles) not in (1, 2):
            raise InvalidArgument(f"audio.channels: {len(self.channel_roles)} channels are not supported; expected 1 or 2")
        if len(set(self.channel_roles)) != len(self.channel_roles):
            raise InvalidArgument("audio.channel_roles: each channel needs a different role")

    @property
    def channels(self) -> int:
        return len(self.channel_roles)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (one sample of every channel)."""
        return self.encoding.bytes_per_sample * self.channels


@dataclass(frozen=True)
class CallConfig:
    """What the bridge declares at the start of a call."""

    call_id: str
    """Bridge-chosen identifier, unique among active calls."""
    agent_id: str
    """Agent whose desktop gets pop-ups (channel {prefix}:agent:{agent_id})."""
    team: str
    """Team whose supervisors get escalations (channel {prefix}:supervisor:{team})."""
    tenant: str
    """Tenant the call belongs to."""
    audio: AudioFormat
    """Audio format."""
    score_roles: tuple[Role, ...] = (Role.CUSTOMER,)
    """Roles whose emotion is scored."""
    realtime: bool = True
    """A live call (paced at most a little faster than real time, windows dropped when the model is
    behind) or a replay (read as fast as the model allows, nothing dropped)."""

    def __post_init__(self) -> None:
        for name in ("call_id", "agent_id", "team"):
            value = getattr(self, name)
            if not value:
                raise InvalidArgument(f"{name} is required")
            if len(value) > 128 or any(c.isspace() or c in ":*?[]" for c in value):
                raise InvalidArgument(f"{name} must be at most 128 characters without spaces or any of ':*?[]'")
        if len(self.tenant) > 128 or any(c.isspace() or c in ":*?[]" for c in self.tenant):
            raise InvalidArgument("tenant must be at most 128 characters without spaces or any of ':*?[]'")
        if not self.score_roles:
            raise InvalidArgument("score_roles must name at least one role")
        missing = [r.value for r in self.score_roles if r not in self.audio.channel_roles]
        if missing:
            raise InvalidArgument(f"score_roles: {', '.join(missing)} has no audio channel (channel_roles: {', '.join(r.value for r in self.audio.channel_roles)})")


MAX_TRANSCRIPT_SEGMENT_MS = 120_000
MAX_TRANSCRIPT_TEXT_CHARS = 10_000


@dataclass(frozen=True)
class TranscriptSegment:
    """One final result of a speech recognizer running beside the call (the telephony platform's, or
    the bridge's): who said it, when, and what. The service only counts its characters."""

    speaker: Role
    """Whose channel the text was recognized on."""
    start_ms: int
    """Call offset where the segment's speech starts."""
    end_ms: int
    """Call offset where it ends; after start_ms, at most MAX_TRANSCRIPT_SEGMENT_MS later."""
    text: str = field(repr=False)
    """The recognized text (never logged; reduced to a character count on arrival)."""

    def __post_init__(self) -> None:
        if not isinstance(self.speaker, Role):
            raise InvalidArgument(f"transcript.speaker: unknown role {self.speaker!r}; expected customer or agent")
        for name in ("start_ms", "end_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"transcript.{name}: expected a whole number of milliseconds >= 0, got {value!r}")
        if self.end_ms <= self.start_ms:
            raise InvalidArgument(f"transcript.end_ms ({self.end_ms}) must be after start_ms ({self.start_ms})")
        if self.end_ms - self.start_ms > MAX_TRANSCRIPT_SEGMENT_MS:
            raise InvalidArgument(f"transcript: a segment of {self.end_ms - self.start_ms} ms is longer than the "
                                  f"{MAX_TRANSCRIPT_SEGMENT_MS} ms allowed; send final results sentence by sentence")
        if not isinstance(self.text, str):
            raise InvalidArgument(f"transcript.text: expected a string, got {type(self.text).__name__}")
        if len(self.text) > MAX_TRANSCRIPT_TEXT_CHARS:
            raise InvalidArgument(f"transcript.text: {len(self.text)} characters, at most {MAX_TRANSCRIPT_TEXT_CHARS}")


@dataclass(frozen=True)
class SessionStarted:
    """The call was accepted."""

    call_id: str
    model: str
    labels: tuple[str, ...]
    scored_roles: tuple[Role, ...]
    window_ms: int
    hop_ms: int


@dataclass(frozen=True)
class EmotionUpdate:
    """Scores of one analysis window of one speaker."""

    speaker: Role
    window_start_ms: int
    window_end_ms: int
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    top_label: str
    top_score: float
    segment_final: bool
    degraded: bool
    latency_ms: float
    loudness_dbfs: float
    completed_ms: int = 0
    """Call offset of the audio whose arrival completed the window."""
    loudness_over_baseline_db: float | None = None
    """loudness_dbfs minus the speaker's baseline; None while the baseline warms up."""
    pitch_hz: float | None = None
    """Median F0 over the window; None without enough voiced speech."""
    pitch_range_st: float | None = None
    """F0 range over the window in semitones."""
    speech_rate_spm: float | None = None
    """Syllable nuclei per minute of speech over the window."""
    speech_rate_cpm: float | None = None
    """Characters per minute of the speaker's transcribed speech (only when the bridge sends a transcript)."""
    embedding: Any = field(default=None, repr=False, compare=False)
    """The window's embedding (numpy array) when the model was asked for them (batch analysis)."""


@dataclass(frozen=True)
class Alert:
    """A rule fired; `document` is the versioned JSON document published everywhere."""

    alert_id: str
    rule_id: str
    severity: Severity
    speaker: Role | None
    """The speaker the rule watched; None for a conversation alert about nobody in particular (dead air)."""
    start_ms: int
    fired_ms: int
    message: str
    degraded: bool
    latency_ms: float
    notify: tuple[str, ...]
    document: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the contract's name
    """Something the bridge should know that does not end the call."""

    code: str
    message: str


@dataclass(frozen=True)
class SpeakerSummary:
    """Per-speaker totals of a call."""

    speaker: Role
    speech_ms: int
    segments: int
    windows_scored: int
    windows_dropped: int
    top_labels: tuple[tuple[str, int], ...]
    windows_merged: int = 0


@dataclass(frozen=True)
class CallSummary:
    """End-of-call summary; `document` is what is published to {prefix}:calls."""

    call_id: str
    duration_ms: int
    speakers: tuple[SpeakerSummary, ...]
    alert_ids: tuple[str, ...]
    reason: str
    document: dict[str, Any] = field(repr=False)


CallEvent = SessionStarted | EmotionUpdate | Alert | Warning | CallSummary
