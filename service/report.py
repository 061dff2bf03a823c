"""Rendering of call summary documents for people: per-call QA report (HTML), cross-call heatmap (SVG), batch CSV.

Every function is pure over the summary document the service publishes (schema_version 2). The HTML is one
self-contained page: inline CSS and inline SVG, no scripts, no external resources. Every string taken from a
document is HTML-escaped; numbers are re-formatted from parsed values, so malformed fields render as blanks
instead of reaching the page.
"""

from __future__ import annotations

import csv
import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence

NEGATIVE_LABELS = ("angry", "disgusted", "fearful", "sad")
TEST_MODEL_MARKER = "TEST MODEL"
TEST_MODEL_BANNER = "Scores come from an untrained TEST MODEL; they carry no meaning"

# Line colours for the trajectory chart; labels without an entry are not drawn as lines.
SERIES_COLOURS = {
    "angry": "#d62728",
    "disgusted": "#6b8e23",
    "fearful": "#9467bd",
    "sad": "#1f77b4",
    "neutral": "#8c8c8c",
    "happy": "#e6a100",
}
NEGATIVE_AREA_COLOUR = "#d62728"
SEVERITY_COLOURS = {"critical": "#7f1d1d", "high": "#d62728", "medium": "#e67e22", "low": "#2f6fb0"}
ROLE_COLOURS = {"customer": "#2f6fb0", "agent": "#2a9d8f"}

CSV_COLUMNS = (
    "file",
    "status",
    "error",
    "call_id",
    "duration_s",
    "customer_speech_s",
    "agent_speech_s",
    "customer_talk_ratio",
    "dead_air_s",
    "silences",
    "hold_s",
    "overtalk_s",
    "interruptions_by_agent",
    "interruptions_by_customer",
    "backchannels_by_agent",
    "backchannels_by_customer",
    "laughs_by_agent",
    "laughs_by_customer",
    "alerts",
    "customer_top_label",
    "customer_peak_negative",
)

# Chart geometry (SVG user units; the SVG scales to the page width).
_CHART_W = 960
_CHART_H = 250
_MARGIN_L = 40
_MARGIN_R = 14
_MARGIN_T = 14
_MARGIN_B = 30
# Invisible per-second hover targets carry a score tooltip; above this many points they are left out to bound page size.
_MAX_HOVER_POINTS = 4000
_TICK_STEPS_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_MAX_X_TICKS = 12


# -- value helpers -------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape any document value for HTML/XML text or a quoted attribute; None becomes ''."""
    return "" if value is None else html.escape(str(value), quote=True)


