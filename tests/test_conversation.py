"""Call-level turn-taking (dead air, over-talk, interruptions) on synthetic VAD flags and the stereo speech fixture."""

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import webrtcvad

from service.analytics.conversation import ConversationSnapshot, ConversationTracker, Interruption
from service.domain import Role

SAMPLES = Path(__file__).resolve().parent.parent / "clients" / "samples"
C, A = Role.CUSTOMER, Role.AGENT
FRAME_MS = 20


def flags(total_ms, customer=(), agent=(), stereo=True):
    """VAD flags of (start_ms, end_ms) speech spans per channel, 20 ms frames."""
    out = np.zeros((total_ms // FRAME_MS, 2 if stereo else 1), bool)
    for column, spans in enumerate((customer, agent) if stereo else (customer,)):
        for start, end in spans:
            out[start // FRAME_MS : end // FRAME_MS, column] = True
    return out


def at(snapshots, now_ms):
    (snapshot,) = [s for s in snapshots if s.now_ms == now_ms]
    return snapshot


def test_dead_air_run_reaches_the_silence_length_and_resets_when_someone_speaks():
    """A 6 s mutual silence shows as a dead-air run reaching 6000 ms, is listed with its start and length, holds while the
    next voice is shorter than min_speech_ms and resets to 0 once that voice is speech."""
    tracker = ConversationTracker((C, A))
    snaps = tracker.push(flags(8000, customer=[(0, 1000)], agent=[(7000, 8000)]))
    assert at(snaps, 1100).dead_air_ms == 0  # within the hangover
    assert at(snaps, 1300).dead_air_ms == 300  # dated from the end of the voice
    assert at(snaps, 7000).dead_air_ms == 6000
    assert max(s.dead_air_ms for s in snaps) == 6000
    assert at(snaps, 7200).dead_air_ms == 6000 and at(snaps, 7300).dead_air_ms == 0
    summary = tracker.summary()
    assert summary["silences"] == [{"start_ms": 1000, "duration_ms": 6000}]
    assert summary["silences_total"] == 1 and summary["dead_air_ms"] == 6000


def test_the_agent_taking_the_floor_after_800_ms_of_overlap_is_one_interruption():
    """The agent starting 1 s into the customer's speech, the customer stopping 800 ms later while the agent goes on: one
    interruption by the agent, dated at its start, confirmed once the customer's hangover ran out."""
    tracker = ConversationTracker((C, A))
    snaps = tracker.push(flags(4000, customer=[(0, 1800)], agent=[(1000, 4000)]))
    assert at(snaps, 1600).overtalk_ms == 600 and at(snaps, 1600).overtalk_by is A
    assert at(snaps, 1900).recent_interruptions == ()  # the customer may still go on
    final = Interruption(at_ms=1000, by=A, of=C, overlap_ms=800)
    assert at(snaps, 2100).recent_interruptions == (final,)
    assert tracker.snapshot().interruptions_by(A, 10_000) == (final,)
    assert tracker.snapshot().interruptions_by(C, 10_000) == ()
    summary = tracker.summary()
    assert summary["interruptions"] == {
        "count": 1, "by": {"customer": 0, "agent": 1},
        "events": [{"at_ms": 1000, "by": "agent", "of": "customer", "overlap_ms": 800}],
    }
    assert summary["backchannels"] == {"count": 0, "by": {"customer": 0, "agent": 0}}
    assert summary["overtalk_ms"] == 800


@pytest.mark.parametrize("agent_ms", [300, 800, 1200])
def test_a_short_utterance_while_the_customer_keeps_talking_is_a_back_channel(agent_ms):
    """The agent saying something short (300 ms to 1.2 s) inside the customer's speech, the customer going on: a
    back-channel by the agent, over-talk for its length, and no interruption."""
    tracker = ConversationTracker((C, A))
    snaps = tracker.push(flags(5000, customer=[(0, 4000)], agent=[(1000, 1000 + agent_ms)]))
    assert all(s.recent_interruptions == () for s in snaps)
    assert at(snaps, 1200).overtalk_ms == 200 and at(snaps, 1200).overtalk_by is A
    summary = tracker.summary()
    assert summary["overtalk_ms"] == agent_ms and summary["interruptions"]["count"] == 0
    assert summary["backchannels"] == {"count": 1, "by": {"customer": 0, "agent": 1}}


def test_two_seconds_of_both_talking_is_a_contested_interruption_whoever_stops_first():
    """The agent talking 2 s into the customer's speech and stopping first is still an interruption: the overlap
    reached contest_ms (1.5 s), when it is confirmed; it is no back-channel."""
    tracker = ConversationTracker((C, A))
    snaps = tracker.push(flags(5000, customer=[(0, 4000)], agent=[(1000, 3000)]))
    assert at(snaps, 2400).recent_interruptions == ()
    assert at(snaps, 2500).recent_interruptions == (Interruption(1000, A, C, 1500),)
    summary = tracker.summary()
    assert summary["interruptions"]["events"] == [{"at_ms": 1000, "by": "agent", "of": "customer", "overlap_ms": 2000}]
    assert summary["backchannels"]["count"] == 0


def test_a_take_over_after_a_short_overlap_is_a_change_of_turn():
    """The customer trailing off 300 ms into the agent's answer is neither an interruption nor a back-channel."""
    tracker = ConversationTracker((C, A))
    tracker.push(flags(4000, customer=[(0, 1300)], agent=[(1000, 3000)]))
    summary = tracker.summary()
    assert summary["overtalk_ms"] == 300
    assert summary["interruptions"]["count"] == 0 and summary["backchannels"]["count"] == 0


def test_a_click_inside_a_silence_leaves_it_one_silence():
    """A 200 ms click in the middle of a 7 s silence (mono and stereo) does not split it: one 7 s silence, a dead-air run
    that holds while the click might be speech and then goes on from its full length, and a longer burst (real speech)
    still ends the silence."""
    for stereo in (False, True):
        roles = (C, A) if stereo else (C,)
        tracker = ConversationTracker(roles, min_silence_ms=2000)
        snaps = tracker.push(flags(10000, customer=[(0, 1000), (4400, 4600), (8000, 9000)], agent=[], stereo=stereo))
        assert tracker.summary()["silences"] == [{"start_ms": 1000, "duration_ms": 7000}], stereo
        assert at(snaps, 4400).dead_air_ms == 3400 and at(snaps, 4700).dead_air_ms == 3400
        assert at(snaps, 4900).dead_air_ms == 3900 and at(snaps, 7900).dead_air_ms == 6900
        assert at(snaps, 8400).dead_air_ms == 0
    tracker = ConversationTracker((C,), min_silence_ms=2000)
    tracker.push(flags(10000, customer=[(0, 1000), (4400, 4800), (8000, 9000)], stereo=False))
    assert tracker.summary()["silences"] == [{"start_ms": 1000, "duration_ms": 3400}, {"start_ms": 4800, "duration_ms": 3200}]


def test_a_silence_just_under_the_alert_followed_by_speech_never_reads_longer():
    """A 4.8 s silence ending in speech: the dead-air run never passes 4.8 s while the speech's first 300 ms could still
    be a blip, so a 5 s dead-air rule cannot fire on it."""
    tracker = ConversationTracker((C, A))
    snaps = tracker.push(flags(9000, customer=[(0, 1000)], agent=[(5800, 9000)]))
    assert max(s.dead_air_ms for s in snaps) == 4800
    assert tracker.summary()["silences"] == [{"start_ms": 1000, "duration_ms": 4800}]


def test_min_speech_zero_lets_every_voiced_frame_end_dead_air():
    """With min_speech_ms 0 a single voiced frame ends dead air, as before the blip tolerance."""
    tracker = ConversationTracker((C,), min_silence_ms=2000, min_speech_ms=0)
    tracker.push(flags(10000, customer=[(0, 1000), (4400, 4420), (8000, 9000)], stereo=False))
    assert tracker.summary()["silences"] == [{"start_ms": 1000, "duration_ms": 3400}, {"start_ms": 4420, "duration_ms": 3580}]


@pytest.mark.parametrize("gap_ms, bridged", [(100, True), (400, False)])
def test_hangover_bridges_a_short_gap_but_not_a_long_one(gap_ms, bridged):
    """A 100 ms pause inside a turn is talk, a 400 ms pause is dead air."""
    tracker = ConversationTracker((C,), min_silence_ms=300)
    snaps = tracker.push(flags(3000, customer=[(0, 1000), (1000 + gap_ms, 2000 + gap_ms)], stereo=False))
    summary = tracker.summary()
    if bridged:
        assert summary["talk_ms"] == {"customer": 2000 + gap_ms}
        assert all(s.dead_air_ms == 0 for s in snaps if s.now_ms <= 2000 + gap_ms)
        assert summary["silences"] == [{"start_ms": 2000 + gap_ms, "duration_ms": 1000 - gap_ms}]
    else:
        assert summary["talk_ms"] == {"customer": 2000}
        assert at(snaps, 1400).dead_air_ms == 400
        assert summary["silences"][0] == {"start_ms": 1000, "duration_ms": gap_ms}


def test_hangover_bridges_the_interrupted_speakers_short_pause():
    """An agent starting in a 100 ms pause of the customer, who goes on and then yields, still interrupts the customer."""
    tracker = ConversationTracker((C, A))
    tracker.push(flags(4000, customer=[(0, 1000), (1100, 1800)], agent=[(1040, 4000)]))
    assert tracker.summary()["interruptions"]["events"] == [{"at_ms": 1040, "by": "agent", "of": "customer", "overlap_ms": 760}]


@pytest.mark.parametrize("turn_pause_ms,agent_interruptions", [(400, 0), (0, 1)])
def test_a_comma_pause_of_the_interrupted_speaker_neither_yields_nor_makes_their_resumption_an_interruption(
        turn_pause_ms, agent_interruptions):
    """The customer coming in at 2 s over the agent, the agent pausing 240 ms at a comma and talking on over the
    customer: with turn_pause_ms 400 that is one contested interruption, by the customer, and the over-talk is
    the time both spoke; with no pause tolerance the pause yields the floor and the agent's resumption counts as
    a second interruption, by the agent."""
    tracker = ConversationTracker((C, A), turn_pause_ms=turn_pause_ms)
    tracker.push(flags(9000, customer=[(2000, 7200)], agent=[(0, 2500), (2740, 5620)]))
    summary = tracker.summary()
    assert summary["interruptions"]["by"] == {"customer": 1, "agent": agent_interruptions}
    assert summary["interruptions"]["events"][0]["by"] == "customer"
    assert summary["backchannels"]["count"] == 0
    assert summary["overtalk_ms"] == 500 + (5620 - 2740)


def test_a_back_channel_spoken_in_two_bits_is_one_back_channel():
    """An agent's "mm ... hm" (two 200 ms bits 300 ms apart) inside the customer's speech is one back-channel."""
    tracker = ConversationTracker((C, A), turn_pause_ms=400)
    tracker.push(flags(5000, customer=[(0, 4000)], agent=[(1000, 1200), (1500, 1700)]))
    summary = tracker.summary()
    assert summary["backchannels"]["by"] == {"customer": 0, "agent": 1} and summary["interruptions"]["count"] == 0


def test_a_quick_turn_switch_is_neither_overtalk_nor_interruption():
    """The agent answering 100 ms after the customer stops (inside the customer's hangover) is no over-talk."""
    tracker = ConversationTracker((C, A))
    snaps = tracker.push(flags(3000, customer=[(0, 1000)], agent=[(1100, 2500)]))
    assert all(s.overtalk_ms == 0 and s.dead_air_ms == 0 for s in snaps if s.now_ms <= 2500)
    summary = tracker.summary()
    assert summary["overtalk_ms"] == 0 and summary["interruptions"]["count"] == 0
    assert summary["talk_ms"] == {"customer": 1000, "agent": 1400}


def test_ticks_at_every_boundary_and_identical_however_the_frames_are_split():
    """A snapshot comes at every 100 ms boundary, and 1-frame, 37-frame or single pushes give the same snapshots and summary."""
    rng = np.random.default_rng(5)
    # Alternating runs of voice and silence of random length per channel: talk, pauses, overlaps.
    columns = []
    for _ in range(2):
        runs = rng.integers(2, 120, 200)
        values = np.arange(len(runs)) % 2 == rng.integers(0, 2)
        columns.append(np.repeat(values, runs)[:3000])
    voiced = np.stack(columns, axis=1)
    results = []
    for piece in (1, 37, len(voiced)):
        tracker = ConversationTracker((C, A), min_silence_ms=500)
        snaps = []
        for i in range(0, len(voiced), piece):
            snaps.extend(tracker.push(voiced[i : i + piece]))
        results.append((snaps, tracker.summary()))
    assert [s.now_ms for s in results[0][0]] == list(range(100, 60001, 100))
    assert results[0] == results[1] == results[2]
    summary = results[0][1]
    assert summary["interruptions"]["count"] > 0 and summary["overtalk_ms"] > 0 and summary["silences_total"] > 0


def test_ticks_inside_a_frame_are_reported_at_their_boundary():
    """With 30 ms frames every 100 ms boundary still gets one snapshot, in order."""
    tracker = ConversationTracker((C, A), frame_ms=30)
    snaps = tracker.push(np.zeros((100, 2), bool))
    assert [s.now_ms for s in snaps] == list(range(100, 3001, 100))


def test_skip_advances_the_clock_without_counting_dead_air():
    """A pause advances the clock, its tick snapshots show no dead air, and silence after it is dated from its end."""
    tracker = ConversationTracker((C, A))
    tracker.push(flags(1000, customer=[(0, 1000)]))
    during = tracker.skip(250)
    assert [s.now_ms for s in during] == list(range(1100, 6001, 100))
    assert all(s.dead_air_ms == 0 and s.overtalk_ms == 0 and s.overtalk_by is None for s in during)
    after = tracker.push(flags(3000, agent=[(2500, 3000)]))
    assert at(after, 8500).dead_air_ms == 2500
    summary = tracker.summary()
    assert summary["silences"] == [{"start_ms": 6000, "duration_ms": 2500}]
    assert summary["dead_air_ms"] == 2500
    assert summary["talk_ms"] == {"customer": 1000, "agent": 500}


def test_no_hangover_or_talk_carries_across_a_skip():
    """Speech resuming 100 ms after a pause starts a new turn: the skipped frames are not talk."""
    tracker = ConversationTracker((C,))
    tracker.push(flags(1000, customer=[(0, 1000)], stereo=False))
    tracker.skip(5)
    tracker.push(flags(1000, customer=[(0, 1000)], stereo=False))
    assert tracker.summary()["talk_ms"] == {"customer": 2000}
    assert tracker.snapshot().now_ms == 2100


def test_mono_call_has_dead_air_but_no_overtalk():
    """A mono call reports dead air when its one channel is silent and never over-talk."""
    tracker = ConversationTracker((C,))
    snaps = tracker.push(flags(6000, customer=[(0, 1000), (4000, 6000)], stereo=False))
    assert all(s.overtalk_ms == 0 and s.overtalk_by is None for s in snaps)
    assert at(snaps, 4000).dead_air_ms == 3000
    summary = tracker.summary()
    assert summary["stereo"] is False and summary["overtalk_ms"] == 0
    assert summary["silences"] == [{"start_ms": 1000, "duration_ms": 3000}]
    assert summary["interruptions"] == {"count": 0, "by": {"customer": 0}, "events": []}


def test_summary_talk_ratio_counts_and_bounded_lists():
    """summary() gives talk shares, counts every interruption and long silence, and lists at most max_listed of each."""
    tracker = ConversationTracker((C, A), max_listed=2, min_silence_ms=1000)
    spans_c = [(0, 3000), (5000, 8000), (11500, 14500), (17000, 20000)]
    spans_a = [(1000, 2800), (6000, 7800), (12500, 14300), (17500, 17800)]  # three contested overlaps, one back-channel
    tracker.push(flags(22000, customer=spans_c, agent=spans_a))
    summary = tracker.summary()
    assert summary["talk_ms"] == {"customer": 12000, "agent": 5700}
    assert summary["talk_ratio"] == {"customer": 0.678, "agent": 0.322}
    assert summary["interruptions"]["count"] == 3 and summary["interruptions"]["by"] == {"customer": 0, "agent": 3}
    assert summary["backchannels"] == {"count": 1, "by": {"customer": 0, "agent": 1}}
    assert [e["at_ms"] for e in summary["interruptions"]["events"]] == [6000, 12500]  # the latest two
    # Silences: 2000 ms at 3000, 3500 ms at 8000, 2500 ms at 14500, 2000 ms (still running) at 20000.
    assert summary["silences_total"] == 4
    assert summary["silences"] == [{"start_ms": 8000, "duration_ms": 3500}, {"start_ms": 14500, "duration_ms": 2500}]
    assert summary["dead_air_ms"] == 10000
    assert set(summary) == {"stereo", "talk_ms", "talk_ratio", "dead_air_ms", "silences", "silences_total", "overtalk_ms", "interruptions",
                            "backchannels"}
    silent = ConversationTracker((C, A))
    silent.push(np.zeros((10, 2), bool))
    assert silent.summary()["talk_ratio"] == {"customer": 0.0, "agent": 0.0}


def test_recent_interruptions_age_out_after_history_ms():
    """Interruptions older than history_ms leave the snapshots but stay in the summary; interruptions_by filters by role and age."""
    tracker = ConversationTracker((C, A), history_ms=5000)
    snaps = tracker.push(flags(8000, customer=[(0, 1800)], agent=[(1000, 2800)]))
    snapshot = at(snaps, 3000)
    assert len(snapshot.recent_interruptions) == 1
    assert snapshot.interruptions_by(A, 2500) == snapshot.recent_interruptions
    assert snapshot.interruptions_by(A, 2000) == ()  # at_ms 1000 is not after 3000 - 2000
    assert at(snaps, 6000).recent_interruptions == ()
    assert tracker.summary()["interruptions"]["count"] == 1


def test_push_rejects_flags_of_the_wrong_shape():
    """push raises for flags without one column per channel, and the constructor rejects a repeated role."""
    with pytest.raises(ValueError):
        ConversationTracker((C, A)).push(np.zeros((5, 1), bool))
    with pytest.raises(ValueError):
        ConversationTracker((C, C))


def test_stereo_fixture_turn_taking_matches_its_timings():
    """On the stereo fixture dead air falls where nobody speaks, talk time matches the timings, and there is no interruption."""
    with wave.open(str(SAMPLES / "call_stereo_8k.wav")) as w:
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
    timings = json.loads((SAMPLES / "timings.json").read_text())["call_stereo_8k.wav"]
    step = rate * FRAME_MS // 1000
    n = len(data) // step
    vads = [webrtcvad.Vad(2), webrtcvad.Vad(2)]  # webrtcvad keeps state: one per channel
    voiced = np.array([
        [vads[c].is_speech(np.ascontiguousarray(data[i * step : (i + 1) * step, c]).tobytes(), rate) for c in range(2)]
        for i in range(n)
    ])
    tracker = ConversationTracker((C, A), min_silence_ms=300)
    snaps: list[ConversationSnapshot] = []
    for i in range(0, n, 10):  # 200 ms chunks
        snaps.extend(tracker.push(voiced[i : i + 10]))
    summary = tracker.summary()
    customer = sum(end - start for start, end in timings["customer_speech"]) * 1000
    agent = sum(end - start for start, end in timings["agent_speech"]) * 1000
    assert abs(summary["talk_ms"]["customer"] - customer) < 0.1 * customer
    assert abs(summary["talk_ms"]["agent"] - agent) < 0.1 * agent
    assert summary["interruptions"]["count"] == 0 and summary["overtalk_ms"] == 0
    # The gaps between turns and the tail after the last one are dead air...
    speech = sorted(timings["agent_speech"] + timings["customer_speech"])
    gaps = [(a[1], b[0]) for a, b in zip(speech, speech[1:])] + [(speech[-1][1], n * FRAME_MS / 1000)]
    for start, end in gaps:
        middle = round((start + end) / 2 * 10) * 100
        assert at(snaps, middle).dead_air_ms > 0
        assert any(abs(s["start_ms"] - start * 1000) <= 300 and abs(s["start_ms"] + s["duration_ms"] - end * 1000) <= 300
                   for s in summary["silences"])
    # ...and there is none while someone speaks.
    for s in snaps:
        if any(start + 0.3 <= s.now_ms / 1000 <= end - 0.3 for start, end in speech):
            assert s.dead_air_ms == 0


def test_talk_taken_back_leaves_the_speakers_talk_time_and_ratio_and_nothing_else():
    """retract_talk takes frames back from one speaker's talk time (never below zero; the talk ratio follows) and
    leaves over-talk and the other speaker alone; a negative count is refused and changes nothing."""
    tracker = ConversationTracker((C, A))
    tracker.push(flags(6000, customer=[(0, 4000)], agent=[(3000, 5000)]))
    before = tracker.summary()
    assert before["talk_ms"] == {"customer": 4000, "agent": 2000}
    tracker.retract_talk(1, 50)
    after = tracker.summary()
    assert after["talk_ms"] == {"customer": 4000, "agent": 1000}
    assert after["talk_ratio"]["agent"] == round(1000 / 5000, 3) and after["overtalk_ms"] == before["overtalk_ms"]
    with pytest.raises(ValueError, match="negative"):
        tracker.retract_talk(1, -1)
    tracker.retract_talk(1, 500)
    assert tracker.summary()["talk_ms"] == {"customer": 4000, "agent": 0}
