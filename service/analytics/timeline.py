"""One speaker's emotion timeline within a call: bounded recent history plus running totals."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from service.domain import EmotionUpdate, Role, SpeakerSummary

RECENT_UPDATES = 120


@dataclass
class ChannelTimeline:
    """Accumulates a speaker's scored windows; memory stays bounded for any call length."""

    speaker: Role

    def __post_init__(self) -> None:
        self.recent: deque[EmotionUpdate] = deque(maxlen=RECENT_UPDATES)
        self.top_label_counts: Counter[str] = Counter()
        self.windows_scored = 0
        self.windows_dropped = 0
        self.windows_merged = 0
        self.windows_failed = 0
        self.dropped_since_update = 0

    def add(self, update: EmotionUpdate) -> None:
        self.recent.append(update)
        self.top_label_counts[update.top_label] += 1
        self.windows_scored += 1
        self.dropped_since_update = 0

    def dropped(self) -> None:
        self.windows_dropped += 1
        self.dropped_since_update += 1

    def merged(self) -> None:
        """A window was folded into the next one (its audio is still scored, one update fewer)."""
        self.windows_merged += 1

    def failed(self) -> None:
        self.windows_failed += 1
        self.dropped_since_update += 1

    def summary(self, speech_ms: int, segments: int) -> SpeakerSummary:
        ordered = tuple(sorted(self.top_label_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return SpeakerSummary(
            speaker=self.speaker,
            speech_ms=speech_ms,
            segments=segments,
            windows_scored=self.windows_scored,
            windows_dropped=self.windows_dropped + self.windows_failed,
            top_labels=ordered,
            windows_merged=self.windows_merged,
        )
