"""Speech rate from a transcript: characters per minute of each speaker's transcribed speech.

Where a speech recognizer runs beside the call (the telephony platform's, or the bridge's own), its
final results give a second speech rate next to the syllable nuclei: recognized characters per
minute of the speaker's speech, the rate contact-center analytics quote for Chinese and Japanese,
where one character is one syllable, and a usable one for alphabetic languages. A segment's
speaking time is its duration as the recognizer dates it (first to last word), so pauses between
sentences do not count. Only the character count of a segment is kept; its text is dropped on
arrival.
"""

from __future__ import annotations

from collections import deque

RATE_SPAN_MS = 15_000
"""A window's rate covers the speaker's segments that ended in the last RATE_SPAN_MS of call time."""
MIN_RATE_SPEECH_MS = 1_000
"""No rate from less transcribed speech than this."""
HELD_SEGMENTS = 256
"""Segments held per speaker for the windowed rate; when full the oldest is forgotten (the whole-call
totals already counted it, and it ended long before any window still being cut)."""


def count_characters(text: str) -> int:
    """Letters, digits and ideographs of `text`: what is spoken, without spaces and punctuation."""
    return sum(1 for ch in text if ch.isalnum())


class TranscriptRate:
    """One speaker's transcript segments as (start_ms, end_ms, characters), for windowed and whole-call rates.

    A segment with the same start as one still held replaces it (a recognizer that corrects its last
    final result), so its characters are not counted twice."""

    def __init__(self, span_ms: int = RATE_SPAN_MS, held: int = HELD_SEGMENTS) -> None:
        if span_ms <= 0 or held <= 0:
            raise ValueError("span_ms and held must be positive")
        self.span_ms = span_ms
        self._segments: deque[tuple[int, int, int]] = deque(maxlen=held)
        self.characters = 0
        """Characters over the whole call."""
        self.speech_ms = 0
        """Transcribed speaking time over the whole call."""
        self.segments = 0
        """Segments counted over the whole call (a replaced one counts once)."""

    def add(self, start_ms: int, end_ms: int, characters: int) -> None:
        """Count one final segment [start_ms, end_ms) holding `characters` characters."""
        if end_ms <= start_ms or characters < 0:
            raise ValueError(f"invalid segment [{start_ms}, {end_ms}) with {characters} characters")
        for index, (start, end, chars) in enumerate(self._segments):
            if start == start_ms:
                del self._segments[index]
                self.characters -= chars
                self.speech_ms -= end - start
                self.segments -= 1
                break
        self._segments.append((start_ms, end_ms, characters))
        self.characters += characters
        self.speech_ms += end_ms - start_ms
        self.segments += 1

    def rate(self, at_ms: int) -> float | None:
        """Characters per minute over the segments that ended in (at_ms - span_ms, at_ms]; None with less
        than MIN_RATE_SPEECH_MS of their speech (or none at all)."""
        chars = speech = 0
        low = at_ms - self.span_ms
        for start, end, count in self._segments:
            if low < end <= at_ms:
                chars += count
                speech += end - start
        return chars * 60_000.0 / speech if speech >= MIN_RATE_SPEECH_MS else None

    def totals(self) -> dict:
        """Whole-call figures for the summary: rate (None with too little transcribed speech), characters,
        transcribed speaking time and segment count."""
        rate = self.characters * 60_000.0 / self.speech_ms if self.speech_ms >= MIN_RATE_SPEECH_MS else None
        return {
            "speech_rate_cpm": None if rate is None else round(rate, 1),
            "transcript_chars": self.characters,
            "transcript_ms": self.speech_ms,
            "transcript_segments": self.segments,
        }
