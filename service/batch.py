"""Batch analysis of recorded calls: the live pipeline (VAD, windows, model, prosody, rules) over files, no Redis.

`python -m service analyze FILES... --out DIR` reads each recording (WAV, FLAC, OGG, MP3; mono or
stereo), replays it through a CallSession exactly as a live call with `realtime: false` would be
processed (so nothing is dropped), and writes per call DIR/<name>/result.json (summary, timeline,
alerts), report.html (the QA report), embeddings.npy when asked, and across calls DIR/calls.csv and
DIR/heatmap.svg. A file that cannot be read or analysed is reported and skipped; the batch goes on.
A transcript beside a recording (NAME.transcript.json) is fed in as a live recognizer's results would be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from service.alerts import EventSink
from service.audio.files import RecordedAudio, read_call_audio
from service.config import ServiceConfig
from service.domain import Alert, AudioFormat, CallConfig, CallSummary, EmotionUpdate, Encoding, Role, TranscriptSegment, Warning
from service.errors import CallPulseError, InvalidArgument
from service.inference.base import EmotionModel
from service.inference.batcher import InferenceBatcher
from service.inference.scoring import LocalScoringClient
from service.report import render_call_report, render_heatmap_svg, write_batch_csv
from service.rules import RuleEngine, RuleSet, load_rules
from service.session import CallSession, SessionContext

log = logging.getLogger(__name__)

RESULT_SCHEMA_VERSION = 1
CHUNK_MS = 1000


@dataclass(frozen=True)
class AnalyzeOptions:
    """How a batch of recordings is analysed."""

    out_dir: str
    """Where the per-call folders, calls.csv and heatmap.svg are written."""
    roles: tuple[Role, ...] = (Role.CUSTOMER, Role.AGENT)
    """Role of each channel in channel order; a mono file takes the first."""
    score_roles: tuple[Role, ...] | None = None
    """Speakers whose emotion is scored; None: every channel."""
    embeddings: bool = False
    """Write each scored window's embedding to embeddings.npy (windows are then scored whole)."""
    jobs: int = 2
    """Recordings analysed at once (their windows share the model's batches)."""
    progress: bool | None = None
    """Show a progress bar; None: when stderr is a terminal."""

    def __post_init__(self) -> None:
        if not self.roles or len(self.roles) > 2 or len(set(self.roles)) != len(self.roles):
            raise InvalidArgument("--roles: expected one or two different roles, e.g. customer,agent")
        if self.jobs < 1:
            raise InvalidArgument(f"--jobs must be >= 1, got {self.jobs}")


@dataclass
class FileResult:
    """What happened to one input file."""

    file: str
    status: str = "ok"
    """ok or error."""
    error: str | None = None
    summary: dict[str, Any] | None = None
    out_dir: str | None = None
    audio_s: float = 0.0

    def as_row(self) -> dict[str, Any]:
        return {"file": self.file, "status": self.status, "error": self.error, "summary": self.summary}


class MemorySink(EventSink):
    """Keeps a call's alert and lifecycle documents in memory (batch analysis has no Redis)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.call_events: list[dict[str, Any]] = []

    def publish_alert(self, alert: Alert, call: CallConfig, arrival: float) -> None:
        self.alerts.append(alert.document)

    def publish_call_event(self, document: dict[str, Any]) -> None:
        self.call_events.append(document)


@dataclass
class _Collected:
    timeline: list[dict[str, Any]] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    summary: CallSummary | None = None
    transcript: dict[str, Any] | None = None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _timeline_entry(update: EmotionUpdate, embedding_row: int | None) -> dict[str, Any]:
    entry = {
        "speaker": update.speaker.value,
        "start_ms": update.window_start_ms,
        "end_ms": update.window_end_ms,
        "top_label": update.top_label,
        "top_score": round(update.top_score, 4),
        "scores": {label: round(score, 4) for label, score in zip(update.labels, update.scores)},
        "loudness_dbfs": _round(update.loudness_dbfs),
        "loudness_over_baseline_db": _round(update.loudness_over_baseline_db),
        "pitch_hz": _round(update.pitch_hz),
        "pitch_range_st": _round(update.pitch_range_st),
        "speech_rate_spm": _round(update.speech_rate_spm),
        "speech_rate_cpm": _round(update.speech_rate_cpm),
        "segment_final": update.segment_final,
        "degraded": update.degraded,
    }
    if embedding_row is not None:
        entry["embedding_row"] = embedding_row
    return entry


TRANSCRIPT_SUFFIX = ".transcript.json"
_SEGMENT_KEYS = {"speaker", "start_ms", "end_ms", "text"}


def transcript_path(recording: str) -> str:
    """Where a recording's transcript lies: beside it, named like it with .transcript.json for its extension."""
    base, _ext = os.path.splitext(recording)
    return base + TRANSCRIPT_SUFFIX


