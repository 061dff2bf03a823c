"""Batch analysis from the command line: recordings in four formats in, every output file out, bad files skipped."""

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import soundfile as sf
import soxr

from clients.wavfile import read_wav
from tests.conftest import CALL_WAV, CUSTOMER_WAV, ROOT, TIMINGS


def _fixtures(tmp_path):
    """The stereo call as WAV and FLAC (same stem), the customer utterance as OGG and as a 44.1 kHz MP3, and a corrupt file."""
    call = read_wav(str(CALL_WAV)).samples
    customer = read_wav(str(CUSTOMER_WAV)).samples[:, 0]
    files = {
        "call.wav": tmp_path / "in" / "call.wav",
        "call.flac": tmp_path / "in" / "call.flac",
        "customer.ogg": tmp_path / "in" / "customer.ogg",
        "customer.mp3": tmp_path / "in" / "customer.mp3",
        "corrupt.wav": tmp_path / "in" / "corrupt.wav",
    }
    files["call.wav"].parent.mkdir()
    sf.write(files["call.wav"], call, 8000, subtype="PCM_16")
    sf.write(files["call.flac"], call, 8000, format="FLAC")
    sf.write(files["customer.ogg"], customer, 16000, format="OGG", subtype="VORBIS")
    upsampled = soxr.resample(customer.astype(np.float32) / 32768, 16000, 44100)
    sf.write(files["customer.mp3"], upsampled, 44100, format="MP3")
    files["corrupt.wav"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    return files


def test_analyze_writes_every_output_and_skips_the_corrupt_file(test_models, tmp_path):
    """analyze over WAV, FLAC, OGG and MP3 writes result.json, embeddings.npy and report.html per call, the CSV and heatmap;
    the corrupt file is reported, skipped, and the exit code says so."""
    files = _fixtures(tmp_path)
    out = tmp_path / "out"
    order = ["call.wav", "corrupt.wav", "call.flac", "customer.ogg", "customer.mp3"]
    result = subprocess.run(
        [sys.executable, "-m", "service", "analyze", *[str(files[n]) for n in order], "--out", str(out),
         "--model", test_models["angry"], "--threads", "1", "--embeddings", "--progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"analysed": 4, "skipped": 1, "out": str(out)}
    assert f"skipped {files['corrupt.wav']}: corrupt.wav" in result.stderr
    assert "5/5" in result.stderr  # the progress bar reached the end

    dirs = {"call.wav": out / "call", "call.flac": out / "call-2", "customer.ogg": out / "customer", "customer.mp3": out / "customer-2"}
    results = {}
    for name, folder in dirs.items():
        assert {p.name for p in folder.iterdir()} == {"result.json", "embeddings.npy", "report.html"}, name
        doc = json.loads((folder / "result.json").read_text())
        results[name] = doc
        summary = doc["summary"]
        assert summary["type"] == "call_summary" and summary["model"].startswith("TEST MODEL")
        scored = sum(s["windows_scored"] for s in summary["speakers"])
        assert len(doc["timeline"]) == scored > 0
        embeddings = np.load(folder / "embeddings.npy")
        assert embeddings.shape[0] == scored and embeddings.ndim == 2 and np.isfinite(embeddings).all()
        assert [e["embedding_row"] for e in doc["timeline"]] == list(range(scored))
        html = (folder / "report.html").read_text()
        assert summary["call_id"] in html and "<svg" in html and "TEST MODEL" in html

    wav, flac = results["call.wav"], results["call.flac"]
    assert wav["audio"]["format"] == "WAV" and flac["audio"]["format"] == "FLAC"
    assert [s["speaker"] for s in wav["summary"]["speakers"]] == ["customer", "agent"]
    assert all(s["scored"] for s in wav["summary"]["speakers"])  # batch scores every channel by default
    # lossless formats carry identical audio, so the pipeline gives identical results
    assert [e["scores"] for e in wav["timeline"]] == [e["scores"] for e in flac["timeline"]]
    customer_speech = TIMINGS["call_stereo_8k.wav"]["customer_speech"][0]
    talk = wav["summary"]["conversation"]["talk_ms"]
    assert abs(talk["customer"] - (customer_speech[1] - customer_speech[0]) * 1000) < 1500
    trajectory = wav["summary"]["speakers"][0]["trajectory"]["points"]
    assert trajectory and all(customer_speech[0] - 1 <= p["t_ms"] / 1000 <= customer_speech[1] + 1 for p in trajectory)
    assert wav["summary"]["speakers"][0]["peaks"][0]["label"] == "angry"  # the test model favours angry
    assert wav["alerts"] == [a for a in wav["alerts"] if a["call_id"] == "call"]
    mp3 = results["customer.mp3"]
    assert mp3["audio"]["source_rate"] == 44100 and mp3["audio"]["analysed_rate"] == 16000
    assert [s["speaker"] for s in mp3["summary"]["speakers"]] == ["customer"]

    with open(out / "calls.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [str(files[n]) for n in order]
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok", "ok"]
    assert "corrupt.wav" in rows[1]["error"] and rows[1]["duration_s"] == ""
    assert int(rows[0]["count_angry"]) == sum(s["top_labels"].get("angry", 0) for s in wav["summary"]["speakers"])

    heatmap = ET.fromstring((out / "heatmap.svg").read_text())
    assert heatmap.tag.endswith("svg")
    texts = "".join(heatmap.itertext())
    assert "call.wav" in texts and "customer.mp3" in texts and "corrupt.wav" not in texts


def test_analyze_refuses_bad_rules_before_reading_anything(test_models, tmp_path):
    """An invalid rules file stops the batch at once with exit 2 and its line-precise error."""
    rules = tmp_path / "bad.yaml"
    rules.write_text("rules:\n  - id: x\n    silence: {ge: never}\n")
    result = subprocess.run(
        [sys.executable, "-m", "service", "analyze", str(CALL_WAV), "--out", str(tmp_path / "out"),
         "--model", test_models["angry"], "--rules", str(rules)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert f"{rules}:3:19: rule 'x'.silence.ge: expected a duration" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_transcript_beside_a_recording_gives_its_character_rate_and_a_bad_one_skips_only_that_file(test_models, tmp_path):
    """call.transcript.json beside call.wav adds characters per minute to the timeline, the summary and the report
    and is named in result.json; other.wav, whose transcript is malformed, is skipped with the reason."""
    call = read_wav(str(CALL_WAV)).samples
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("call.wav", "other.wav"):
        sf.write(folder / name, call, 8000, subtype="PCM_16")
    segments = [{"speaker": "customer", "start_ms": 6000, "end_ms": 8000, "text": "y" * 40},  # 1200 characters/min
                {"speaker": "agent", "start_ms": 500, "end_ms": 4500, "text": "z" * 40}]      # 600 characters/min
    (folder / "call.transcript.json").write_text(json.dumps(segments))
    (folder / "other.transcript.json").write_text(json.dumps([{"speaker": "customer", "start_ms": 1}]))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "service", "analyze", str(folder / "call.wav"), str(folder / "other.wav"), "--out", str(out),
         "--model", test_models["neutral"], "--threads", "1", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert "other.transcript.json: segments[0]: expected an object with exactly speaker, start_ms, end_ms and text" in result.stderr
    doc = json.loads((out / "call" / "result.json").read_text())
    assert doc["transcript"] == {"file": str(folder / "call.transcript.json"), "segments": 2}
    rates = {(e["speaker"], e["speech_rate_cpm"]) for e in doc["timeline"] if e["end_ms"] >= 8000}
    assert ("customer", 1200.0) in rates and ("agent", 600.0) in rates
    speakers = {s["speaker"]: s["prosody"] for s in doc["summary"]["speakers"]}
    assert speakers["customer"]["speech_rate_cpm"] == 1200.0 and speakers["agent"]["transcript_chars"] == 40
    assert "Speech rate (transcript)" in (out / "call" / "report.html").read_text()
    assert not (out / "other").exists()
