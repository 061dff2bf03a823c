"""Transcript segments: validation, character counting, the windowed and whole-call characters-per-minute rate."""

import json

import pytest

from service.analytics.transcript import MIN_RATE_SPEECH_MS, TranscriptRate, count_characters
from service.batch import read_transcript, transcript_path
from service.domain import MAX_TRANSCRIPT_SEGMENT_MS, MAX_TRANSCRIPT_TEXT_CHARS, Role, TranscriptSegment
from service.errors import InvalidArgument
from service.transport.json_events import transcript_from_json


def test_characters_are_letters_digits_and_ideographs_without_spaces_or_punctuation():
    """Spaces and punctuation are not spoken characters; letters, digits and CJK ideographs are."""
    assert count_characters("Hello, world!") == 10
    assert count_characters("I need 2 tyres.") == 11
    assert count_characters("你好，世界。") == 4
    assert count_characters("  ...  ") == 0


def test_rate_over_the_segments_that_ended_in_the_span():
    """The windowed rate sums the characters and durations of the segments that ended in (at - span, at]."""
    rate = TranscriptRate(span_ms=15_000)
    rate.add(0, 2_000, 30)
    rate.add(3_000, 5_000, 40)
    assert rate.rate(1_999) is None  # nothing has ended yet
    assert rate.rate(2_000) == 30 * 60_000 / 2_000
    assert rate.rate(5_000) == 70 * 60_000 / 4_000
    assert rate.rate(17_500) == 40 * 60_000 / 2_000  # the first segment ended more than 15 s before
    assert rate.rate(20_001) is None


def test_too_little_transcribed_speech_gives_no_rate():
    """Less than MIN_RATE_SPEECH_MS of transcribed speech gives no rate, in a window or over the call."""
    rate = TranscriptRate()
    rate.add(0, MIN_RATE_SPEECH_MS - 1, 12)
    assert rate.rate(5_000) is None
    assert rate.totals()["speech_rate_cpm"] is None and rate.totals()["transcript_chars"] == 12


def test_a_segment_with_the_same_start_replaces_the_earlier_one():
    """A recognizer that corrects its last final result (same start) does not count the characters twice."""
    rate = TranscriptRate()
    rate.add(1_000, 3_000, 20)
    rate.add(1_000, 3_500, 25)
    assert rate.totals() == {"speech_rate_cpm": round(25 * 60_000 / 2_500, 1), "transcript_chars": 25,
                             "transcript_ms": 2_500, "transcript_segments": 1}
    assert rate.rate(3_500) == 25 * 60_000 / 2_500


def test_held_segments_are_bounded_and_the_totals_keep_everything():
    """Past `held` segments the oldest is forgotten for the windowed rate; the whole-call totals still count it."""
    rate = TranscriptRate(span_ms=100_000, held=3)
    for i in range(5):
        rate.add(i * 2_000, i * 2_000 + 1_000, 10 * (i + 1))
    assert rate.rate(10_000) == (30 + 40 + 50) * 60_000 / 3_000
    totals = rate.totals()
    assert totals["transcript_chars"] == 150 and totals["transcript_segments"] == 5 and totals["transcript_ms"] == 5_000


@pytest.mark.parametrize("kwargs, message", [
    ({"end_ms": 1_000}, "must be after start_ms"),
    ({"start_ms": -5}, "start_ms: expected a whole number"),
    ({"end_ms": 2.5}, "end_ms: expected a whole number"),
    ({"start_ms": True}, "start_ms: expected a whole number"),
    ({"end_ms": 1_000 + MAX_TRANSCRIPT_SEGMENT_MS + 1}, "longer than"),
    ({"text": None}, "transcript.text: expected a string"),
    ({"text": "x" * (MAX_TRANSCRIPT_TEXT_CHARS + 1)}, "at most"),
    ({"speaker": "customer"}, "transcript.speaker: unknown role"),
])
def test_invalid_segments_are_refused_with_the_field_named(kwargs, message):
    """Each invalid field of a segment raises InvalidArgument that names it."""
    fields = {"speaker": Role.CUSTOMER, "start_ms": 1_000, "end_ms": 2_000, "text": "fine"} | kwargs
    with pytest.raises(InvalidArgument, match=message):
        TranscriptSegment(**fields)


def test_segment_text_stays_out_of_its_repr():
    """The recognized text is personal data: a segment's repr (what a log line would show) leaves it out."""
    segment = TranscriptSegment(Role.AGENT, 0, 1_000, "my card number is 4111")
    assert "4111" not in repr(segment)


def test_native_transcript_message():
    """The native protocol's transcript message becomes a segment; unknown or missing fields are named."""
    segment = transcript_from_json({"type": "transcript", "speaker": "agent", "start_ms": 10, "end_ms": 900, "text": "ok"})
    assert segment == TranscriptSegment(Role.AGENT, 10, 900, "ok")
    with pytest.raises(InvalidArgument, match="unknown field"):
        transcript_from_json({"type": "transcript", "speaker": "agent", "start_ms": 10, "end_ms": 900, "text": "", "lang": "en"})
    with pytest.raises(InvalidArgument, match="transcript.end_ms is required"):
        transcript_from_json({"type": "transcript", "speaker": "agent", "start_ms": 10, "text": ""})
    with pytest.raises(InvalidArgument, match="unknown role"):
        transcript_from_json({"type": "transcript", "speaker": "caller", "start_ms": 10, "end_ms": 900, "text": ""})


def test_transcript_file_beside_a_recording(tmp_path):
    """A recording's NAME.transcript.json is read as a list or {"segments": [...]}, ordered by end; a bad
    segment is reported with the file and its index."""
    recording = tmp_path / "call-7.wav"
    path = transcript_path(str(recording))
    assert path == str(tmp_path / "call-7.transcript.json")
    segments = [{"speaker": "customer", "start_ms": 5_000, "end_ms": 7_000, "text": "later"},
                {"speaker": "agent", "start_ms": 0, "end_ms": 1_500, "text": "hello"}]
    (tmp_path / "call-7.transcript.json").write_text(json.dumps({"segments": segments}))
    assert [s.end_ms for s in read_transcript(path)] == [1_500, 7_000]
    (tmp_path / "call-7.transcript.json").write_text(json.dumps(segments[:1] + [dict(segments[1], end_ms=-1)]))
    with pytest.raises(InvalidArgument, match=r"call-7.transcript.json: segments\[1\]: .*end_ms"):
        read_transcript(path)
    (tmp_path / "call-7.transcript.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="cannot read the transcript"):
        read_transcript(path)
