"""What the service takes for speech, evaluated on a labelled development set: music, tones, speech.

    python -m clients.eval_signal [--music-dir DIR ...] [--seconds 60] [--skip 20] [--no-espeak] [--json FILE]

Each clip is brought to 8 kHz mono 16-bit (telephone band, as a bridge sends it) and run through the
service's per-channel front end: webrtcvad (aggressiveness 2, 20 ms frames), then the steady-sound gate
(service/analytics/gate.py). For every class it prints the clips, the frames webrtcvad calls voiced,
and the share of those the gate takes as steady sound: for music and tones that is the gate's recall
(what webrtcvad alone would have sent on as speech is the whole voiced share), for speech it is the
share of speech lost (1 - precision would need a mixed set; this is the false-positive rate per frame).
With espeak-ng it also prints the speech-rate error: the service's syllable-nuclei rate of each sentence
at three speaking rates against the syllables espeak-ng says it spoke (vowel runs of its IPA output).

The set, all reachable here (nothing from Asterisk's sound or music-on-hold packages, kept apart as an
independent check):
  * music: every .ogg/.mp3/.flac/.wav under --music-dir (default: the Debian game music packages
    singularity-music and drascula-music where installed: `apt-get install singularity-music
    drascula-music`), `--seconds` of each from `--skip` s in (decoded with sox);
  * tones: US/UK ringback, busy, dial tone, fax CNG/CED, SIT and DTMF digits, generated;
  * generated music: chords, a melody and drums (tests/signals.py);
  * speech: the bundled stereo call (both channels), the 16 kHz customer fixture, espeak-ng sentences at
    three rates (when espeak-ng is installed), and the real call in ../shared/audio when present.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import webrtcvad

from clients.wavfile import read_wav

ROOT = Path(__file__).resolve().parent.parent
RATE = 8000
FRAME = RATE // 50
DEFAULT_MUSIC_DIRS = ("/usr/share/games/singularity/music", "/usr/share/scummvm/drascula/audio")
SENTENCES = (
    "Hello, I have been waiting on hold for twenty minutes and nobody has answered my question.",
    "I would like to change the address on my account and cancel the second order please.",
    "Thank you for calling, my name is Anna, how can I help you today?",
)


def vad_flags(x: np.ndarray) -> np.ndarray:
    detector = webrtcvad.Vad(2)
    return np.array([detector.is_speech(x[i * FRAME:(i + 1) * FRAME].tobytes(), RATE) for i in range(len(x) // FRAME)], dtype=bool)


def gate_share(x: np.ndarray, voiced: np.ndarray | None = None) -> tuple[int, int]:
    """(voiced frames, of them steady sound) of one 8 kHz int16 channel."""
    from service.analytics.gate import SteadyGate

    voiced = vad_flags(x) if voiced is None else voiced
    state = SteadyGate(FRAME).push(x, len(voiced), voiced)
    return int(np.count_nonzero(voiced)), int(np.count_nonzero(state & voiced))


def _sox(path: str, out: str, skip: float = 0.0, seconds: float | None = None) -> bool:
    command = ["sox", path, "-r", str(RATE), "-c", "1", "-b", "16", out]
    if seconds is not None:
        command += ["trim", str(skip), str(seconds)]
    return subprocess.run(command, capture_output=True).returncode == 0 and os.path.getsize(out) > 44


def _mono8k(path: str, channel: int | None = None) -> list[np.ndarray]:
    """The channels of a WAV at 8 kHz int16 (resampled with soxr when needed)."""
    wav = read_wav(path)
    samples = wav.samples
    if wav.sample_rate != RATE:
        import soxr

        samples = np.stack([soxr.resample(samples[:, c].astype(np.float32), wav.sample_rate, RATE) for c in range(samples.shape[1])], axis=1)
    channels = range(samples.shape[1]) if channel is None else [channel]
    return [np.clip(np.round(samples[:, c]), -32768, 32767).astype(np.int16) for c in channels]


def music_clips(dirs: list[str], skip: float, seconds: float, work: str) -> list[tuple[str, np.ndarray]]:
    files = sorted(f for d in dirs for pattern in ("*.ogg", "*.mp3", "*.flac", "*.wav") for f in glob.glob(os.path.join(d, pattern)))
    clips = []
    for index, path in enumerate(files):
        out = os.path.join(work, f"music{index}.wav")
        if _sox(path, out, skip, seconds):
            clips.append((os.path.basename(path), _mono8k(out)[0]))
    return clips


def tone_clips() -> list[tuple[str, np.ndarray]]:
    from clients import signals

    plans = {
        "US ringback (2 s on, 4 s off)": signals.cadence((440, 480), 2.0, 4.0, 12.0),
        "UK ringback": signals.cadence((400, 450), 0.4, 0.2, 6.0),
        "busy": signals.cadence((480, 620), 0.5, 0.5, 6.0),
        "dial tone": signals.tones(350, 440, seconds=4.0),
        "fax CNG": signals.cadence((1100,), 0.5, 3.0, 8.0),
        "fax CED": signals.tones(2100, seconds=3.0),
        "SIT": signals.tones(913.8, seconds=1.0),
        "DTMF digits (0.5 s held)": signals.dtmf("0123456789#*"),
        "DTMF digits (0.1 s, fast dialling)": signals.dtmf("0123456789", on_s=0.1, off_s=0.1),
    }
    return [(name, signals.int16(x)) for name, x in plans.items()]


def generated_music() -> list[tuple[str, np.ndarray]]:
    from clients import signals

    return [(f"chords, melody, drums (seed {seed})", signals.int16(signals.music(20.0, seed=seed))) for seed in (0, 5, 7)]


def speech_clips(work: str, espeak: bool) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, samples, speaking flags or None): stereo calls are read with the service's near-silence and crosstalk
    corrections, so that the other side's voice leaking in is not counted as this side's speech."""
    from service.analytics.crosstalk import speaking_frames

    clips: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    stereo = [str(ROOT / "clients" / "samples" / "call_stereo_8k.wav")]
    real = ROOT.parent / "shared" / "audio" / "Auto_Repairs_40_UTC_stereo_L-agent_R-caller_pcm16.wav"
    if real.exists():
        stereo.append(str(real))
    for path in stereo:
        channels = _mono8k(path)
        n = min(len(c) for c in channels) // FRAME
        voiced = np.stack([vad_flags(c[: n * FRAME]) for c in channels], axis=1)
        speaking, _ = speaking_frames([c[: n * FRAME] for c in channels], voiced, FRAME, 20.0)
        for index, channel in enumerate(channels):
            clips.append((f"{Path(path).stem} channel {index}", channel[: n * FRAME], speaking[:, index]))
    clips.append(("customer_16k.wav (resampled)", _mono8k(str(ROOT / "clients" / "samples" / "customer_16k.wav"))[0], None))
    if espeak and shutil.which("espeak-ng"):
        for words_per_min in (120, 170, 230):
            for index, sentence in enumerate(SENTENCES):
                raw, out = os.path.join(work, "espeak.wav"), os.path.join(work, f"espeak{words_per_min}_{index}.wav")
                subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(words_per_min), "-w", raw, sentence], check=True, capture_output=True)
                if _sox(raw, out):
                    clips.append((f"espeak-ng {words_per_min} wpm #{index}", _mono8k(out)[0], None))
    return clips


