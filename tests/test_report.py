"""QA report rendering: the call report HTML, the cross-call heatmap SVG and the batch CSV."""

from __future__ import annotations

import copy
import csv
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from service.report import (
    CSV_COLUMNS,
    NEGATIVE_LABELS,
    TEST_MODEL_BANNER,
    render_call_report,
    render_heatmap_svg,
    write_batch_csv,
)

LABELS = ["angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown"]
SVG_NS = "{http://www.w3.org/2000/svg}"
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


def _scores(**values: float) -> list[float]:
    return [values.get(label, 0.0) for label in LABELS]


def _prosody(**overrides):
    prosody = {"loudness_dbfs": -24.1, "baseline_dbfs": -25.0, "pitch_hz": 180.2, "pitch_range_st": 6.1,
               "speech_rate_spm": 190.0, "voiced_ms": 100000, "nuclei": 320}
    prosody.update(overrides)
    return prosody


def make_summary() -> dict:
    """A stereo call: customer scored with a gap in speech (12-14 s, then 20-22 s), agent not scored."""
    points = [{"t_ms": t, "scores": _scores(angry=0.1 * i, fearful=0.05, neutral=0.6 - 0.05 * i, happy=0.05)}
              for i, t in enumerate([12000, 13000, 14000])]
    points += [{"t_ms": t, "scores": _scores(angry=0.7, sad=0.1, neutral=0.1)} for t in (20000, 21000, 22000)]
    return {
        "schema_version": 2, "type": "call_summary", "call_id": "c1", "agent_id": "a1", "team": "t1", "tenant": "",
        "wall_time": "2026-11-21T12:00:00.000Z", "reason": "end_of_call", "duration_ms": 245000,
        "model": "emotion2vec_plus_large", "alert_count": 2, "labels": list(LABELS),
        "speakers": [
            {"speaker": "customer", "scored": True, "speech_ms": 120000, "segments": 40,
             "windows_scored": 200, "windows_merged": 0, "windows_dropped": 0, "windows_skipped": 6,
             "top_labels": {"neutral": 150, "angry": 50}, "prosody": _prosody(laughs=3, laughter_ms=4200),
             "trajectory": {"resolution_ms": 1000, "points": points},
             "peaks": [{"start_ms": 40000, "end_ms": 43000, "score": 0.82, "label": "angry"},
                       {"start_ms": 125000, "end_ms": 128000, "score": 0.61, "label": "sad"}]},
            {"speaker": "agent", "scored": False, "speech_ms": 90000, "crosstalk_ms": 7300, "segments": 30, "windows_scored": 0,
             "windows_merged": 0, "windows_dropped": 0, "top_labels": {},
             "prosody": _prosody(loudness_dbfs=None, pitch_hz=None, speech_rate_spm=None),
             "trajectory": {"resolution_ms": 1000, "points": []}, "peaks": []},
        ],
        "conversation": {
            "stereo": True, "talk_ms": {"customer": 120000, "agent": 90000},
            "talk_ratio": {"customer": 0.571, "agent": 0.429}, "dead_air_ms": 30000,
            "silences": [{"start_ms": 60000, "duration_ms": 6000}, {"start_ms": 185000, "duration_ms": 9500}],
            "silences_total": 2, "overtalk_ms": 4000,
            "backchannels": {"count": 4, "by": {"agent": 1, "customer": 3}},
            "hold": {"ms": 95000, "count": 2},
            "interruptions": {"count": 3, "by": {"agent": 2, "customer": 1},
                              "events": [{"at_ms": 50000, "by": "agent", "of": "customer", "overlap_ms": 800}]},
        },
        "alerts": [
            {"alert_id": "ab12", "rule_id": "customer-upset-fast", "severity": "high", "speaker": "customer",
             "start_ms": 40000, "fired_ms": 45200, "message": "Customer upset and speaking fast",
             "reason": "angry+fearful 0.74 avg over 5.2 s; 212 syllables/min"},
            {"alert_id": "cd34", "rule_id": "dead-air", "severity": "medium", "speaker": None,
             "start_ms": 185000, "fired_ms": 193000, "message": "Long silence", "reason": "9.5 s without speech"},
        ],
    }