def _num(value: object) -> float | None:
    """A finite number from the document, or None for anything else (bool, str, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object, default: int = 0) -> int:
    number = _num(value)
    return default if number is None else int(number)


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _dicts(value: object) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _mmss(ms: object) -> str:
    """Call time as mm:ss (minutes keep counting past 59); '—' when the value is not a number."""
    number = _num(ms)
    if number is None:
        return "—"
    total = max(0, int(number // 1000))
    return f"{total // 60:02d}:{total % 60:02d}"


def _seconds(ms: object, digits: int = 1) -> str:
    number = _num(ms)
    return "—" if number is None else f"{number / 1000:.{digits}f} s"


def _fmt(value: object, digits: int, unit: str = "") -> str:
    number = _num(value)
    if number is None:
        return "—"
    return f"{number:.{digits}f}{unit}"


def _f(x: float) -> str:
    """SVG coordinate with one decimal."""
    return f"{x:.1f}"


def _labels(summary: Mapping) -> list[str]:
    labels = summary.get("labels")
    return [str(label) for label in labels] if isinstance(labels, list) else []


# -- call report ---------------------------------------------------------------------------------------------------


def render_call_report(summary: dict) -> str:
    """Render one call summary document as a self-contained HTML page for QA review.

    The page has a header (call, agent, team, duration, end reason, model; a warning banner when the model is a
    TEST MODEL), key conversation figures, an emotion trajectory chart per scored speaker, tables of peaks,
    alerts, silences and interruptions, and per-speaker prosody. Missing or empty parts of the document render
    as short "none" notes, never as an error.
    """
    doc = summary if isinstance(summary, dict) else {}
    labels = _labels(doc)
    speakers = _dicts(doc.get("speakers"))
    conversation = _dict(doc.get("conversation"))
    alerts = _dicts(doc.get("alerts"))
    silences = _dicts(conversation.get("silences"))
    duration_ms = _num(doc.get("duration_ms")) or 0.0
    call_id = doc.get("call_id")
    model = doc.get("model")

    body: list[str] = []
    body.append(_header(doc, duration_ms))
    if isinstance(model, str) and TEST_MODEL_MARKER in model:
        body.append(f'<div class="banner" role="alert">{_e(TEST_MODEL_BANNER)}</div>')
    body.append(_key_figures(doc, conversation, alerts))

    body.append("<section><h2>Emotion over the call</h2>")
    if not speakers:
        body.append('<p class="empty">No speakers in this summary; no speech scored.</p>')
    for speaker in speakers:
        body.append(_speaker_panel(speaker, labels, duration_ms, silences, alerts))
    body.append("</section>")

    body.append(_peaks_table(speakers))
    body.append(_alerts_table(alerts))
    body.append(_silences_table(conversation, silences))
    body.append(_interruptions_table(conversation))
    body.append(_prosody_section(speakers))
    body.append(
        f'<footer>call_summary schema {_e(doc.get("schema_version"))} · published {_e(doc.get("wall_time"))}'
        f' · labels: {_e(", ".join(labels)) or "—"}</footer>'
    )
    title = f"Call {_e(call_id) or '(no id)'} — QA report"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def _header(doc: Mapping, duration_ms: float) -> str:
    facts = [
        ("Agent", _e(doc.get("agent_id")) or "—"),
        ("Team", _e(doc.get("team")) or "—"),
    ]
    if doc.get("tenant"):
        facts.append(("Tenant", _e(doc.get("tenant"))))
    facts += [
        ("Duration", _mmss(duration_ms)),
        ("Ended", _e(doc.get("reason")) or "—"),
        ("Model", _e(doc.get("model")) or "—"),
        ("Published", _e(doc.get("wall_time")) or "—"),
    ]
    items = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in facts)
    return (
        '<header><p class="kicker">CallPulse · call QA report</p>'
        f'<h1>Call <span class="call-id">{_e(doc.get("call_id")) or "(no id)"}</span></h1>'
        f'<dl class="facts">{items}</dl></header>'
    )


def _key_figures(doc: Mapping, conversation: Mapping, alerts: list[dict]) -> str:
    stereo = conversation.get("stereo") is True
    talk_ms = _dict(conversation.get("talk_ms"))
    ratio = _dict(conversation.get("talk_ratio"))
    cards: list[str] = []

    segments = []
    for role, share in ratio.items():
        value = _num(share)
        if value is None or value <= 0:
            continue
        width = min(100.0, max(0.0, value * 100))
        colour = ROLE_COLOURS.get(str(role), "#777")
        segments.append(
            f'<div class="seg" style="width:{width:.1f}%;background:{colour}" '
            f'title="{_e(role)}: {value * 100:.0f}% of talk time, {_seconds(talk_ms.get(role))}">'
            f"{_e(role)} {value * 100:.0f}%</div>"
        )
    bar = f'<div class="bar">{"".join(segments)}</div>' if segments else '<p class="empty">No talk measured.</p>'
    talk_lines = " · ".join(f"{_e(role)} {_seconds(ms)}" for role, ms in talk_ms.items())
    cards.append(
        f'<div class="card wide"><h3>Talk ratio</h3>{bar}<p class="sub">{talk_lines or "—"}'
        f'{"" if stereo else " · mono call"}</p></div>'
    )

    silences_total = conversation.get("silences_total")
    if _num(silences_total) is None:
        silences_total = len(_dicts(conversation.get("silences")))
    cards.append(
        f'<div class="card"><h3>Dead air</h3><p class="big">{_seconds(conversation.get("dead_air_ms"))}</p>'
        f'<p class="sub">{_int(silences_total)} long silence{"" if _int(silences_total) == 1 else "s"}</p></div>'
    )
    hold = _dict(conversation.get("hold"))
    if hold:
        count = _int(hold.get("count"))
        cards.append(
            f'<div class="card"><h3>On hold</h3><p class="big">{_seconds(hold.get("ms"))}</p>'
            f'<p class="sub">{count} hold{"" if count == 1 else "s"} (music or tones)</p></div>'
        )
    interruptions = _dict(conversation.get("interruptions"))
    by = _dict(interruptions.get("by"))
    if stereo:
        overtalk = _seconds(conversation.get("overtalk_ms"))
        interrupt_text = f'{_int(interruptions.get("count"))}'
        interrupt_sub = f"by agent {_int(by.get('agent'))} · by customer {_int(by.get('customer'))}"
        backchannels = _dict(conversation.get("backchannels"))
        if backchannels:
            interrupt_sub += f" · back-channels {_int(backchannels.get('count'))} (not counted)"
    else:
        overtalk = "n/a"
        interrupt_text = "n/a"
        interrupt_sub = "mono call: one channel, no overlap measured"
    cards.append(
        f'<div class="card"><h3>Over-talk</h3><p class="big">{overtalk}</p><p class="sub">both speaking</p></div>'
    )
    cards.append(
        f'<div class="card"><h3>Interruptions</h3><p class="big">{interrupt_text}</p>'
        f'<p class="sub">{interrupt_sub}</p></div>'
    )
    alert_count = _num(doc.get("alert_count"))
    count = int(alert_count) if alert_count is not None else len(alerts)
    high = sum(1 for a in alerts if a.get("severity") in ("high", "critical"))
    cards.append(
        f'<div class="card{" hot" if count else ""}"><h3>Alerts raised</h3><p class="big">{count}</p>'
        f'<p class="sub">{high} high severity</p></div>'
    )
    return f'<section class="figures">{"".join(cards)}</section>'


def _speaker_panel(
    speaker: Mapping, labels: list[str], duration_ms: float, silences: list[dict], alerts: list[dict]
) -> str:
    name = speaker.get("speaker")
    top = {str(k): _int(v) for k, v in _dict(speaker.get("top_labels")).items()}
    total = sum(top.values())
    mix = ""
    if total > 0:
        order = sorted(top.items(), key=lambda kv: -kv[1])
        mix = " · ".join(f"{_e(label)} {count} ({count / total:.0%})" for label, count in order if count > 0)
    stats = (
        f"speech {_seconds(speaker.get('speech_ms'))} in {_int(speaker.get('segments'))} segments"
        f" · windows scored {_int(speaker.get('windows_scored'))}, merged {_int(speaker.get('windows_merged'))},"
        f" dropped {_int(speaker.get('windows_dropped'))}"
        + (f", skipped (no own speech) {_int(speaker.get('windows_skipped'))}" if _num(speaker.get("windows_skipped")) else "")
    )
    parts = [f'<article class="speaker"><h3>{_e(str(name).capitalize() if name else "Speaker")}</h3>',
             f'<p class="sub">{stats}</p>']
    if mix:
        parts.append(f'<p class="sub">Top label of scored windows: {mix}</p>')
    trajectory = _dict(speaker.get("trajectory"))
    points = _parse_points(trajectory, labels)
    if speaker.get("scored") is not True:
        parts.append('<p class="empty">Not scored: emotion was not analysed for this speaker.</p>')
    elif not points:
        parts.append('<p class="empty">No speech scored for this speaker.</p>')
    else:
        speaker_alerts = [a for a in alerts if a.get("speaker") in (None, "") or a.get("speaker") == name]
        resolution = _num(trajectory.get("resolution_ms")) or 1000.0
        parts.append(
            _trajectory_chart(name, points, labels, resolution, duration_ms, silences, speaker_alerts,
                              _dicts(speaker.get("peaks")))
        )
    parts.append("</article>")
    return "".join(parts)


def _parse_points(trajectory: Mapping, labels: list[str]) -> list[tuple[float, list[float | None]]]:
    points = []
    for point in _dicts(trajectory.get("points")):
        t = _num(point.get("t_ms"))
        scores = point.get("scores")
        if t is None or not isinstance(scores, list):
            continue
        values = [_num(scores[i]) if i < len(scores) else None for i in range(len(labels))]
        points.append((t, values))
    points.sort(key=lambda p: p[0])
    return points


def _runs(points: Sequence[tuple[float, float | None]], resolution: float) -> list[list[tuple[float, float]]]:
    """Split (t, value) points into runs with no gap wider than one resolution and no missing value."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    previous_t: float | None = None
    for t, value in points:
        gap = previous_t is not None and t - previous_t > resolution
        if value is None or gap:
            if current:
                runs.append(current)
            current = []
        if value is not None:
            current.append((t, value))
        previous_t = t
    if current:
        runs.append(current)
    return runs


