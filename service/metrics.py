"""Prometheus metrics behind small named functions; labels are bounded (role, rule, kind), never call or agent ids.

In a pod every process writes its metrics to the supervisor's directory (prometheus-client multiprocess
mode) and the supervisor serves their sum; gauges say how they combine (livesum: over the live processes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

ACTIVE_CALLS = Gauge("callpulse_active_calls", "Calls currently streaming", multiprocess_mode="livesum")
CALLS = Counter("callpulse_calls_total", "Calls ended, by outcome", ["outcome"])
AUDIO_SECONDS = Counter("callpulse_audio_seconds_total", "Seconds of channel audio ingested", ["role"])
VAD_SEGMENTS = Counter("callpulse_vad_segments_total", "Speech segments closed by the VAD", ["role"])
WINDOWS = Counter("callpulse_windows_total", "Analysis windows, by outcome", ["outcome"])
BATCH_SIZE = Histogram("callpulse_inference_batch_size", "Windows per model call", buckets=_BATCH_BUCKETS)
FORWARD_SIZE = Histogram("callpulse_inference_forward_size", "Windows in one model forward pass", buckets=_BATCH_BUCKETS)
PADDING_RATIO = Histogram("callpulse_inference_padding_ratio", "Share of a forward pass spent on padding",
                          buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75))
FORWARD_PASSES = Counter("callpulse_inference_forward_passes_total",
                         "Model forward passes, by path (graph: a captured CUDA graph replayed; eager)", ["path"])
BATCH_SECONDS = Histogram("callpulse_inference_batch_seconds", "Model time per batch", buckets=_MODEL_BUCKETS)
QUEUE_DEPTH = Gauge("callpulse_inference_queue_depth", "Windows waiting for the inference worker", multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("callpulse_inference_queue_wait_seconds", "Time a window waited for the worker", buckets=_MODEL_BUCKETS)
UPDATE_LATENCY = Histogram(
    "callpulse_emotion_update_latency_seconds", "Audio arrival to EmotionUpdate emitted", buckets=_LATENCY_BUCKETS
)
STAGE_SECONDS = Histogram(
    "callpulse_stage_seconds", "Time spent per unit of work in each pipeline stage (ingest: one chunk; score: one "
    "window's result through timeline and rules)", ["stage"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
ALERTS = Counter("callpulse_alerts_total", "Alerts raised", ["rule", "severity"])
ALERT_LATENCY = Histogram(
    "callpulse_alert_latency_seconds", "Audio arrival to alert published on Redis", buckets=_LATENCY_BUCKETS
)
PUBLISH_FAILURES = Counter("callpulse_publish_failures_total", "Redis publish attempts that failed")
AUDIO_GAPS = Counter("callpulse_audio_gaps_total", "Holes in a call's audio filled with silence")
AUDIO_GAP_SECONDS = Counter("callpulse_audio_gap_seconds_total", "Seconds of missing audio filled with silence")
CHUNKS_DROPPED = Counter("callpulse_chunks_dropped_total", "Audio chunks dropped on arrival", ["reason"])
PACING_DELAYS = Counter("callpulse_pacing_delays_total", "Times a live call was slowed to the pacing limit")
ERRORS = Counter("callpulse_errors_total", "Errors, by kind", ["kind"])
EVENTS_DROPPED = Counter("callpulse_events_dropped_total", "Events not delivered to a slow bridge", ["type"])
TRANSCRIPT_SEGMENTS = Counter("callpulse_transcript_segments_total", "Transcript segments from bridges, by outcome "
                              "(counted, or rejected with a warning)", ["outcome"])


HANDSHAKES = Counter("callpulse_handshakes_total", "Connections by how their handshake ended (started: the call "
                     "opened; timeout: nothing started it in time; busy: too many waiting; refused: bad or unauthorised)",
                     ["outcome"])
HANDSHAKES_WAITING = Gauge("callpulse_handshakes_waiting", "Connections open but not yet started", multiprocess_mode="livesum")


def handshake_begun(waiting: int) -> None:
    HANDSHAKES_WAITING.set(waiting)


def handshake_ended(outcome: str, waiting: int) -> None:
    """outcome: started, timeout, busy, refused or disconnected."""
    HANDSHAKES.labels(outcome).inc()
    HANDSHAKES_WAITING.set(waiting)


WINDOW_OUTCOMES = ("scored", "merged", "skipped_no_speech", "skipped_steady_sound", "failed", "dropped_superseded", "dropped_stale", "dropped_queue_full",
                   "dropped_call_backlog", "dropped_engine_unavailable")
ERROR_KINDS = ("invalid_argument", "already_exists", "resource_exhausted", "unavailable", "deadline_exceeded", "unauthenticated",
               "permission_denied", "internal", "inference_item", "publish_queue_full")


def preset(roles: tuple[str, ...], rules: list[tuple[str, str]]) -> None:
    """Create the labelled series whose labels are known in advance, at 0, so that /metrics lists them (and rate()
    works) before the first event: a pod's merged metrics only show series a process has touched."""
    for role in roles:
        _child(AUDIO_SECONDS, role)
        VAD_SEGMENTS.labels(role)
    for outcome in WINDOW_OUTCOMES:
        WINDOWS.labels(outcome)
    for kind in ERROR_KINDS:
        ERRORS.labels(kind)
    for rule, severity in rules:
        ALERTS.labels(rule, severity)


