"""One speaker's emotion timeline within a call: recent history, running totals, the 1 s trajectory and peaks."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from service.domain import EmotionUpdate, Role, SpeakerSummary

RECENT_UPDATES = 120
TRAJECTORY_RESOLUTION_MS = 1000
NEGATIVE_LABELS = ("angry", "disgusted", "fearful", "sad")
"""Labels whose summed score is a moment's negative emotion (peaks, the QA report's shaded area)."""


@dataclass
class ChannelTimeline:
    """Accumulates a speaker's scored windows.

    The trajectory holds one point per second of call time in which the speaker's new speech was
    scored (the mean of the windows' scores weighted by the new speech each adds to that second), so
    it grows with the call's speech, bounded by the maximum call duration.
    """

    speaker: Role

    def __post_init__(self) -> None:
        self.recent: deque[EmotionUpdate] = deque(maxlen=RECENT_UPDATES)
        self.top_label_counts: Counter[str] = Counter()
        self.windows_scored = 0
        self.windows_dropped = 0
        self.windows_merged = 0
        self.windows_failed = 0
        self.dropped_since_update = 0
        self._seconds: dict[int, list] = {}  # second -> [weight_ms, score sums (float64)]

    def add(self, update: EmotionUpdate, new_from_ms: int | None = None) -> None:
        """Record a scored window; its scores count for the seconds its new speech [new_from_ms, end) covers."""
        self.recent.append(update)
        self.top_label_counts[update.top_label] += 1
        self.windows_scored += 1
        self.dropped_since_update = 0
        start = update.window_start_ms if new_from_ms is None else new_from_ms
        end = update.window_end_ms
        if end <= start:
            return
        scores = np.asarray(update.scores, dtype=np.float64)
        res = TRAJECTORY_RESOLUTION_MS
        for second in range(start // res, (end - 1) // res + 1):
            weight = min(end, (second + 1) * res) - max(start, second * res)
            if weight <= 0:
                continue
            slot = self._seconds.get(second)
            if slot is None:
                self._seconds[second] = [weight, scores * weight]
            else:
                slot[0] += weight
                slot[1] += scores * weight

    def dropped(self) -> None:
        self.windows_dropped += 1
        self.dropped_since_update += 1

    def merged(self) -> None:
        """A window was folded into the next one (its audio is still scored, one update fewer)."""
        self.windows_merged += 1

    def failed(self) -> None:
        self.windows_failed += 1
        self.dropped_since_update += 1

    @property
    def trajectory_points(self) -> int:
        return len(self._seconds)

    def trajectory(self) -> list[tuple[int, np.ndarray]]:
        """(call offset of the second in ms, mean scores) for every second with scored speech, in order."""
        return [(second * TRAJECTORY_RESOLUTION_MS, slot[1] / slot[0]) for second, slot in sorted(self._seconds.items())]

    def peaks(self, labels: tuple[str, ...], count: int, separation_ms: int) -> list[dict]:
        """The `count` seconds of strongest negative emotion, at least `separation_ms` apart, strongest first."""
        negative = [i for i, label in enumerate(labels) if label in NEGATIVE_LABELS]
        if not negative or count <= 0:
            return []
        candidates = []
        for t_ms, scores in self.trajectory():
            value = float(scores[negative].sum())
            top = negative[int(np.argmax(scores[negative]))]
            candidates.append((value, t_ms, labels[top]))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        chosen: list[tuple[float, int, str]] = []
        for value, t_ms, label in candidates:
            if len(chosen) >= count:
                break
            if all(abs(t_ms - other[1]) >= separation_ms for other in chosen):
                chosen.append((value, t_ms, label))
        return [
            {"start_ms": t_ms, "end_ms": t_ms + TRAJECTORY_RESOLUTION_MS, "score": round(value, 4), "label": label}
            for value, t_ms, label in chosen
        ]

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