class _Scale:
    def __init__(self, domain_ms: float) -> None:
        self.domain_ms = max(domain_ms, 1000.0)
        self.left = _MARGIN_L
        self.right = _CHART_W - _MARGIN_R
        self.top = _MARGIN_T
        self.bottom = _CHART_H - _MARGIN_B

    def x(self, t_ms: float) -> float:
        t = min(max(t_ms, 0.0), self.domain_ms)
        return self.left + (self.right - self.left) * t / self.domain_ms

    def y(self, score: float) -> float:
        s = min(max(score, 0.0), 1.0)
        return self.bottom - (self.bottom - self.top) * s


def _run_xy(run: list[tuple[float, float]], scale: _Scale, resolution: float) -> list[tuple[float, float]]:
    # a lone point is drawn across its own resolution so that it stays visible
    if len(run) == 1:
        t, v = run[0]
        return [(scale.x(t - resolution / 2), scale.y(v)), (scale.x(t + resolution / 2), scale.y(v))]
    return [(scale.x(t), scale.y(v)) for t, v in run]


def _trajectory_chart(
    speaker: object,
    points: list[tuple[float, list[float | None]]],
    labels: list[str],
    resolution: float,
    duration_ms: float,
    silences: list[dict],
    alerts: list[dict],
    peaks: list[dict],
) -> str:
    last_t = points[-1][0] + resolution
    scale = _Scale(max(duration_ms, last_t))
    negative = [label for label in NEGATIVE_LABELS if label in labels]
    context = [label for label in ("neutral", "happy") if label in labels]
    index = {label: i for i, label in enumerate(labels)}
    out: list[str] = [
        f'<svg class="chart" data-speaker="{_e(speaker)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_CHART_W} {_CHART_H}" width="100%" role="img" '
        f'aria-label="Emotion scores of {_e(speaker)} over call time">'
    ]
    # grid and axes
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = scale.y(tick)
        out.append(f'<line class="grid" x1="{_f(scale.left)}" x2="{_f(scale.right)}" y1="{_f(y)}" y2="{_f(y)}"/>')
        out.append(f'<text class="axis" x="{_f(scale.left - 6)}" y="{_f(y + 4)}" text-anchor="end">{tick:g}</text>')
    step_s = next((s for s in _TICK_STEPS_S if scale.domain_ms / 1000 / s <= _MAX_X_TICKS), _TICK_STEPS_S[-1])
    tick_ms = 0.0
    while tick_ms <= scale.domain_ms + 1:
        x = scale.x(tick_ms)
        out.append(
            f'<line class="tick" x1="{_f(x)}" x2="{_f(x)}" y1="{_f(scale.bottom)}" y2="{_f(scale.bottom + 5)}"/>'
            f'<text class="axis" x="{_f(x)}" y="{_f(scale.bottom + 18)}" text-anchor="middle">{_mmss(tick_ms)}</text>'
        )
        tick_ms += step_s * 1000
    # silences
    for silence in silences:
        start = _num(silence.get("start_ms"))
        length = _num(silence.get("duration_ms"))
        if start is None or length is None or length <= 0:
            continue
        x0, x1 = scale.x(start), scale.x(start + length)
        out.append(
            f'<rect class="silence" x="{_f(x0)}" y="{_f(scale.top)}" width="{_f(max(x1 - x0, 1.0))}" '
            f'height="{_f(scale.bottom - scale.top)}">'
            f"<title>Silence at {_mmss(start)}, {length / 1000:.1f} s</title></rect>"
        )
    # hover targets: one per point, tooltip with the leading scores
    if len(points) <= _MAX_HOVER_POINTS:
        half = (scale.x(resolution) - scale.x(0)) / 2
        for t, values in points:
            ranked = sorted(((v, labels[i]) for i, v in enumerate(values) if v is not None), reverse=True)[:3]
            tip = ", ".join(f"{_e(label)} {v:.2f}" for v, label in ranked)
            x = scale.x(t)
            out.append(
                f'<rect class="hover" x="{_f(x - half)}" y="{_f(scale.top)}" width="{_f(2 * half)}" '
                f'height="{_f(scale.bottom - scale.top)}"><title>{_mmss(t)} — {tip}</title></rect>'
            )
    # summed negative score as a filled area, broken at gaps
    if negative:
        summed = []
        for t, values in points:
            parts = [values[index[label]] for label in negative]
            known = [v for v in parts if v is not None]
            summed.append((t, min(sum(known), 1.0) if known else None))
        for run in _runs(summed, resolution):
            xy = _run_xy(run, scale, resolution)
            base = _f(scale.y(0))
            line = " ".join(f"L{_f(x)},{_f(y)}" for x, y in xy)
            path = f"M{_f(xy[0][0])},{base} {line} L{_f(xy[-1][0])},{base} Z"
            out.append(f'<path class="negative-area" d="{path}" fill="{NEGATIVE_AREA_COLOUR}"/>')
    # one line per label, broken at gaps
    for label in context + negative:
        colour = SERIES_COLOURS[label]
        css = "series context" if label in context else "series negative"
        series = [(t, values[index[label]]) for t, values in points]
        for run in _runs(series, resolution):
            coords = " ".join(f"{_f(x)},{_f(y)}" for x, y in _run_xy(run, scale, resolution))
            out.append(f'<polyline class="{css}" data-label="{_e(label)}" stroke="{colour}" points="{coords}"/>')
    # alerts: evidence span (start..fired) and a marker at the moment it fired
    for alert in alerts:
        fired = _num(alert.get("fired_ms"))
        if fired is None:
            continue
        start = _num(alert.get("start_ms"))
        rule = alert.get("rule_id")
        severity = str(alert.get("severity") or "")
        colour = SEVERITY_COLOURS.get(severity, "#555")
        call_level = alert.get("speaker") in (None, "")
        tip = (
            f"{_e(rule)} ({_e(severity) or 'no severity'}) fired at {_mmss(fired)}"
            f"{' · call-level' if call_level else ''}: {_e(alert.get('message'))}"
        )
        x = scale.x(fired)
        span = ""
        if start is not None and start < fired:
            x0 = scale.x(start)
            span = (f'<rect class="alert-span" x="{_f(x0)}" y="{_f(scale.top)}" width="{_f(x - x0)}" '
                    f'height="{_f(scale.bottom - scale.top)}" fill="{colour}"/>')
        dash = ' stroke-dasharray="4 3"' if call_level else ""
        out.append(
            f'<g class="alert-marker" data-rule-id="{_e(rule)}"><title>{tip}</title>{span}'
            f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(scale.top)}" y2="{_f(scale.bottom)}" stroke="{colour}"{dash}/>'
            f'<path d="M{_f(x - 5)},{_f(scale.top - 8)} L{_f(x + 5)},{_f(scale.top - 8)} L{_f(x)},{_f(scale.top)} Z" '
            f'fill="{colour}"/></g>'
        )
    # peaks as dots
    for peak in peaks:
        score = _num(peak.get("score"))
        start = _num(peak.get("start_ms"))
        if score is None or start is None:
            continue
        end = _num(peak.get("end_ms"))
        mid = (start + end) / 2 if end is not None and end >= start else start
        label = peak.get("label")
        colour = SERIES_COLOURS.get(str(label), "#333")
        out.append(
            f'<circle class="peak" cx="{_f(scale.x(mid))}" cy="{_f(scale.y(score))}" r="4.5" fill="{colour}">'
            f"<title>Peak {_e(label)} {score:.2f} at {_mmss(start)}–{_mmss(end)}</title></circle>"
        )
    out.append("</svg>")

    legend = [
        f'<span><i class="sw line" style="background:{SERIES_COLOURS[label]}"></i>{_e(label)}</span>'
        for label in negative + context
    ]
    if negative:
        legend.append('<span><i class="sw area"></i>negative (sum)</span>')
    legend.append('<span><i class="sw silence"></i>silence</span>')
    legend.append('<span><i class="sw alert"></i>alert fired (hover for rule)</span>')
    legend.append('<span><i class="sw dot"></i>peak</span>')
    return f'<figure class="trajectory">{"".join(out)}<figcaption class="legend">{"".join(legend)}</figcaption></figure>'