def make_empty_mono_summary() -> dict:
    """A mono call with no speech at all: nothing scored, no points, no alerts, no silences listed."""
    return {
        "schema_version": 2, "type": "call_summary", "call_id": "empty-1", "agent_id": "a9", "team": "t9",
        "tenant": "", "wall_time": "2026-11-21T12:00:00.000Z", "reason": "end_of_call", "duration_ms": 0,
        "model": "emotion2vec_plus_large", "alert_count": 0, "labels": list(LABELS),
        "speakers": [
            {"speaker": "customer", "scored": True, "speech_ms": 0, "segments": 0, "windows_scored": 0,
             "windows_merged": 0, "windows_dropped": 0, "top_labels": {},
             "prosody": {key: None for key in _prosody()},
             "trajectory": {"resolution_ms": 1000, "points": []}, "peaks": []},
        ],
        "conversation": {"stereo": False, "talk_ms": {"customer": 0}, "talk_ratio": {"customer": 0.0},
                         "dead_air_ms": 0, "silences": [], "silences_total": 0, "overtalk_ms": 0,
                         "interruptions": {"count": 0, "by": {}, "events": []}},
        "alerts": [],
    }


class _Balance(HTMLParser):
    """Tracks open elements; records any end tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.starts: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.starts[tag] = self.starts.get(tag, 0) + 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.starts[tag] = self.starts.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> while open: {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Balance:
    parser = _Balance()
    parser.feed(page)
    parser.close()
    return parser


def _charts(page: str) -> list[ET.Element]:
    return [ET.fromstring(fragment) for fragment in re.findall(r'<svg class="chart".*?</svg>', page, flags=re.S)]


def _lines(chart: ET.Element, label: str) -> list[ET.Element]:
    return [el for el in chart.iter(f"{SVG_NS}polyline") if el.get("data-label") == label]


def test_report_is_balanced_html_with_the_call_facts():
    """The report parses with every element closed in order and shows call id, agent, team, duration and reason."""
    page = render_call_report(make_summary())
    parser = _parse(page)
    assert parser.errors == [] and parser.stack == []
    text = " ".join(parser.text)
    for fact in ("c1", "a1", "t1", "04:05", "end_of_call", "emotion2vec_plus_large"):
        assert fact in text
    assert page.startswith("<!DOCTYPE html>")


def test_report_is_self_contained():
    """The page loads nothing from outside: no scripts, no external links or images."""
    page = render_call_report(make_summary())
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page


def test_one_chart_per_scored_speaker_with_a_line_per_negative_label():
    """Only the scored customer gets a chart, with a polyline for each negative label and for neutral and happy."""
    charts = _charts(render_call_report(make_summary()))
    assert [c.get("data-speaker") for c in charts] == ["customer"]
    for label in NEGATIVE_LABELS + ("neutral", "happy"):
        assert _lines(charts[0], label), label
    colours = {_lines(charts[0], label)[0].get("stroke") for label in NEGATIVE_LABELS}
    assert len(colours) == len(NEGATIVE_LABELS)


def test_line_breaks_where_points_are_more_than_one_resolution_apart():
    """Points at 12-14 s and 20-22 s draw two separate segments per line and two negative areas."""
    chart = _charts(render_call_report(make_summary()))[0]
    angry = _lines(chart, "angry")
    assert len(angry) == 2
    assert [len(line.get("points").split()) for line in angry] == [3, 3]
    areas = [el for el in chart.iter(f"{SVG_NS}path") if el.get("class") == "negative-area"]
    assert len(areas) == 2


def test_points_exactly_one_resolution_apart_stay_one_line():
    """Consecutive points one resolution apart are joined into a single segment."""
    summary = make_summary()
    summary["speakers"][0]["trajectory"]["points"] = [
        {"t_ms": t, "scores": _scores(angry=0.3, neutral=0.5)} for t in range(0, 10000, 1000)
    ]
    angry = _lines(_charts(render_call_report(summary))[0], "angry")
    assert len(angry) == 1 and len(angry[0].get("points").split()) == 10


def test_lines_scale_score_to_chart_height():
    """A higher score is drawn higher on the chart (smaller y)."""
    chart = _charts(render_call_report(make_summary()))[0]
    first_run = _lines(chart, "angry")[0].get("points").split()
    ys = [float(p.split(",")[1]) for p in first_run]
    assert ys[0] > ys[1] > ys[2]


def test_alert_markers_carry_rule_ids_as_tooltips():
    """Each alert (speaker alert and call-level alert) has a marker on the chart with its rule id in a <title>."""
    chart = _charts(render_call_report(make_summary()))[0]
    markers = [g for g in chart.iter(f"{SVG_NS}g") if g.get("class") == "alert-marker"]
    assert sorted(g.get("data-rule-id") for g in markers) == ["customer-upset-fast", "dead-air"]
    for g in markers:
        assert g.get("data-rule-id") in g.find(f"{SVG_NS}title").text


def test_silence_bands_and_peak_dots_are_drawn():
    """The call's silences are shaded bands and each peak is a dot on the chart."""
    chart = _charts(render_call_report(make_summary()))[0]
    bands = [r for r in chart.iter(f"{SVG_NS}rect") if r.get("class") == "silence"]
    dots = [c for c in chart.iter(f"{SVG_NS}circle") if c.get("class") == "peak"]
    assert len(bands) == 2 and len(dots) == 2
    assert "01:00" in bands[0].find(f"{SVG_NS}title").text