def serve(port: int, host: str) -> int:
    """Start the /metrics HTTP server in a background thread; returns the bound port."""
    disable_created_metrics()
    server, _thread = start_http_server(port, addr=host)
    return server.server_port


def call_opened() -> None:
    ACTIVE_CALLS.inc()


def call_closed(outcome: str) -> None:
    ACTIVE_CALLS.dec()
    CALLS.labels(outcome).inc()


_children: dict[tuple[str, str], object] = {}


def _child(metric, label: str):
    # labels() costs a lock and a dict lookup per call; these run per audio chunk
    key = (metric._name, label)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(label)
    return child


def audio_ingested(role: str, seconds: float) -> None:
    _child(AUDIO_SECONDS, role).inc(seconds)


def vad_segment(role: str) -> None:
    VAD_SEGMENTS.labels(role).inc()


def window(outcome: str) -> None:
    WINDOWS.labels(outcome).inc()


def inference_batch(size: int, seconds: float) -> None:
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)


def inference_forward(size: int, padding_ratio: float, path: str = "eager") -> None:
    """One forward pass of `size` windows; the padding ratio counts padded samples and dummy rows."""
    FORWARD_SIZE.observe(size)
    PADDING_RATIO.observe(padding_ratio)
    FORWARD_PASSES.labels(path).inc()


def inference_queue_depth(depth: int) -> None:
    QUEUE_DEPTH.set(depth)


def inference_queue_wait(seconds: float) -> None:
    QUEUE_WAIT.observe(seconds)


def emotion_update_latency(seconds: float) -> None:
    UPDATE_LATENCY.observe(seconds)


def stage(name: str, seconds: float) -> None:
    _child(STAGE_SECONDS, name).observe(seconds)


def stage_times(name: str, seconds: list[float]) -> None:
    """Observe several units of work of one stage at once (each one as `stage` would)."""
    child = _child(STAGE_SECONDS, name)
    for value in seconds:
        child.observe(value)


def alert_raised(rule: str, severity: str) -> None:
    ALERTS.labels(rule, severity).inc()


def alert_latency(seconds: float) -> None:
    ALERT_LATENCY.observe(seconds)


def publish_failed() -> None:
    PUBLISH_FAILURES.inc()


def audio_gap(seconds: float) -> None:
    AUDIO_GAPS.inc()
    AUDIO_GAP_SECONDS.inc(seconds)


def chunk_dropped(reason: str) -> None:
    CHUNKS_DROPPED.labels(reason).inc()


def transcript_segment(outcome: str) -> None:
    TRANSCRIPT_SEGMENTS.labels(outcome).inc()


def pacing_delay() -> None:
    PACING_DELAYS.inc()


def error(kind: str) -> None:
    ERRORS.labels(kind).inc()


def event_dropped(event_type: str) -> None:
    EVENTS_DROPPED.labels(event_type).inc()


RULES_RELOADS = Counter("callpulse_rules_reloads_total", "Attempts to reload the rules file, by outcome", ["outcome"])
RULES_LOADED = Gauge("callpulse_rules_loaded", "Rules in effect", multiprocess_mode="livemax")
REPORTS = Counter("callpulse_reports_total", "QA reports written, by outcome", ["outcome"])


def rules_reloaded(outcome: str) -> None:
    """outcome: loaded, unchanged or invalid."""
    RULES_RELOADS.labels(outcome).inc()


def rules_in_effect(count: int) -> None:
    RULES_LOADED.set(count)


def report_written(outcome: str) -> None:
    REPORTS.labels(outcome).inc()


PUBLISH_BACKLOG = Gauge("callpulse_publish_backlog", "Alerts and call events waiting for Redis (memory and disk)", multiprocess_mode="livesum")
PUBLISH_SPILLED = Counter("callpulse_publish_spilled_total", "Events written to the disk spill because the memory queue was full")


def publish_backlog(count: int) -> None:
    PUBLISH_BACKLOG.set(count)


def publish_spilled() -> None:
    PUBLISH_SPILLED.inc()