def _table(caption: str, headers: Sequence[str], rows: list[list[str]], empty: str, css: str, note: str = "") -> str:
    head = f"<section><h2>{caption}</h2>"
    if not rows:
        return f'{head}<p class="empty">{empty}</p></section>'
    thead = "".join(f"<th>{h}</th>" for h in headers)
    tbody = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    extra = f'<p class="sub">{note}</p>' if note else ""
    return f'{head}<table class="{css}"><thead><tr>{thead}</tr></thead><tbody>{tbody}</tbody></table>{extra}</section>'


def _peaks_table(speakers: list[dict]) -> str:
    peaks = []
    for speaker in speakers:
        for peak in _dicts(speaker.get("peaks")):
            peaks.append((_num(peak.get("start_ms")) or 0.0, speaker.get("speaker"), peak))
    peaks.sort(key=lambda item: item[0])
    rows = [
        [
            _mmss(peak.get("start_ms")),
            _mmss(peak.get("end_ms")),
            _e(name),
            f'<span class="label" style="color:{SERIES_COLOURS.get(str(peak.get("label")), "inherit")}">'
            f'{_e(peak.get("label"))}</span>',
            _fmt(peak.get("score"), 2),
        ]
        for _, name, peak in peaks
    ]
    return _table("Emotion peaks", ("Time", "Until", "Speaker", "Label", "Score"), rows, "No peaks.", "peaks")