def test_x_axis_has_mmss_ticks():
    """The chart's time axis is labelled in mm:ss up to the call's end."""
    chart = _charts(render_call_report(make_summary()))[0]
    ticks = [t.text for t in chart.iter(f"{SVG_NS}text") if t.text and re.fullmatch(r"\d\d:\d\d", t.text)]
    assert ticks[0] == "00:00" and "04:00" in ticks


def _table_rows(page: str, css: str) -> list[list[str]]:
    table = re.search(rf'<table class="{css}">.*?</table>', page, flags=re.S)
    assert table, css
    root = ET.fromstring(table.group(0))
    return [["".join(td.itertext()) for td in tr.findall("td")] for tr in root.iter("tr") if tr.findall("td")]


def test_tables_list_peaks_alerts_silences_and_interruptions_with_mmss_times():
    """Peaks, alerts, silences and interruptions each get a table row with mm:ss times."""
    page = render_call_report(make_summary())
    assert _table_rows(page, "peaks") == [
        ["00:40", "00:43", "customer", "angry", "0.82"], ["02:05", "02:08", "customer", "sad", "0.61"]]
    alerts = _table_rows(page, "alerts")
    assert alerts[0][:4] == ["00:45", "customer-upset-fast", "high", "customer"]
    assert alerts[0][5] == "angry+fearful 0.74 avg over 5.2 s; 212 syllables/min"
    assert alerts[1][:4] == ["03:13", "dead-air", "medium", "call"]
    assert _table_rows(page, "silences") == [["01:00", "01:06", "6.0 s"], ["03:05", "03:14", "9.5 s"]]
    assert _table_rows(page, "interruptions") == [["00:50", "agent interrupted customer", "0.8 s"]]


def test_key_figures_and_prosody_are_shown():
    """Talk ratio, dead air, over-talk, interruptions, alerts and non-null prosody values appear."""
    page = render_call_report(make_summary())
    text = " ".join(_parse(page).text)
    assert "customer 57%" in text and "agent 43%" in text
    assert "30.0 s" in text and "2 long silences" in text and "4.0 s" in text
    assert "by agent 2 · by customer 1 · back-channels 4 (not counted)" in text
    assert "On hold" in text and "95.0 s" in text and "2 holds (music or tones)" in text
    assert "-24.1 dBFS" in text and "180 Hz" in text and "6.1 st" in text and "190 syllables/min" in text
    # the agent's null loudness/pitch/rate are left out, its baseline is shown
    agent_card = re.search(r"<h3>agent</h3>.*?</div></div>", page, flags=re.S).group(0)
    assert "Pitch<" not in agent_card and "-25.0 dBFS" in agent_card
    assert "leaking in (not counted)</dt><dd>7.3 s" in agent_card  # crosstalk shown only where there was some
    assert page.count("leaking in (not counted)") == 1
    assert "Laughter (not syllables)</dt><dd>3 (4.2 s)" in page and page.count("Laughter (not syllables)") == 1
    assert "dropped 0, skipped (no own speech) 6" in page and page.count("skipped (no own speech)") == 1


def test_test_model_banner_only_for_test_models():
    """The 'untrained TEST MODEL' banner appears when the model name says TEST MODEL, and not otherwise."""
    assert TEST_MODEL_BANNER not in render_call_report(make_summary())
    summary = make_summary()
    summary["model"] = "emotion TEST MODEL (random weights)"
    page = render_call_report(summary)
    assert page.count(TEST_MODEL_BANNER) == 1
    assert 'class="banner"' in page


