"""Service configuration: frozen, validated dataclasses; the only module that reads the environment.

Every setting has a default, can be set by an environment variable (`CALLPULSE_*`, see ENV_VARS)
and, for the common ones, by a command-line option; the command line wins over the environment.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from service.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_RULES_PATH = str(Path(__file__).resolve().parent / "rules" / "default.yaml")
SUPPORTED_SAMPLE_RATES = (8000, 16000)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class IngestConfig:
    """How a call's audio is admitted: sizes, ordering, pacing and call limits."""

    max_chunk_bytes: int = 65536
    """Largest audio chunk accepted, in bytes (a 20 ms stereo 16 kHz PCM16 chunk is 1280)."""
    reorder_window: int = 10
    """Chunks held back to restore seq order; when more are waiting, the missing ones are declared lost."""
    max_seq_jump: int = 250
    """Largest forward jump of seq (missing chunks) filled with silence; a larger jump ends the call."""
    pacing_factor: float = 1.5
    """A live call may send audio at most this many times faster than real time (after the burst)."""
    pacing_burst_ms: int = 2000
    """Audio a live call may send ahead of real time before pacing applies."""
    idle_timeout_s: float = 30.0
    """A call that sends nothing for this long is ended."""
    max_call_duration_s: float = 4 * 3600.0
    """A call whose audio passes this duration is ended (with its summary)."""
    max_fill_ms: int = 1000
    """A hole in the audio (lost chunks, a timestamp ahead) up to this long is filled with silence that
    the VAD runs over; a longer one is stepped over: the call clock advances, open speech ends there."""
    max_gap_s: float = 3600.0
    """A hole longer than this (lost chunks, a Twilio timestamp ahead, AudioHook discarded audio) ends the
    call with INVALID_ARGUMENT."""
    work_block_ms: int = 100
    """A live call's audio is worked through (VAD, windows, analysis) once this much of it has queued, not at every
    message: the per-call overhead is paid per block (about 10% less server CPU per call-second with 20 ms messages),
    and updates come up to this much later. 0: at every message. Replays always work through each message."""

    def __post_init__(self) -> None:
        _check(self.max_chunk_bytes >= 64, f"max_chunk_bytes must be >= 64, got {self.max_chunk_bytes}")
        _check(0 <= self.reorder_window <= 1000, f"reorder_window must be 0..1000, got {self.reorder_window}")
        _check(self.max_seq_jump >= 1, f"max_seq_jump must be >= 1, got {self.max_seq_jump}")
        _check(self.pacing_factor >= 1.0, f"pacing_factor must be >= 1.0, got {self.pacing_factor}")
        _check(self.pacing_burst_ms >= 0, "pacing_burst_ms must be >= 0")
        _check(self.idle_timeout_s > 0, f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")
        _check(self.max_call_duration_s > 0, f"max_call_duration_s must be > 0, got {self.max_call_duration_s}")
        _check(0 <= self.max_fill_ms <= 60000, f"max_fill_ms must be 0..60000, got {self.max_fill_ms}")
        _check(0 < self.max_gap_s <= 24 * 3600, f"max_gap_s must be in (0, 86400], got {self.max_gap_s}")
        _check(0 <= self.work_block_ms <= 1000, f"work_block_ms must be 0..1000, got {self.work_block_ms}")


@dataclass(frozen=True)
class VadConfig:
    """Voice activity detection per channel (webrtcvad at the channel's native rate)."""

    aggressiveness: int = 2
    """webrtcvad mode 0..3; higher rejects more non-speech."""
    frame_ms: int = 20
    """VAD frame length: 10, 20 or 30 ms."""
    start_speech_ms: int = 60
    """Consecutive voiced audio needed to open a segment."""
    trailing_silence_ms: int = 300
    """Unvoiced audio that closes a segment (segments are never merged afterwards)."""
    max_segment_ms: int = 10000
    """A segment longer than this is cut; speech that goes on opens the next one at once."""

    def __post_init__(self) -> None:
        _check(self.aggressiveness in (0, 1, 2, 3), f"vad aggressiveness must be 0..3, got {self.aggressiveness}")
        _check(self.frame_ms in (10, 20, 30), f"vad frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        _check(self.start_speech_ms >= self.frame_ms, "vad start_speech_ms must be at least one frame")
        _check(self.trailing_silence_ms >= self.frame_ms, "vad trailing_silence_ms must be at least one frame")
        _check(self.max_segment_ms >= 1000, "vad max_segment_ms must be >= 1000")


@dataclass(frozen=True)
class WindowConfig:
    """Which audio goes to the emotion model, and how often, while a speaker talks."""

    window_ms: int = 3000
    """Longest analysis window: the last window_ms of the current speech segment."""
    hop_ms: int = 500
    """A new window is scored every hop_ms of speech (and once more when the segment ends)."""
    min_window_ms: int = 300
    """Speech shorter than this is not scored on its own."""
    max_pending_windows: int = 16
    """Windows of one call waiting for the model (live calls: see the overload policy)."""
    scoring: str = "incremental"
    """full: re-encode the whole window every hop; incremental: encode only new audio plus
    `context_ms` of left context and score windows from the frame-logit track."""
    context_ms: int = 500
    """Left context encoded before the new audio in incremental scoring (README: "Incremental scoring")."""

    def __post_init__(self) -> None:
        _check(500 <= self.window_ms <= 30000, f"window_ms must be 500..30000, got {self.window_ms}")
        _check(100 <= self.hop_ms <= self.window_ms, f"hop_ms must be 100..window_ms, got {self.hop_ms}")
        _check(100 <= self.min_window_ms <= self.window_ms, "min_window_ms must be 100..window_ms")
        _check(self.max_pending_windows >= 1, "max_pending_windows must be >= 1")
        _check(self.scoring in ("full", "incremental"), f"scoring must be full or incremental, got {self.scoring!r}")
        _check(0 <= self.context_ms <= self.window_ms, f"context_ms must be 0..window_ms, got {self.context_ms}")


@dataclass(frozen=True)
class InferenceConfig:
    """The emotion model and the one worker that owns it."""

    model: str = "iic/emotion2vec_plus_large"
    """A model hub id or a local funasr model directory (config.yaml, model.pt, tokens.txt)."""
    hub: str = "ms"
    """Model hub for hub ids: ms (ModelScope) or hf (Hugging Face)."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 on CUDA - fp16 where the GPU has no bf16 - and fp32 on the CPU), fp32, or on CUDA fp16 / bf16
    (autocast)."""
    threads: int = 0
    """Torch intra-op threads for the CPU path; 0 leaves torch's default."""
    max_batch: int = 0
    """Most windows in one model call; 0 = auto: 4 on the CPU (where larger batches lose throughput,
    README "Inference engine"), 32 on CUDA."""
    max_wait_ms: float = 5.0
    """How long the worker waits for more windows before running a partial batch."""
    bucket_ms: int = 500
    """Windows whose lengths fall in the same bucket of this width share a (padded) forward pass."""
    queue_size: int = 1024
    """Windows waiting for the worker across all calls; when full a live call's new window is dropped and counted."""
    deadline_ms: int = 1000
    """A live call's window that has not reached the model this long after its audio arrived is dropped as stale."""
    cuda_graphs: bool = True
    """On CUDA, capture the forward pass as CUDA graphs at warm-up (per length bucket and batch size 1, 2, 4, ...
    up to max_batch) and replay them, batches padded up to the next captured size; other shapes run eagerly.
    No effect on the CPU."""
    speech_check: float = 0.2
    """Before the emotion model, silero-vad (service/inference/speech.py) checks each scored window in the engine,
    carrying each channel's detector state from window to window: a window in which less than this share of the
    32 ms chunks are speech is not scored (music the steady-sound gate let through, near silence, the other side's
    bleed). 0 turns the check off."""
    speech_check_refresh_ms: int = 0
    """The speech check starts a channel's detector state afresh once it has run this long while it hears speech
    (warmed up on the window's left context; 0: never): carried on for good, speech leaves silero-vad hearing speech in
    music that follows it, while a fresh state misses some narrowband speech (README "The engine's speech check")."""

    def __post_init__(self) -> None:
        _check(bool(self.model), "model must not be empty")
        _check(self.hub in ("ms", "hf"), f"hub must be ms or hf, got {self.hub!r}")
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"device must be cpu or cuda[:N], got {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision must be {', '.join(PRECISIONS)}, got {self.precision!r}")
        _check(self.precision in ("auto", "fp32") or self.device.startswith("cuda"), f"precision {self.precision} needs a CUDA device")
        _check(isinstance(self.cuda_graphs, bool), f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        _check(0.0 <= self.speech_check <= 1.0, f"speech_check must be 0 (off) to 1, got {self.speech_check}")
        _check(0 <= self.speech_check_refresh_ms <= 3_600_000,
               f"speech_check_refresh_ms must be 0 (never) to 3600000, got {self.speech_check_refresh_ms}")
        _check(self.threads >= 0, "threads must be >= 0")
        _check(0 <= self.max_batch <= 1024, f"max_batch must be 0 (auto) or 1..1024, got {self.max_batch}")
        _check(0 <= self.max_wait_ms <= 1000, f"max_wait_ms must be 0..1000, got {self.max_wait_ms}")
        _check(1 <= self.bucket_ms <= 60000, f"bucket_ms must be 1..60000, got {self.bucket_ms}")
        _check(self.queue_size >= 1, "queue_size must be >= 1")
        _check(self.deadline_ms >= 50, f"deadline_ms must be >= 50, got {self.deadline_ms}")

    @property
    def effective_max_batch(self) -> int:
        """max_batch with `auto` resolved for the device."""
        if self.max_batch:
            return self.max_batch
        return 32 if self.device.startswith("cuda") else 4


@dataclass(frozen=True)
class RedisConfig:
    """Where alerts and call summaries are published."""

    url: str = "redis://127.0.0.1:6379/0"
    """redis:// or rediss:// URL."""
    prefix: str = "agentassist"
    """Prefix of every channel and stream name."""
    stream_maxlen: int = 100000
    """Approximate cap of the durable alert stream (XADD MAXLEN ~)."""
    publish_queue: int = 10000
    """Alerts and call events waiting in memory to be published; when full, new ones go to the disk
    spill (or, without one, are dropped, logged and counted)."""
    spill_dir: str = ""
    """Directory of the disk spill for events Redis could not take yet (kept across restarts); empty: no spill.
    Checked at start: it must be (or be creatable as) a writable directory with free space."""
    spill_after_ms: int = 200
    """With a spill: events Redis has not acknowledged this long after they were queued move from memory
    to the spill (and while Redis is known to be unreachable, new events are written to the spill at once),
    so a crash of the process loses at most this much of unacknowledged events."""
    spill_max_bytes: int = 256 * 1024 * 1024
    """Largest size of the disk spill; an event that does not fit is dropped, logged and counted."""
    dedup_ttl_s: int = 86400
    """How long Redis remembers a delivered event's id, so that a retry within it is not delivered twice."""
    tls_ca_file: str = ""
    """CA bundle that signs Redis's certificate (rediss:// URLs with a private CA); empty: the system's."""

    def __post_init__(self) -> None:
        _check(self.url.startswith(("redis://", "rediss://", "unix://")), f"redis url must start with redis://, rediss:// or unix://, got {self.url!r}")
        _check(bool(self.prefix) and ":" not in self.prefix, f"redis prefix must be non-empty without ':', got {self.prefix!r}")
        _check(self.stream_maxlen >= 100, "stream_maxlen must be >= 100")
        _check(self.publish_queue >= 1, "publish_queue must be >= 1")
        _check(self.spill_max_bytes >= 4096, f"spill_max_bytes must be >= 4096, got {self.spill_max_bytes}")
        _check(10 <= self.spill_after_ms <= 60000, f"spill_after_ms must be 10..60000, got {self.spill_after_ms}")
        _check(self.dedup_ttl_s >= 60, f"dedup_ttl_s must be >= 60, got {self.dedup_ttl_s}")


@dataclass(frozen=True)
class ServerConfig:
    """Network endpoints and call admission."""

    host: str = "0.0.0.0"
    """Address the gRPC and metrics servers bind to."""
    grpc_port: int = 50051
    """gRPC port; 0 picks a free one."""
    ws_port: int = 8080
    """WebSocket port (native, /twilio, /audiohook, /healthz, /readyz); 0 picks a free one, -1 disables it."""
    metrics_port: int = 9100
    """Prometheus /metrics port; 0 picks a free one, -1 disables it."""
    max_calls: int = 500
    """Concurrent calls across the pod; one more is refused with RESOURCE_EXHAUSTED."""
    workers: int = 0
    """Ingest worker processes of `serve` (each with the gRPC and WebSocket servers on the same ports);
    0 = one per CPU core less one for the model engine, at least one."""
    max_calls_per_worker: int = 0
    """Calls one worker carries; one more is refused with RESOURCE_EXHAUSTED naming this (a bridge that
    connects again reaches another worker). 0 = twice the worker's share of max_calls."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT, so that the pod's workers share the ports (set by the supervisor)."""
    max_message_bytes: int = 1024 * 1024
    """Largest gRPC or WebSocket message accepted (larger ones are refused by the transport)."""
    twilio_inbound_role: str = "customer"
    """Role of Twilio's inbound track (the caller's audio); the outbound track gets the other role."""
    audiohook_api_keys: tuple[str, ...] = ()
    """API keys accepted in AudioHook's X-API-KEY header; empty accepts any non-empty key (development only)."""
    audiohook_client_secret: str = ""
    """The AudioHook client secret (base64, as entered in Genesys Cloud). When set, an /audiohook upgrade
    must carry a valid, unexpired HTTP message signature made with it (refused with 401 otherwise)."""
    twilio_auth_token: str = ""
    """The Twilio account's auth token. When set, a /twilio upgrade must carry a valid X-Twilio-Signature
    (refused with 403 otherwise)."""
    public_ws_url: str = ""
    """The WebSocket base URL as the platforms see it (e.g. wss://callpulse.example.com), which Twilio signs;
    empty: wss:// and the request's Host header."""
    handshake_timeout_s: float = 5.0
    """A connection must start its call (gRPC CallConfig, native `start`, Twilio `start`, AudioHook `open`)
    this soon after it opens, or it is closed (counted in callpulse_handshakes_total{outcome="timeout"})."""
    max_handshakes: int = 256
    """Connections open but not yet started; one more is refused (RESOURCE_EXHAUSTED / HTTP 503)."""
    shutdown_grace_s: float = 20.0
    """On SIGTERM: time to end active calls (with their summaries), drain and exit."""
    start_timeout_s: float = 180.0
    """A pod's child process (the engine loading and warming its model, a worker) has this long from its start
    to report ready before the supervisor kills and restarts it; once ready it must beat every 15 s."""
    max_rss_mb: int = 0
    """Global memory bound: while the process's resident memory is over this, new calls are refused
    with RESOURCE_EXHAUSTED (calls in progress go on); 0: no limit besides max_calls."""
    auth_tokens: tuple[str, ...] = ()
    """Caller credentials as 'tenant:token' entries; with none here or in auth_tokens_file anyone is
    admitted (development only)."""
    auth_tokens_file: str = ""
    """A file of 'tenant:token' lines (a mounted secret), added to auth_tokens."""
    tls_cert_file: str = ""
    """PEM certificate (chain) for gRPC over TLS and WSS; with tls_key_file. Empty: plaintext."""
    tls_key_file: str = ""
    """PEM private key of tls_cert_file."""

    def __post_init__(self) -> None:
        _check(0 <= self.grpc_port <= 65535, f"grpc_port must be 0..65535, got {self.grpc_port}")
        _check(-1 <= self.ws_port <= 65535, f"ws_port must be -1..65535, got {self.ws_port}")
        _check(self.twilio_inbound_role in ("customer", "agent"), f"twilio_inbound_role must be customer or agent, got {self.twilio_inbound_role!r}")
        _check(-1 <= self.metrics_port <= 65535, f"metrics_port must be -1..65535, got {self.metrics_port}")
        _check(self.max_calls >= 1, "max_calls must be >= 1")
        _check(0 <= self.workers <= 256, f"workers must be 0 (one per core) .. 256, got {self.workers}")
        _check(self.max_calls_per_worker >= 0, f"max_calls_per_worker must be >= 0, got {self.max_calls_per_worker}")
        _check(self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024")
        _check(self.start_timeout_s > 0, f"start_timeout_s must be > 0, got {self.start_timeout_s}")
        _check(0 < self.handshake_timeout_s <= 300, f"handshake_timeout_s must be in (0, 300], got {self.handshake_timeout_s}")
        _check(self.max_handshakes >= 1, f"max_handshakes must be >= 1, got {self.max_handshakes}")
        _check(0 < self.shutdown_grace_s <= 3600, f"shutdown_grace_s must be in (0, 3600], got {self.shutdown_grace_s}")
        _check(bool(self.tls_cert_file) == bool(self.tls_key_file), "tls_cert_file and tls_key_file go together: set both or neither")
        _check(self.max_rss_mb >= 0, f"max_rss_mb must be >= 0, got {self.max_rss_mb}")
        _check(not self.public_ws_url or urlsplit(self.public_ws_url).scheme in ("ws", "wss"),
               "public_ws_url must be a ws:// or wss:// URL")
        if self.audiohook_client_secret:
            try:
                _check(bool(base64.b64decode(self.audiohook_client_secret, validate=True)), "audiohook_client_secret is empty")
            except (binascii.Error, ValueError):
                raise ConfigError("audiohook_client_secret must be base64, as entered in Genesys Cloud") from None

    def worker_count(self, cores: int) -> int:
        """`workers` with 0 resolved: one per core less one for the engine, at least one."""
        return self.workers or max(1, cores - 1)

    def calls_per_worker(self, workers: int) -> int:
        """`max_calls_per_worker` with 0 resolved: twice a worker's share of max_calls."""
        return self.max_calls_per_worker or max(1, -(-2 * self.max_calls // workers))


@dataclass(frozen=True)
class AnalyticsConfig:
    """Conversation analytics: prosody, turn-taking, summaries and reports."""

    baseline_warmup_ms: int = 10000
    """Voiced speech a speaker needs before loudness relative to their own baseline is reported."""
    hangover_ms: int = 200
    """A speaker still counts as speaking this long after their last voiced frame (bridges gaps inside words)."""
    interruption_min_overlap_ms: int = 500
    """A speaker who starts while the other speaks and takes the floor (the other stops first) has
    interrupted if both spoke at least this long at once; a shorter overlap is an ordinary change of turn."""
    interruption_contest_ms: int = 1500
    """Both speaking this long at once is an interruption whoever then stops first (a contested floor);
    a speaker who starts while the other speaks and stops first before this is a back-channel ("mm-hm",
    "right"), counted apart from interruptions."""
    min_speech_ms: int = 300
    """Voiced bursts with less voiced time than this (clicks, breaths, line noise) do not end dead air."""
    turn_pause_ms: int = 400
    """While both speakers overlap, a pause shorter than this inside one's own talk (a comma, a breath) does not
    give up the floor: it neither ends the overlap's decision (take-over or back-channel) nor makes the speaker's
    resumption a new interruption of the other. At least hangover_ms."""
    min_silence_ms: int = 2000
    """Dead air at least this long is listed in the call summary."""
    steady_gate: bool = True
    """Tones (ringback, busy, DTMF, fax) and steady music are not speech (service/analytics/gate.py):
    they count as no one's talk, their windows are not scored, and dead air does not run while they play."""
    laughter: bool = True
    """Runs of at least four bursts of one sound a few per second apart ("ha-ha-ha") are laughter
    (service/analytics/laughter.py): not syllables, not in the speech rate; the summary gives each speaker's laughs."""
    hold_min_ms: int = 5000
    """A channel playing steady sound (music) this long is on hold: hold time and count in the summary."""
    check_unscored: str = "suspect"
    """Which windows of a speaker whose emotion is not scored go to the engine's speech check (CALLPULSE_SPEECH_CHECK
    above 0), so that music the steady-sound gate misses stops counting as their talk: "suspect" (while the gate
    heard a steady stretch of 1 s or more on their channel in the last 30 s, or the check latched it; next to no
    cost on a call without music), "all" (every window: music the gate never catches too, at the cost of checking
    a second channel, small on a GPU), "none"."""
    crosstalk_margin_db: float = 20.0
    """Stereo calls: where both channels are voiced, a channel this many dB or more below the other is
    the other side's voice leaking in (echo, bleed) and does not count as speaking; 0 turns this off."""
    tick_ms: int = 100
    """Conversation rules (dead air, over-talk, interruptions) are evaluated every this much call time."""
    analysis_ms: int = 500
    """Prosody and turn-taking run on the decided audio at least this often (and whenever a window is cut, for its
    figures), on the last conversation tick in that span: alerts of conversation rules keep their call time
    (`fired_ms`) but are published up to this much audio later; each run costs per call, so fewer, longer runs cost
    less CPU (README "Per-call CPU cost"). Set it to tick_ms to publish them with the chunk that completes their tick."""
    peaks: int = 5
    """Moments of strongest negative emotion listed per speaker in the call summary."""
    reports_dir: str = ""
    """When set, the HTML QA report of every call is written there as {call_id}.html; empty: not written."""
    rules_poll_s: float = 2.0
    """How often the rules file is checked for changes (0: only on SIGHUP)."""

    def __post_init__(self) -> None:
        _check(0 <= self.baseline_warmup_ms <= 600000, f"baseline_warmup_ms must be 0..600000, got {self.baseline_warmup_ms}")
        _check(0 <= self.hangover_ms <= 2000, f"hangover_ms must be 0..2000, got {self.hangover_ms}")
        _check(0 < self.interruption_min_overlap_ms <= 10000, f"interruption_min_overlap_ms must be 1..10000, got {self.interruption_min_overlap_ms}")
        _check(self.interruption_min_overlap_ms <= self.interruption_contest_ms <= 60000,
               f"interruption_contest_ms must be interruption_min_overlap_ms ({self.interruption_min_overlap_ms})..60000, "
               f"got {self.interruption_contest_ms}")
        _check(0 <= self.min_speech_ms <= 2000, f"min_speech_ms must be 0..2000, got {self.min_speech_ms}")
        _check(self.hangover_ms <= self.turn_pause_ms <= 3000,
               f"turn_pause_ms must be hangover_ms ({self.hangover_ms})..3000, got {self.turn_pause_ms}")
        _check(isinstance(self.steady_gate, bool), f"steady_gate must be true or false, got {self.steady_gate!r}")
        _check(isinstance(self.laughter, bool), f"laughter must be true or false, got {self.laughter!r}")
        _check(1000 <= self.hold_min_ms <= 600000, f"hold_min_ms must be 1000..600000, got {self.hold_min_ms}")
        _check(self.check_unscored in ("suspect", "all", "none"),
               f"check_unscored must be suspect, all or none, got {self.check_unscored!r}")
        _check(self.min_silence_ms >= 100, f"min_silence_ms must be >= 100, got {self.min_silence_ms}")
        _check(0 <= self.crosstalk_margin_db <= 80, f"crosstalk_margin_db must be 0..80, got {self.crosstalk_margin_db}")
        _check(20 <= self.tick_ms <= 1000, f"tick_ms must be 20..1000, got {self.tick_ms}")
        _check(20 <= self.analysis_ms <= 1000, f"analysis_ms must be 20..1000, got {self.analysis_ms}")
        _check(0 <= self.peaks <= 50, f"peaks must be 0..50, got {self.peaks}")
        _check(self.rules_poll_s >= 0, f"rules_poll_s must be >= 0, got {self.rules_poll_s}")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the composition root needs to build the service."""

    server: ServerConfig = field(default_factory=ServerConfig)
    """Network endpoints and call admission."""
    ingest: IngestConfig = field(default_factory=IngestConfig)
    """Per-call input limits, ordering and pacing."""
    vad: VadConfig = field(default_factory=VadConfig)
    """Voice activity detection."""
    windows: WindowConfig = field(default_factory=WindowConfig)
    """Analysis window cadence."""
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    """Emotion model and batching."""
    redis: RedisConfig = field(default_factory=RedisConfig)
    """Alert publishing."""
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    """Prosody, turn-taking, summaries and reports."""
    rules_path: str = DEFAULT_RULES_PATH
    """YAML rules file."""
    log_level: str = "INFO"
    """Python logging level name."""

    def __post_init__(self) -> None:
        _check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), f"log_level {self.log_level!r} is not a logging level")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false (1/0, yes/no, on/off)")


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# name -> (section, field, parser); section "" is ServiceConfig itself.
ENV_VARS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "CALLPULSE_HOST": ("server", "host", str),
    "CALLPULSE_GRPC_PORT": ("server", "grpc_port", int),
    "CALLPULSE_METRICS_PORT": ("server", "metrics_port", int),
    "CALLPULSE_WS_PORT": ("server", "ws_port", int),
    "CALLPULSE_MAX_CALLS": ("server", "max_calls", int),
    "CALLPULSE_WORKERS": ("server", "workers", int),
    "CALLPULSE_MAX_CALLS_PER_WORKER": ("server", "max_calls_per_worker", int),
    "CALLPULSE_MAX_MESSAGE_BYTES": ("server", "max_message_bytes", int),
    "CALLPULSE_TWILIO_INBOUND_ROLE": ("server", "twilio_inbound_role", str),
    "CALLPULSE_AUDIOHOOK_API_KEYS": ("server", "audiohook_api_keys", _parse_list),
    "CALLPULSE_AUDIOHOOK_CLIENT_SECRET": ("server", "audiohook_client_secret", str),
    "CALLPULSE_TWILIO_AUTH_TOKEN": ("server", "twilio_auth_token", str),
    "CALLPULSE_PUBLIC_WS_URL": ("server", "public_ws_url", str),
    "CALLPULSE_SHUTDOWN_GRACE_S": ("server", "shutdown_grace_s", float),
    "CALLPULSE_HANDSHAKE_TIMEOUT_S": ("server", "handshake_timeout_s", float),
    "CALLPULSE_START_TIMEOUT_S": ("server", "start_timeout_s", float),
    "CALLPULSE_MAX_HANDSHAKES": ("server", "max_handshakes", int),
    "CALLPULSE_MAX_RSS_MB": ("server", "max_rss_mb", int),
    "CALLPULSE_AUTH_TOKENS": ("server", "auth_tokens", _parse_list),
    "CALLPULSE_AUTH_TOKENS_FILE": ("server", "auth_tokens_file", str),
    "CALLPULSE_TLS_CERT_FILE": ("server", "tls_cert_file", str),
    "CALLPULSE_TLS_KEY_FILE": ("server", "tls_key_file", str),
    "CALLPULSE_REDIS_TLS_CA_FILE": ("redis", "tls_ca_file", str),
    "CALLPULSE_MAX_CHUNK_BYTES": ("ingest", "max_chunk_bytes", int),
    "CALLPULSE_REORDER_WINDOW": ("ingest", "reorder_window", int),
    "CALLPULSE_MAX_SEQ_JUMP": ("ingest", "max_seq_jump", int),
    "CALLPULSE_PACING_FACTOR": ("ingest", "pacing_factor", float),
    "CALLPULSE_IDLE_TIMEOUT_S": ("ingest", "idle_timeout_s", float),
    "CALLPULSE_WORK_BLOCK_MS": ("ingest", "work_block_ms", int),
    "CALLPULSE_MAX_CALL_DURATION_S": ("ingest", "max_call_duration_s", float),
    "CALLPULSE_MAX_FILL_MS": ("ingest", "max_fill_ms", int),
    "CALLPULSE_MAX_GAP_S": ("ingest", "max_gap_s", float),
    "CALLPULSE_VAD_AGGRESSIVENESS": ("vad", "aggressiveness", int),
    "CALLPULSE_VAD_TRAILING_SILENCE_MS": ("vad", "trailing_silence_ms", int),
    "CALLPULSE_VAD_MAX_SEGMENT_MS": ("vad", "max_segment_ms", int),
    "CALLPULSE_WINDOW_MS": ("windows", "window_ms", int),
    "CALLPULSE_HOP_MS": ("windows", "hop_ms", int),
    "CALLPULSE_SCORING": ("windows", "scoring", str),
    "CALLPULSE_CONTEXT_MS": ("windows", "context_ms", int),
    "CALLPULSE_MODEL": ("inference", "model", str),
    "CALLPULSE_HUB": ("inference", "hub", str),
    "CALLPULSE_DEVICE": ("inference", "device", str),
    "CALLPULSE_PRECISION": ("inference", "precision", str),
    "CALLPULSE_THREADS": ("inference", "threads", int),
    "CALLPULSE_MAX_BATCH": ("inference", "max_batch", int),
    "CALLPULSE_MAX_WAIT_MS": ("inference", "max_wait_ms", float),
    "CALLPULSE_QUEUE_SIZE": ("inference", "queue_size", int),
    "CALLPULSE_BUCKET_MS": ("inference", "bucket_ms", int),
    "CALLPULSE_DEADLINE_MS": ("inference", "deadline_ms", int),
    "CALLPULSE_CUDA_GRAPHS": ("inference", "cuda_graphs", _parse_bool),
    "CALLPULSE_SPEECH_CHECK": ("inference", "speech_check", float),
    "CALLPULSE_SPEECH_CHECK_REFRESH_MS": ("inference", "speech_check_refresh_ms", int),
    "CALLPULSE_REDIS_URL": ("redis", "url", str),
    "CALLPULSE_REDIS_PREFIX": ("redis", "prefix", str),
    "CALLPULSE_PUBLISH_QUEUE": ("redis", "publish_queue", int),
    "CALLPULSE_SPILL_DIR": ("redis", "spill_dir", str),
    "CALLPULSE_SPILL_MAX_BYTES": ("redis", "spill_max_bytes", int),
    "CALLPULSE_SPILL_AFTER_MS": ("redis", "spill_after_ms", int),
    "CALLPULSE_DEDUP_TTL_S": ("redis", "dedup_ttl_s", int),
    "CALLPULSE_RULES": ("", "rules_path", str),
    "CALLPULSE_RULES_POLL_S": ("analytics", "rules_poll_s", float),
    "CALLPULSE_REPORTS_DIR": ("analytics", "reports_dir", str),
    "CALLPULSE_BASELINE_WARMUP_MS": ("analytics", "baseline_warmup_ms", int),
    "CALLPULSE_INTERRUPTION_MIN_OVERLAP_MS": ("analytics", "interruption_min_overlap_ms", int),
    "CALLPULSE_INTERRUPTION_CONTEST_MS": ("analytics", "interruption_contest_ms", int),
    "CALLPULSE_MIN_SPEECH_MS": ("analytics", "min_speech_ms", int),
    "CALLPULSE_TURN_PAUSE_MS": ("analytics", "turn_pause_ms", int),
    "CALLPULSE_ANALYSIS_MS": ("analytics", "analysis_ms", int),
    "CALLPULSE_STEADY_GATE": ("analytics", "steady_gate", _parse_bool),
    "CALLPULSE_LAUGHTER": ("analytics", "laughter", _parse_bool),
    "CALLPULSE_HOLD_MIN_MS": ("analytics", "hold_min_ms", int),
    "CALLPULSE_CHECK_UNSCORED": ("analytics", "check_unscored", str),
    "CALLPULSE_MIN_SILENCE_MS": ("analytics", "min_silence_ms", int),
    "CALLPULSE_CROSSTALK_MARGIN_DB": ("analytics", "crosstalk_margin_db", float),
    "CALLPULSE_LOG_LEVEL": ("", "log_level", str),
}

SECRET_ENV_VARS = frozenset({"CALLPULSE_AUTH_TOKENS", "CALLPULSE_AUDIOHOOK_API_KEYS", "CALLPULSE_REDIS_URL",
                             "CALLPULSE_AUDIOHOOK_CLIENT_SECRET", "CALLPULSE_TWILIO_AUTH_TOKEN"})
"""Variables whose values never appear in messages or logs."""

# command-line option dest -> (section, field)
CLI_OPTIONS: dict[str, tuple[str, str]] = {
    "host": ("server", "host"),
    "grpc_port": ("server", "grpc_port"),
    "ws_port": ("server", "ws_port"),
    "metrics_port": ("server", "metrics_port"),
    "max_calls": ("server", "max_calls"),
    "workers": ("server", "workers"),
    "redis_url": ("redis", "url"),
    "redis_prefix": ("redis", "prefix"),
    "model": ("inference", "model"),
    "hub": ("inference", "hub"),
    "device": ("inference", "device"),
    "precision": ("inference", "precision"),
    "threads": ("inference", "threads"),
    "rules": ("", "rules_path"),
    "log_level": ("", "log_level"),
}


def _apply(config: ServiceConfig, changes: dict[tuple[str, str], Any]) -> ServiceConfig:
    by_section: dict[str, dict[str, Any]] = {}
    for (section, name), value in changes.items():
        by_section.setdefault(section, {})[name] = value
    top = dict(by_section.pop("", {}))
    for section, values in by_section.items():
        top[section] = replace(getattr(config, section), **values)
    return replace(config, **top)


def load_config(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: ServiceConfig | None = None,
) -> ServiceConfig:
    """Build the configuration from defaults, then `CALLPULSE_*` variables, then command-line values.

    `cli` maps option names of CLI_OPTIONS to values; None values are ignored. Raises ConfigError
    naming the variable or option that is wrong.
    """
    environ = os.environ if environ is None else environ
    config = base or ServiceConfig()
    changes: dict[tuple[str, str], Any] = {}
    for name, (section, attr, parse) in ENV_VARS.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            changes[(section, attr)] = parse(raw)
        except ValueError as exc:
            shown = "<secret>" if name in SECRET_ENV_VARS else repr(raw)
            raise ConfigError(f"environment variable {name}={shown}: {exc}") from None
    for option, value in (cli or {}).items():
        if value is None:
            continue
        if option not in CLI_OPTIONS:
            raise ConfigError(f"unknown option {option!r}")
        changes[CLI_OPTIONS[option]] = value
    try:
        return _apply(config, changes)
    except ConfigError:
        raise
    except TypeError as exc:  # a wrong field name is a programming error worth a clear message
        raise ConfigError(str(exc)) from None


def config_as_dict(config: ServiceConfig) -> dict[str, Any]:
    """Flatten the configuration for logging at start-up, secrets masked (the Redis URL's credentials,
    API keys, auth tokens)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if hasattr(value, "__dataclass_fields__"):
            for g in fields(value):
                out[f"{f.name}.{g.name}"] = getattr(value, g.name)
        else:
            out[f.name] = value
    url = out.get("redis.url", "")
    if "@" in url:
        scheme, rest = url.split("://", 1)
        out["redis.url"] = f"{scheme}://***@{rest.split('@', 1)[1]}"
    for key in ("server.audiohook_api_keys", "server.auth_tokens"):
        if out.get(key):
            out[key] = f"<{len(out[key])} secrets>"
    for key in ("server.audiohook_client_secret", "server.twilio_auth_token"):
        if out.get(key):
            out[key] = "<secret>"
    return out