def _alerts_table(alerts: list[dict]) -> str:
    ordered = sorted(alerts, key=lambda a: _num(a.get("fired_ms")) or 0.0)
    rows = []
    for alert in ordered:
        severity = str(alert.get("severity") or "")
        colour = SEVERITY_COLOURS.get(severity, "#555")
        speaker = alert.get("speaker")
        rows.append([
            _mmss(alert.get("fired_ms")),
            f'<code>{_e(alert.get("rule_id"))}</code>',
            f'<span class="sev" style="background:{colour}">{_e(severity) or "—"}</span>',
            _e(speaker) if speaker not in (None, "") else '<span class="muted">call</span>',
            _e(alert.get("message")),
            _e(alert.get("reason")),
        ])
    return _table("Alerts", ("Time", "Rule", "Severity", "Speaker", "Message", "Reason"), rows, "No alerts raised.",
                  "alerts")


def _silences_table(conversation: Mapping, silences: list[dict]) -> str:
    rows = []
    for silence in sorted(silences, key=lambda s: _num(s.get("start_ms")) or 0.0):
        start = _num(silence.get("start_ms"))
        length = _num(silence.get("duration_ms"))
        end = start + length if start is not None and length is not None else None
        rows.append([_mmss(start), _mmss(end), _seconds(length)])
    total = _num(conversation.get("silences_total"))
    note = f"{len(rows)} of {int(total)} silences listed." if total is not None and total > len(rows) else ""
    return _table("Long silences", ("Start", "End", "Length"), rows, "No long silences.", "silences", note)


def _interruptions_table(conversation: Mapping) -> str:
    interruptions = _dict(conversation.get("interruptions"))
    events = sorted(_dicts(interruptions.get("events")), key=lambda ev: _num(ev.get("at_ms")) or 0.0)
    rows = [
        [_mmss(ev.get("at_ms")), f"{_e(ev.get('by'))} interrupted {_e(ev.get('of'))}", _seconds(ev.get("overlap_ms"))]
        for ev in events
    ]
    if conversation.get("stereo") is not True:
        empty = "Not measured: mono call (one channel)."
    else:
        empty = "No interruptions."
    count = _num(interruptions.get("count"))
    note = f"{len(rows)} of {int(count)} interruptions listed." if count is not None and count > len(rows) else ""
    return _table("Interruptions", ("Time", "Who", "Overlap"), rows, empty, "interruptions", note)


_PROSODY_FIELDS = (
    ("loudness_dbfs", "Loudness", 1, " dBFS"),
    ("baseline_dbfs", "Baseline loudness", 1, " dBFS"),
    ("pitch_hz", "Pitch", 0, " Hz"),
    ("pitch_range_st", "Pitch range", 1, " st"),
    ("speech_rate_spm", "Speech rate", 0, " syllables/min"),
    ("speech_rate_cpm", "Speech rate (transcript)", 0, " characters/min"),
)