@pytest.mark.parametrize("field", ["call_id", "agent_id", "team", "model", "reason"])
def test_hostile_strings_are_escaped(field):
    """A <script> in a document string is shown as text, never as markup."""
    summary = make_summary()
    summary[field] = "<script>alert(1)</script>"
    summary["alerts"][0]["message"] = '<img src=x onerror="alert(2)">'
    summary["alerts"][0]["rule_id"] = '"><script>alert(3)</script>'
    page = render_call_report(summary)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = _parse(page)
    assert parser.errors == [] and parser.stack == []
    assert _charts(page)  # the chart with the hostile rule id still parses as XML


def test_empty_mono_call_renders_notes_instead_of_charts():
    """A mono call with no speech, points, alerts or silences renders balanced HTML with 'no ...' notes."""
    page = render_call_report(make_empty_mono_summary())
    parser = _parse(page)
    assert parser.errors == [] and parser.stack == []
    text = " ".join(parser.text)
    assert "No speech scored" in text
    assert "No alerts raised." in text and "No peaks." in text and "No long silences." in text
    assert "mono call" in text and "No prosody measured." in text
    assert _charts(page) == []


@pytest.mark.parametrize("summary", [{}, {"call_id": "x", "speakers": None, "conversation": "?", "alerts": [None]}])
def test_malformed_documents_do_not_crash(summary):
    """A document with missing or wrongly typed parts still renders a balanced page."""
    parser = _parse(render_call_report(summary))
    assert parser.errors == [] and parser.stack == []
    assert "No speakers" in " ".join(parser.text)


def test_malformed_scores_are_skipped_not_drawn():
    """Points with non-numeric or short score lists break the line instead of crashing the chart."""
    summary = make_summary()
    points = summary["speakers"][0]["trajectory"]["points"]
    points[1]["scores"] = ["x"] * len(LABELS)
    points[4]["scores"] = []
    angry = _lines(_charts(render_call_report(summary))[0], "angry")
    assert len(angry) == 4


def test_heatmap_is_valid_svg_with_one_cell_per_call_and_label():
    """The heatmap parses as XML, has one rect per (call, label) with its count written, and a title."""
    rows = [("call-a", {"angry": 5, "neutral": 15}), ("call-b", {"sad": 2, "neutral": 2})]
    labels = ["angry", "neutral", "sad"]
    root = ET.fromstring(render_heatmap_svg(rows, labels))
    cells = [r for r in root.iter(f"{SVG_NS}rect") if r.get("class") == "cell"]
    assert len(cells) == 6
    assert [c.get("data-count") for c in cells] == ["5", "15", "0", "0", "2", "2"]
    counts = [t.text for t in root.iter(f"{SVG_NS}text") if t.get("class") == "count"]
    assert counts == ["5", "15", "0", "0", "2", "2"]
    assert root.find(f"{SVG_NS}title") is not None
    assert any(g.tag == f"{SVG_NS}linearGradient" for g in root.iter())


def test_heatmap_intensity_is_the_share_of_the_row():
    """A label holding a larger share of its call's windows gets a darker cell, independent of the absolute count."""
    root = ET.fromstring(render_heatmap_svg([("big", {"angry": 10, "neutral": 90}), ("small", {"angry": 3, "neutral": 1})],
                                            ["angry", "neutral"]))
    fills = [r.get("fill") for r in root.iter(f"{SVG_NS}rect") if r.get("class") == "cell"]

    def lightness(colour: str) -> int:
        return sum(int(colour[i:i + 2], 16) for i in (1, 3, 5))

    big_angry, _, small_angry, _ = fills
    assert lightness(small_angry) < lightness(big_angry)  # 75 % beats 10 % although 3 < 10


def test_heatmap_handles_no_rows_and_all_zero_rows():
    """No rows gives a valid SVG with a note; an all-zero row gives white cells showing 0."""
    empty = ET.fromstring(render_heatmap_svg([], ["angry", "neutral"]))
    assert [r for r in empty.iter(f"{SVG_NS}rect") if r.get("class") == "cell"] == []
    assert any(t.text == "no calls" for t in empty.iter(f"{SVG_NS}text"))
    zero = ET.fromstring(render_heatmap_svg([("silent", {})], ["angry", "neutral"]))
    cells = [r for r in zero.iter(f"{SVG_NS}rect") if r.get("class") == "cell"]
    assert [c.get("fill") for c in cells] == ["#ffffff", "#ffffff"]
    assert [c.get("data-count") for c in cells] == ["0", "0"]


