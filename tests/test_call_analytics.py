"""CallAnalytics on its own: how many frames it lets the session hold, what a cut window carries, and the summary parts."""

from __future__ import annotations

import numpy as np

from service.analytics.gate import BLOCK_FRAMES
from service.audio.channel import AnalysisWindow
from service.call_analytics import CallAnalytics
from service.config import AnalyticsConfig, WindowConfig
from service.domain import Role, TranscriptSegment

RATE = 8000
FRAME = RATE // 50
ROLES = (Role.CUSTOMER, Role.AGENT)


def _analytics(**settings) -> CallAnalytics:
    return CallAnalytics(ROLES, RATE, 20, WindowConfig(), AnalyticsConfig(**settings))


def _voice(seconds: float, f0: float = 150.0) -> np.ndarray:
    """A buzzy vowel-like tone (harmonics of f0 with a 4 Hz syllable envelope) as int16."""
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (wave * envelope * 5000).astype(np.int16)


def test_the_hold_limit_ends_on_a_tick_and_shrinks_to_a_gate_block_while_windows_wait():
    """Without ticks the session may hold analysis_ms of frames; with ticks the span ends on a tick; while a window waits
    for a gate to decide, it holds a gate block at most."""
    analytics = _analytics(analysis_ms=500, tick_ms=100)
    assert analytics.hold_limit(deferring=False, needs_ticks=False) == 25
    assert analytics.hold_limit(deferring=False, needs_ticks=True) == 25  # 500 ms is five whole ticks from 0
    analytics.analyse([np.zeros(3 * FRAME, np.int16)] * 2, np.zeros((3, 2), bool))  # 60 ms: the next tick is 40 ms away
    assert analytics.hold_limit(deferring=False, needs_ticks=True) == 2 + 20
    assert analytics.hold_limit(deferring=True, needs_ticks=False) == BLOCK_FRAMES


def test_a_window_carries_its_speakers_figures_and_a_transcript_rate_and_the_summary_counts_its_speech():
    """A window measured after its speaker's voiced frames carries their voiced time and the transcript's character
    rate; the summary part of that speaker counts the voiced speech and the other speaker's is silent."""
    analytics = _analytics(steady_gate=False)
    voice = _voice(2.0)
    frames = len(voice) // FRAME
    silence = np.zeros_like(voice)
    analytics.analyse([voice, silence], np.column_stack([np.ones(frames, bool), np.zeros(frames, bool)]))
    mono = CallAnalytics((Role.CUSTOMER,), RATE, 20, WindowConfig(), AnalyticsConfig())
    assert analytics.has_speaker(Role.AGENT) and mono.has_speaker(Role.CUSTOMER) and not mono.has_speaker(Role.AGENT)
    analytics.add_transcript(TranscriptSegment(Role.CUSTOMER, 0, 2000, "a" * 10))
    window = AnalysisWindow(role=Role.CUSTOMER, segment_index=0, sample_rate=RATE, start_sample=0, end_sample=len(voice),
                            encode_from_sample=0, new_from_sample=len(voice) // 2, final=False, cut_sample=len(voice),
                            arrival=0.0, samples=voice)
    (measured,) = analytics.measure([window])
    figures = measured.analytics.prosody
    assert figures.voiced_ms == 2000 and figures.speech_rate_cpm == 300.0
    assert figures.pitch_hz is not None and abs(figures.pitch_hz - 150.0) < 10
    assert measured.analytics.speech_ms == 2000
    assert analytics.speaker_summary(Role.CUSTOMER)["prosody"]["voiced_ms"] == 2000
    assert analytics.speaker_summary(Role.AGENT)["prosody"]["voiced_ms"] == 0
    assert "hold" not in analytics.conversation_summary()  # no gates, no holds


def test_a_stretch_without_audio_advances_the_conversation_clock():
    """skip_conversation moves the turn-taking clock over the stretch (its ticks come back) and later frames follow it."""
    analytics = _analytics(steady_gate=False, tick_ms=100)
    analytics.skip_tracks(50)
    ticks = analytics.skip_conversation(50)  # 1 s
    assert [t.now_ms for t in ticks] == list(range(100, 1001, 100))