def _prosody_section(speakers: list[dict]) -> str:
    cards = []
    for speaker in speakers:
        prosody = _dict(speaker.get("prosody"))
        items = [
            f"<div><dt>{title}</dt><dd>{_fmt(prosody.get(key), digits, unit)}</dd></div>"
            for key, title, digits, unit in _PROSODY_FIELDS
            if _num(prosody.get(key)) is not None
        ]
        if _num(prosody.get("voiced_ms")) is not None:
            items.append(f"<div><dt>Voiced</dt><dd>{_seconds(prosody.get('voiced_ms'))}</dd></div>")
        if _num(prosody.get("laughs")):
            items.append(f"<div><dt>Laughter (not syllables)</dt><dd>{int(prosody['laughs'])} "
                         f"({_seconds(prosody.get('laughter_ms'))})</dd></div>")
        if _num(speaker.get("crosstalk_ms")):
            items.append(f"<div><dt>Other side leaking in (not counted)</dt><dd>{_seconds(speaker.get('crosstalk_ms'))}</dd></div>")
        content = f'<dl class="facts">{"".join(items)}</dl>' if items else '<p class="empty">No prosody measured.</p>'
        cards.append(f'<div class="card wide"><h3>{_e(speaker.get("speaker")) or "speaker"}</h3>{content}</div>')
    if not cards:
        cards.append('<p class="empty">No speakers.</p>')
    return f'<section><h2>Voice (prosody)</h2><div class="figures">{"".join(cards)}</div></section>'


_CSS = """
:root{--ink:#1d2430;--muted:#6b7280;--line:#e5e7eb;--bg:#f7f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1040px;margin:0 auto;padding:20px 24px 40px}
h1{margin:.1em 0 .3em;font-size:24px} h2{font-size:17px;margin:28px 0 10px} h3{font-size:14px;margin:0 0 6px}
.kicker{margin:0;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
.call-id{font-family:ui-monospace,Menlo,Consolas,monospace}
dl.facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0} dl.facts div{min-width:90px}
dt{color:var(--muted);font-size:12px} dd{margin:0;font-weight:600}
.banner{margin:12px 0;padding:10px 14px;border:2px solid #b45309;border-radius:6px;
  background:#fef3c7;color:#7c2d12;font-weight:700}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card.wide{grid-column:span 2} .card.hot{border-color:#d62728}
.big{font-size:22px;font-weight:700;margin:0} .sub{color:var(--muted);font-size:12px;margin:4px 0 0}
.bar{display:flex;height:26px;border-radius:5px;overflow:hidden;background:var(--line)}
.bar .seg{color:#fff;font-size:12px;line-height:26px;padding:0 6px;white-space:nowrap;overflow:hidden}
article.speaker{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;margin-bottom:12px}
figure.trajectory{margin:8px 0 0}
svg.chart{display:block;font:11px system-ui,sans-serif}
svg.chart .grid{stroke:#eceef1} svg.chart .tick{stroke:#9ca3af} svg.chart .axis{fill:#6b7280}
svg.chart .silence{fill:#9ca3af;fill-opacity:.22}
svg.chart .hover{fill:#000;fill-opacity:0}
svg.chart .hover:hover{fill-opacity:.05}
svg.chart .negative-area{fill-opacity:.13;stroke:none;pointer-events:none}
svg.chart polyline{fill:none;stroke-linejoin:round;stroke-linecap:round;pointer-events:none}
svg.chart .series.negative{stroke-width:2} svg.chart .series.context{stroke-width:1;stroke-opacity:.8}
svg.chart .alert-span{fill-opacity:.08}
svg.chart .alert-marker line{stroke-width:2}
svg.chart .peak{stroke:#fff;stroke-width:1.5}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;color:var(--muted);margin-top:4px}
.sw{display:inline-block;width:16px;height:10px;margin-right:5px;vertical-align:middle;border-radius:2px}
.sw.line{height:3px} .sw.area{background:rgba(214,39,40,.18)} .sw.silence{background:rgba(156,163,175,.35)}
.sw.alert{width:3px;height:12px;background:#d62728} .sw.dot{width:9px;height:9px;border-radius:50%;background:#555}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc}
td:first-child{font-variant-numeric:tabular-nums;white-space:nowrap}
.sev{color:#fff;border-radius:10px;padding:1px 8px;font-size:12px}
.muted,.empty{color:var(--muted)} .empty{font-style:italic}
code{font-size:12px}
footer{margin-top:30px;color:var(--muted);font-size:12px}
@media print{body{background:#fff} .card,article.speaker,table{break-inside:avoid}}
"""


# -- heatmap across calls ------------------------------------------------------------------------------------------

_HM_CELL_W = 74
_HM_CELL_H = 26
_HM_TITLE_H = 34
_HM_HEADER_H = 26
_HM_LEGEND_H = 46
_HM_NAME_CHARS = 36
_HM_CHAR_W = 7.0
# colour ramps from white to full colour; negative labels use the red ramp
_HM_NEGATIVE_RGB = (198, 40, 40)
_HM_OTHER_RGB = (37, 99, 160)