def test_heatmap_escapes_call_names():
    """A call name with markup is escaped and the SVG still parses."""
    svg = render_heatmap_svg([('<script>alert(1)</script>&"', {"angry": 1})], ["angry"])
    assert "<script" not in svg
    root = ET.fromstring(svg)
    rows = [t for t in root.iter(f"{SVG_NS}text") if t.get("class") == "row"]
    assert "".join(rows[0].itertext()).startswith('<script>alert(1)</script>&"')


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_batch_csv_columns_and_figures_match_the_document(tmp_path):
    """An ok row carries the document's figures in seconds, ratios and counts; the header has every column."""
    path = tmp_path / "batch.csv"
    write_batch_csv(path, [{"file": "calls/c1.wav", "status": "ok", "error": None, "summary": make_summary()}], LABELS)
    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == list(CSV_COLUMNS) + [f"count_{label}" for label in LABELS]
    row = _read_csv(path)[0]
    assert row["file"] == "calls/c1.wav" and row["status"] == "ok" and row["error"] == ""
    assert row["call_id"] == "c1"
    assert float(row["duration_s"]) == 245.0
    assert float(row["customer_speech_s"]) == 120.0 and float(row["agent_speech_s"]) == 90.0
    assert float(row["customer_talk_ratio"]) == 0.571
    assert float(row["dead_air_s"]) == 30.0 and row["silences"] == "2" and float(row["overtalk_s"]) == 4.0
    assert row["interruptions_by_agent"] == "2" and row["interruptions_by_customer"] == "1"
    assert row["backchannels_by_agent"] == "1" and row["backchannels_by_customer"] == "3"
    assert row["hold_s"] == "95.0"
    assert row["laughs_by_customer"] == "3" and row["laughs_by_agent"] == ""  # the agent's summary has no laugh count
    assert row["alerts"] == "2"
    assert row["customer_top_label"] == "neutral"
    assert float(row["customer_peak_negative"]) == pytest.approx(0.8)  # angry 0.7 + sad 0.1 at 20-22 s
    assert row["count_neutral"] == "150" and row["count_angry"] == "50" and row["count_sad"] == "0"


def test_batch_csv_error_rows_have_empty_figures(tmp_path):
    """An error row keeps file, status and message and leaves every figure cell empty."""
    path = tmp_path / "batch.csv"
    results = [
        {"file": "bad.wav", "status": "error", "error": "bad.wav: not a readable audio file", "summary": None},
        {"file": "c1.wav", "status": "ok", "error": None, "summary": make_summary()},
    ]
    write_batch_csv(path, results, LABELS)
    rows = _read_csv(path)
    assert len(rows) == 2
    assert rows[0]["error"] == "bad.wav: not a readable audio file" and rows[0]["status"] == "error"
    assert all(rows[0][column] == "" for column in rows[0] if column not in ("file", "status", "error"))
    assert rows[1]["call_id"] == "c1"


def test_batch_csv_counts_sum_over_scored_speakers_only(tmp_path):
    """count_<label> adds the top-label counts of every scored speaker and ignores unscored ones."""
    summary = make_summary()
    summary["speakers"][1]["scored"] = True
    summary["speakers"][1]["top_labels"] = {"neutral": 10, "happy": 4}
    unscored = copy.deepcopy(summary)
    unscored["speakers"][1]["scored"] = False
    path = tmp_path / "batch.csv"
    results = [{"file": f, "status": "ok", "error": None, "summary": s} for f, s in (("a", summary), ("b", unscored))]
    write_batch_csv(path, results, LABELS)
    both, customer_only = _read_csv(path)
    assert both["count_neutral"] == "160" and both["count_happy"] == "4" and both["count_angry"] == "50"
    assert customer_only["count_neutral"] == "150" and customer_only["count_happy"] == "0"


def test_batch_csv_mono_and_empty_call(tmp_path):
    """A mono call without speech writes zeros for its figures and empty cells where nothing was measured."""
    path = tmp_path / "batch.csv"
    write_batch_csv(path, [{"file": "m.wav", "status": "ok", "error": None, "summary": make_empty_mono_summary()}],
                    LABELS)
    row = _read_csv(path)[0]
    assert row["call_id"] == "empty-1" and float(row["duration_s"]) == 0.0
    assert row["agent_speech_s"] == "" and row["customer_top_label"] == "" and row["customer_peak_negative"] == ""
    assert row["interruptions_by_agent"] == "0" and row["alerts"] == "0"
    assert all(row[f"count_{label}"] == "0" for label in LABELS)