_IPA_VOWELS = set("aeiouæɑɒɔəɛɜɪʊʌɚɝɐɵøœyɨʉɯɤ")


def ipa_syllables(text: str, voice: str = "en-us") -> int:
    """Syllables of `text` as espeak-ng pronounces it: runs of vowel symbols in its IPA transcription."""
    ipa = subprocess.run(["espeak-ng", "-v", voice, "-q", "--ipa", text], capture_output=True, text=True, check=True).stdout
    count, previous = 0, False
    for char in ipa:
        vowel = char in _IPA_VOWELS
        count += vowel and not previous
        previous = vowel
    return count


def speech_rate_error(work: str) -> dict | None:
    """The syllable-nuclei rate of each espeak-ng sentence at three rates against the syllables espeak-ng says it
    spoke (per minute of the same voiced time): mean ratio, mean absolute error and Pearson r over the utterances;
    None without espeak-ng and sox."""
    from service.analytics.prosody import ProsodyTrack

    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return None
    rows = []
    for words_per_min in (120, 170, 230):
        for index, sentence in enumerate(SENTENCES):
            raw, out = os.path.join(work, "rate.wav"), os.path.join(work, "rate8k.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(words_per_min), "-w", raw, sentence], check=True, capture_output=True)
            if not _sox(raw, out):
                continue
            x = _mono8k(out)[0]
            voiced = vad_flags(x)
            track = ProsodyTrack(RATE)
            track.push(x[: len(voiced) * FRAME], voiced)
            totals = track.totals()
            if not totals["voiced_ms"]:
                continue
            truth = ipa_syllables(sentence) * 60000.0 / totals["voiced_ms"]
            rows.append({"wpm": words_per_min, "sentence": index, "measured_spm": totals["speech_rate_spm"], "true_spm": round(truth, 1)})
    measured = np.array([r["measured_spm"] or 0.0 for r in rows])
    truth = np.array([r["true_spm"] for r in rows])
    return {"utterances": rows, "mean_ratio": round(float(np.mean(measured / truth)), 3),
            "mean_abs_error": round(float(np.mean(np.abs(measured / truth - 1))), 3),
            "pearson_r": round(float(np.corrcoef(measured, truth)[0, 1]), 3) if len(rows) > 2 else None}


def evaluate(music_dirs: list[str], skip: float, seconds: float, espeak: bool) -> dict:
    """Per class: clips, voiced frames and the share of them taken as steady sound, with the per-clip figures."""
    rows: dict[str, list[dict]] = {"music (Debian packages)": [], "music (generated)": [], "tones": [], "speech": []}
    with tempfile.TemporaryDirectory(prefix="callpulse-eval-") as work:
        have_sox = shutil.which("sox") is not None
        for name, x in music_clips(music_dirs, skip, seconds, work) if have_sox else []:
            voiced, steady = gate_share(x)
            rows["music (Debian packages)"].append({"clip": name, "voiced": voiced, "steady": steady})
        for name, x in generated_music():
            voiced, steady = gate_share(x)
            rows["music (generated)"].append({"clip": name, "voiced": voiced, "steady": steady})
        for name, x in tone_clips():
            voiced, steady = gate_share(x)
            rows["tones"].append({"clip": name, "voiced": voiced, "steady": steady})
        for name, x, speaking in speech_clips(work, espeak and have_sox):
            voiced, steady = gate_share(x, speaking)
            rows["speech"].append({"clip": name, "voiced": voiced, "steady": steady})
        rate = speech_rate_error(work) if espeak else None
    summary = {}
    for kind, clips in rows.items():
        voiced = sum(c["voiced"] for c in clips)
        steady = sum(c["steady"] for c in clips)
        summary[kind] = {"clips": len(clips), "voiced_frames": voiced, "steady_share": round(steady / voiced, 4) if voiced else None,
                         "clips_mostly_steady": sum(1 for c in clips if c["voiced"] and c["steady"] >= 0.8 * c["voiced"])}
    return {"classes": summary, "clips": rows, "speech_rate": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.eval_signal", description=__doc__.split("\n")[0])
    parser.add_argument("--music-dir", action="append", help="directory of music files (repeatable)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of each music file")
    parser.add_argument("--skip", type=float, default=20.0, help="seconds skipped at the start of each music file")
    parser.add_argument("--no-espeak", action="store_true", help="leave out the espeak-ng sentences")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = evaluate(args.music_dir or [d for d in DEFAULT_MUSIC_DIRS if os.path.isdir(d)], args.skip, args.seconds, not args.no_espeak)
    print("| class | clips | voiced frames (webrtcvad) | share the gate takes as steady sound | clips >= 80% steady |")
    print("| --- | --- | --- | --- | --- |")
    for kind, figures in result["classes"].items():
        share = "-" if figures["steady_share"] is None else f"{100 * figures['steady_share']:.1f}%"
        print(f"| {kind} | {figures['clips']} | {figures['voiced_frames']} | {share} | {figures['clips_mostly_steady']} |")
    rate = result["speech_rate"]
    if rate:
        print("\n| espeak-ng words/min | syllables/min (espeak-ng's own) | syllable nuclei/min (the service) |")
        print("| --- | --- | --- |")
        for words_per_min in sorted({r["wpm"] for r in rate["utterances"]}):
            rows = [r for r in rate["utterances"] if r["wpm"] == words_per_min]
            truth = np.mean([r["true_spm"] for r in rows])
            measured = np.mean([r["measured_spm"] or 0.0 for r in rows])
            print(f"| {words_per_min} | {truth:.0f} | {measured:.0f} |")
        print(f"\nspeech rate over {len(rate['utterances'])} utterances: mean ratio {rate['mean_ratio']}, mean absolute error "
              f"{100 * rate['mean_abs_error']:.0f}%, Pearson r {rate['pearson_r']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