def _ramp(share: float, rgb: tuple[int, int, int]) -> str:
    s = min(max(share, 0.0), 1.0)
    r, g, b = (round(255 + (c - 255) * s) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def render_heatmap_svg(rows: list[tuple[str, dict[str, int]]], labels: list[str]) -> str:
    """Render an SVG heatmap of emotion label counts: one row per call, one column per label.

    Each cell's colour intensity is the label's share of that call's counted windows (count / row total); the
    count itself is written in the cell. Negative labels use a red scale, the others blue. Rows whose counts are
    all zero render as blank cells with 0; no rows renders a note instead of a grid. Names are escaped.
    """
    labels = [str(label) for label in labels]
    shown_names = []
    for name, _ in rows:
        text = str(name)
        shown_names.append(text if len(text) <= _HM_NAME_CHARS else text[: _HM_NAME_CHARS - 1] + "…")
    name_w = max([len(n) for n in shown_names] + [8]) * _HM_CHAR_W + 16
    grid_x = name_w
    grid_y = _HM_TITLE_H + _HM_HEADER_H
    grid_w = max(len(labels), 1) * _HM_CELL_W
    body_h = max(len(rows), 1) * _HM_CELL_H
    width = grid_x + grid_w + 70
    height = grid_y + body_h + _HM_LEGEND_H
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" viewBox="0 0 {_f(width)} {_f(height)}" '
        f'width="{_f(width)}" height="{_f(height)}" font-family="system-ui, sans-serif" font-size="12">',
        "<title>Emotion mix per call: share of each call's scored windows by top label</title>",
        '<text x="8" y="20" font-size="15" font-weight="600">Emotion mix per call</text>',
        f'<text x="{_f(grid_x + grid_w)}" y="20" text-anchor="end" fill="#6b7280">'
        f"colour = share of the call's windows · number = window count</text>",
    ]
    for j, label in enumerate(labels):
        cx = grid_x + (j + 0.5) * _HM_CELL_W
        out.append(f'<text class="col" x="{_f(cx)}" y="{_f(grid_y - 8)}" text-anchor="middle" '
                   f'font-weight="600">{_e(label)}</text>')
    if rows:
        out.append(f'<text x="{_f(grid_x + grid_w + 8)}" y="{_f(grid_y - 8)}" fill="#6b7280">windows</text>')
    else:
        out.append(f'<text x="{_f(grid_x + grid_w / 2)}" y="{_f(grid_y + _HM_CELL_H * 0.65)}" text-anchor="middle" '
                   f'fill="#6b7280">no calls</text>')
    for i, (name, counts) in enumerate(rows):
        counts = counts if isinstance(counts, Mapping) else {}
        values = [max(_int(counts.get(label)), 0) for label in labels]
        total = sum(values)
        y = grid_y + i * _HM_CELL_H
        full = str(name)
        out.append(f'<text class="row" x="{_f(grid_x - 8)}" y="{_f(y + _HM_CELL_H * 0.65)}" text-anchor="end">'
                   f"<title>{_e(full)}</title>{_e(shown_names[i])}</text>")
        for j, (label, count) in enumerate(zip(labels, values)):
            share = count / total if total else 0.0
            rgb = _HM_NEGATIVE_RGB if label in NEGATIVE_LABELS else _HM_OTHER_RGB
            x = grid_x + j * _HM_CELL_W
            ink = "#ffffff" if share > 0.55 else "#1d2430"
            out.append(
                f'<rect class="cell" x="{_f(x)}" y="{_f(y)}" width="{_HM_CELL_W}" height="{_HM_CELL_H}" '
                f'fill="{_ramp(share, rgb)}" stroke="#ffffff" data-label="{_e(label)}" data-count="{count}">'
                f"<title>{_e(full)} · {_e(label)}: {count} window{'' if count == 1 else 's'} ({share:.0%})</title></rect>"
            )
            out.append(f'<text class="count" x="{_f(x + _HM_CELL_W / 2)}" y="{_f(y + _HM_CELL_H * 0.65)}" '
                       f'text-anchor="middle" fill="{ink}">{count}</text>')
        out.append(f'<text class="total" x="{_f(grid_x + grid_w + 8)}" y="{_f(y + _HM_CELL_H * 0.65)}" '
                   f'fill="#6b7280">{total}</text>')
    # legend: the two ramps from 0 % to 100 %
    ly = grid_y + body_h + 16
    out.append("<defs>")
    for key, rgb in (("neg", _HM_NEGATIVE_RGB), ("oth", _HM_OTHER_RGB)):
        out.append(f'<linearGradient id="hm-{key}" x1="0" x2="1" y1="0" y2="0">'
                   f'<stop offset="0" stop-color="#ffffff"/><stop offset="1" stop-color="{_ramp(1.0, rgb)}"/>'
                   "</linearGradient>")
    out.append("</defs>")
    lx = 8.0
    for key, text in (("neg", "negative labels"), ("oth", "other labels")):
        out.append(f'<rect class="legend" x="{_f(lx)}" y="{_f(ly)}" width="120" height="10" fill="url(#hm-{key})" '
                   'stroke="#d1d5db"/>')
        out.append(f'<text x="{_f(lx)}" y="{_f(ly + 24)}" fill="#6b7280">0%</text>')
        out.append(f'<text x="{_f(lx + 120)}" y="{_f(ly + 24)}" text-anchor="end" fill="#6b7280">100%</text>')
        out.append(f'<text x="{_f(lx + 128)}" y="{_f(ly + 9)}" fill="#6b7280">{text}</text>')
        lx += 250
    out.append("</svg>")
    return "\n".join(out)


# -- batch CSV -----------------------------------------------------------------------------------------------------


def _speaker(summary: Mapping, role: str) -> dict:
    for speaker in _dicts(summary.get("speakers")):
        if speaker.get("speaker") == role:
            return speaker
    return {}