def read_transcript(path: str) -> list[TranscriptSegment]:
    """Final transcript segments of a recording, ordered by their end: a JSON list (or {"segments": [...]})
    of {"speaker", "start_ms", "end_ms", "text"}. Raises InvalidArgument naming the file and the segment."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{name}: cannot read the transcript ({exc})") from None
    if isinstance(doc, dict) and set(doc) == {"segments"}:
        doc = doc["segments"]
    if not isinstance(doc, list):
        raise InvalidArgument(f"{name}: expected a list of segments or {{\"segments\": [...]}}")
    segments = []
    for index, item in enumerate(doc):
        where = f"{name}: segments[{index}]"
        if not isinstance(item, dict) or set(item) != _SEGMENT_KEYS:
            raise InvalidArgument(f"{where}: expected an object with exactly speaker, start_ms, end_ms and text")
        try:
            speaker = Role(item["speaker"])
        except (ValueError, TypeError):
            raise InvalidArgument(f"{where}.speaker: unknown role {item['speaker']!r}; expected customer or agent") from None
        try:
            segments.append(TranscriptSegment(speaker, item["start_ms"], item["end_ms"], item["text"]))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
    return sorted(segments, key=lambda seg: seg.end_ms)


class BatchAnalyzer:
    """Composition root of batch mode: configuration -> model -> batcher -> rules -> one session per file."""

    def __init__(self, config: ServiceConfig, options: AnalyzeOptions, model: EmotionModel, rules: RuleSet | None = None) -> None:
        windows = config.windows
        if options.embeddings and windows.scoring != "full":
            windows = dataclasses.replace(windows, scoring="full")  # an embedding describes a whole window
        self.config = dataclasses.replace(config, windows=windows)
        self.options = options
        self.model = model
        self.rules = rules or load_rules(config.rules_path)
        self.rules.check_labels(model.labels)
        self._engine = RuleEngine(self.rules)
        self._names: set[str] = set()

    async def run(self, paths: Sequence[str]) -> list[FileResult]:
        """Analyse every file (at most `jobs` at once); one result per path, in order."""
        from tqdm import tqdm

        self.model.return_embeddings = self.options.embeddings
        inf = self.config.inference
        batcher = InferenceBatcher(self.model, inf.effective_max_batch, inf.max_wait_ms, inf.queue_size)
        batcher.start()
        os.makedirs(self.options.out_dir, exist_ok=True)
        show = self.options.progress if self.options.progress is not None else sys.stderr.isatty()
        bar = tqdm(total=len(paths), unit="file", disable=not show, file=sys.stderr, dynamic_ncols=True)
        gate = asyncio.Semaphore(self.options.jobs)
        audio_s = 0.0

        out_dirs = [self._out_dir(p) for p in paths]

        async def one(path: str, out_dir: str) -> FileResult:
            nonlocal audio_s
            async with gate:
                result = await self._analyze(path, out_dir, batcher)
            audio_s += result.audio_s
            bar.update(1)
            bar.set_postfix_str(f"{audio_s:.0f} s audio, {Path(path).name}: {result.status}")
            return result

        try:
            results = await asyncio.gather(*(one(p, d) for p, d in zip(paths, out_dirs)))
        finally:
            bar.close()
            await asyncio.get_running_loop().run_in_executor(None, batcher.stop)
        self._write_batch_files(results)
        return list(results)

    def _out_dir(self, path: str) -> str:
        from service.app import safe_file_name

        base = safe_file_name(Path(path).stem)
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}-{n}"
        self._names.add(name)
        return os.path.join(self.options.out_dir, name)

    async def _analyze(self, path: str, out_dir: str, batcher: InferenceBatcher) -> FileResult:
        result = FileResult(file=path)
        loop = asyncio.get_running_loop()
        try:
            audio = await loop.run_in_executor(None, read_call_audio, path)
            result.audio_s = audio.duration_s
            sidecar = transcript_path(path)
            transcript = read_transcript(sidecar) if os.path.exists(sidecar) else []
            collected, sink = await self._replay(path, audio, batcher, transcript)
            assert collected.summary is not None
            if transcript:
                collected.transcript = {"file": os.path.abspath(sidecar), "segments": len(transcript)}
            await loop.run_in_executor(None, self._write_call_files, out_dir, path, audio, collected, sink)
        except CallPulseError as exc:
            result.status, result.error = "error", str(exc)  # reported by the caller (recording names can be personal)
            return result
        except Exception as exc:  # noqa: BLE001 - one bad file never aborts the batch
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("a recording was skipped after an unexpected error")
            return result
        result.summary, result.out_dir = collected.summary.document, out_dir
        return result

    async def _replay(self, path: str, audio: RecordedAudio, batcher: InferenceBatcher,
                      transcript: Sequence[TranscriptSegment] = ()) -> tuple[_Collected, MemorySink]:
        from service.app import safe_file_name

        channels = audio.samples.shape[1]
        if channels > len(self.options.roles):
            raise InvalidArgument(f"{Path(path).name} is stereo but --roles names one role; name both, e.g. customer,agent")
        roles = self.options.roles[:channels]
        score_roles = tuple(r for r in (self.options.score_roles or roles) if r in roles)
        if not score_roles:
            raise InvalidArgument(f"{Path(path).name}: none of the scored roles has a channel (roles: {', '.join(r.value for r in roles)})")
        cfg = self.config
        ingest = dataclasses.replace(cfg.ingest, max_chunk_bytes=max(cfg.ingest.max_chunk_bytes, 2 * channels * audio.sample_rate),
                                     max_call_duration_s=max(cfg.ingest.max_call_duration_s, audio.duration_s + 60))
        sink = MemorySink()
        ctx = SessionContext(
            vad=cfg.vad, windows=cfg.windows, ingest=ingest, scorer=LocalScoringClient(self.model, batcher), rules=lambda: self._engine,
            publisher=sink, model_name=self.model.name, labels=self.model.labels,
            deadline_s=cfg.inference.deadline_ms / 1000, analytics=cfg.analytics,
            speech_check=self.model.checks_speech,
        )
        call = CallConfig(
            call_id=safe_file_name(Path(path).stem), agent_id="batch", team="batch", tenant="",
            audio=AudioFormat(Encoding.PCM16LE, audio.sample_rate, roles), score_roles=score_roles, realtime=False,
        )
        session = CallSession(call, ctx)
        collected = _Collected()
        session.start()

        async def consume() -> None:
            async for event in session.events():
                if isinstance(event, EmotionUpdate):
                    row = None
                    if event.embedding is not None:
                        row = len(collected.embeddings)
                        collected.embeddings.append(np.asarray(event.embedding, dtype=np.float32))
                    collected.timeline.append(_timeline_entry(event, row))
                elif isinstance(event, Warning):
                    collected.warnings.append({"code": event.code, "message": event.message})
                elif isinstance(event, CallSummary):
                    collected.summary = event

        consumer = asyncio.create_task(consume())
        try:
            chunk = audio.sample_rate * CHUNK_MS // 1000
            samples = audio.samples
            pending = deque(transcript)
            for seq, offset in enumerate(range(0, len(samples), chunk)):
                # As from a live recognizer: a segment is known once the audio it covers has arrived.
                chunk_end_ms = (offset + chunk) * 1000 // audio.sample_rate
                while pending and pending[0].end_ms <= chunk_end_ms:
                    session.push_transcript(pending.popleft())
                session.push_audio(seq, samples[offset:offset + chunk].tobytes())
                await session.flow_control()
            while pending:
                session.push_transcript(pending.popleft())
            await session.finish()
            await consumer
        finally:
            if not session.closed:
                session.abort("batch_error")
            if not consumer.done():
                consumer.cancel()
        return collected, sink

    def _write_call_files(self, out_dir: str, path: str, audio: RecordedAudio, collected: _Collected, sink: MemorySink) -> None:
        os.makedirs(out_dir, exist_ok=True)
        summary = collected.summary.document
        document: dict[str, Any] = {
            "schema_version": RESULT_SCHEMA_VERSION,
            "file": os.path.abspath(path),
            "audio": {"format": audio.source_format, "source_rate": audio.source_rate, "analysed_rate": audio.sample_rate,
                      "channels": int(audio.samples.shape[1]), "duration_s": round(audio.duration_s, 3)},
            "model": self.model.name,
            "rules": self.rules.source,
            "summary": summary,
            "timeline": collected.timeline,
            "alerts": sink.alerts,
            "warnings": collected.warnings,
        }
        if collected.transcript:
            document["transcript"] = collected.transcript
        if collected.embeddings:
            matrix = np.stack(collected.embeddings)
            np.save(os.path.join(out_dir, "embeddings.npy"), matrix)
            document["embeddings"] = {"file": "embeddings.npy", "shape": list(matrix.shape),
                                      "rows": "timeline entries with embedding_row, in timeline order"}
        with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as fh:
            json.dump(document, fh, indent=1)
        with open(os.path.join(out_dir, "report.html"), "w", encoding="utf-8") as fh:
            fh.write(render_call_report(summary))

    def _write_batch_files(self, results: Sequence[FileResult]) -> None:
        labels = list(self.model.labels)
        write_batch_csv(os.path.join(self.options.out_dir, "calls.csv"), [r.as_row() for r in results], labels)
        rows = []
        for r in results:
            if r.summary is None:
                continue
            counts: dict[str, int] = {}
            for speaker in r.summary["speakers"]:
                for label, count in speaker["top_labels"].items():
                    counts[label] = counts.get(label, 0) + count
            rows.append((Path(r.file).name, counts))
        with open(os.path.join(self.options.out_dir, "heatmap.svg"), "w", encoding="utf-8") as fh:
            fh.write(render_heatmap_svg(rows, labels))


def analyze(paths: Sequence[str], options: AnalyzeOptions, config: ServiceConfig, model: EmotionModel | None = None) -> list[FileResult]:
    """Load the rules and the model (unless given) and analyse `paths`; blocking."""
    rules = load_rules(config.rules_path)  # a mistake in the rules is reported before the model loads
    if model is None:
        from service.inference.loading import load_emotion_model

        model = load_emotion_model(config)
    analyzer = BatchAnalyzer(config, options, model, rules)
    return asyncio.run(analyzer.run(paths))