def _csv_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    rounded = round(value, digits)
    return str(int(rounded)) if rounded == int(rounded) and digits == 0 else repr(rounded)


def _ms_to_s(value: object) -> str:
    number = _num(value)
    return "" if number is None else _csv_number(number / 1000)


def label_counts(summary: Mapping, labels: Iterable[str]) -> dict[str, int]:
    """Top-label window counts summed over the scored speakers of one summary, for each of `labels`."""
    totals = {str(label): 0 for label in labels}
    for speaker in _dicts(summary.get("speakers")):
        if speaker.get("scored") is not True:
            continue
        for label, count in _dict(speaker.get("top_labels")).items():
            if str(label) in totals:
                totals[str(label)] += max(_int(count), 0)
    return totals


def peak_negative(speaker: Mapping, labels: Sequence[str]) -> float | None:
    """Highest summed negative score (angry+disgusted+fearful+sad) over a speaker's trajectory points, or None."""
    points = _parse_points(_dict(speaker.get("trajectory")), list(labels))
    negative = [i for i, label in enumerate(labels) if label in NEGATIVE_LABELS]
    best: float | None = None
    for _, values in points:
        known = [values[i] for i in negative if values[i] is not None]
        if known:
            best = max(best if best is not None else 0.0, min(sum(known), 1.0))
    return best


def _summary_row(summary: Mapping, labels: list[str]) -> dict[str, str]:
    conversation = _dict(summary.get("conversation"))
    customer = _speaker(summary, "customer")
    agent = _speaker(summary, "agent")
    row: dict[str, str] = {
        "call_id": "" if summary.get("call_id") is None else str(summary.get("call_id")),
        "duration_s": _ms_to_s(summary.get("duration_ms")),
        "customer_speech_s": _ms_to_s(customer.get("speech_ms")),
        "agent_speech_s": _ms_to_s(agent.get("speech_ms")),
        "customer_talk_ratio": _csv_number(_num(_dict(conversation.get("talk_ratio")).get("customer"))),
        "dead_air_s": _ms_to_s(conversation.get("dead_air_ms")),
        "overtalk_s": _ms_to_s(conversation.get("overtalk_ms")),
    }
    silences = _num(conversation.get("silences_total"))
    if silences is None and isinstance(conversation.get("silences"), list):
        silences = float(len(_dicts(conversation.get("silences"))))
    row["silences"] = _csv_number(silences, 0)
    row["hold_s"] = _ms_to_s(_dict(conversation.get("hold")).get("ms"))
    interruptions = _dict(conversation.get("interruptions"))
    by = _dict(interruptions.get("by"))
    for role in ("agent", "customer"):
        value = _num(by.get(role))
        if value is None and interruptions:
            value = 0.0
        row[f"interruptions_by_{role}"] = _csv_number(value, 0)
    backchannels = _dict(conversation.get("backchannels"))
    for role in ("agent", "customer"):
        value = _num(_dict(backchannels.get("by")).get(role))
        row[f"backchannels_by_{role}"] = _csv_number(0.0 if value is None and backchannels else value, 0)
    for role, speaker in (("agent", agent), ("customer", customer)):
        row[f"laughs_by_{role}"] = _csv_number(_num(_dict(speaker.get("prosody")).get("laughs")), 0)
    alerts = _num(summary.get("alert_count"))
    if alerts is None and isinstance(summary.get("alerts"), list):
        alerts = float(len(summary["alerts"]))
    row["alerts"] = _csv_number(alerts, 0)
    top = ""
    if customer.get("scored") is True:
        counts = {str(k): _int(v) for k, v in _dict(customer.get("top_labels")).items()}
        order = {label: i for i, label in enumerate(labels)}
        ranked = sorted((c, -order.get(label, len(order)), label) for label, c in counts.items() if c > 0)
        top = ranked[-1][2] if ranked else ""
    row["customer_top_label"] = top
    summary_labels = _labels(summary)
    row["customer_peak_negative"] = (
        _csv_number(peak_negative(customer, summary_labels)) if customer.get("scored") is True else ""
    )
    for label, count in label_counts(summary, labels).items():
        row[f"count_{label}"] = str(count)
    return row


def write_batch_csv(path: str | os.PathLike, results: list[dict], labels: list[str]) -> None:
    """Write one CSV row per analysed file (columns CSV_COLUMNS, then count_<label> for each label).

    Each result is {"file", "status": "ok" | "error", "error", "summary"}. Error rows (and ok rows without a
    summary) carry only file, status and error; their figure cells are empty. Durations are in seconds,
    `customer_peak_negative` is the highest summed negative score of the customer's trajectory, and
    `count_<label>` sums the top-label window counts of the scored speakers.
    """
    labels = [str(label) for label in labels]
    columns = list(CSV_COLUMNS) + [f"count_{label}" for label in labels]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        for result in results:
            result = result if isinstance(result, dict) else {}
            row = {
                "file": "" if result.get("file") is None else str(result.get("file")),
                "status": "" if result.get("status") is None else str(result.get("status")),
                "error": "" if result.get("error") is None else str(result.get("error")),
            }
            summary = result.get("summary")
            if result.get("status") == "ok" and isinstance(summary, dict):
                row.update(_summary_row(summary, labels))
            writer.writerow(row)
