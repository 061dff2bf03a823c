"""What the service takes for speech, evaluated on a labelled development set: music, tones, speech.

    python -m clients.eval_signal [--music-dir DIR ...] [--seconds 60] [--skip 20] [--no-espeak] [--check 0.2]
                                  [--transcribed DIR ...] [--vocal-dir DIR ...] [--cough-dir DIR ...]
                                  [--json FILE]

Each clip is brought to 8 kHz mono 16-bit (telephone band, as a bridge sends it) and run through the
service's per-channel front end: webrtcvad (aggressiveness 2, 20 ms frames), then the steady-sound gate
(service/analytics/gate.py). For every class it prints the clips, the frames webrtcvad calls voiced,
and the share of those the gate takes as steady sound: for music and tones that is the gate's recall
(what webrtcvad alone would have sent on as speech is the whole voiced share), for speech it is the
share of speech lost (1 - precision would need a mixed set; this is the false-positive rate per frame).
With espeak-ng it also prints the speech-rate error: the service's syllable-nuclei rate of each sentence
at three speaking rates against the syllables espeak-ng says it spoke (vowel runs of its IPA output for
English; one per character for Mandarin, voiced from pinyin), beside the de Jong & Wempe reference run in
Praat through praat-parselmouth (clients/dejong_wempe.praat; a dev dependency), and, with the real call in
../shared/audio, the service against that reference per utterance of real speech. Last, interruptions and
back-channels of two-speaker scenes voiced with espeak-ng (SCENES: turns, back-channels, take-overs and a
contested overlap, labelled by construction) as the batch analysis counts them, against the labels. With
`--check` (0.2 unless 0), every clip also runs as a call through the batch analysis (constant model), and it
prints per class the windows sent to the emotion model without the engine's speech check and with it, and the alerts
the Debian music raises on the scored customer channel with an always-angry test model (`music_alerts`), and with the
constant model when it comes 10 dB louder after the customer's own speech (`music_after_speech_alerts`).
With `--transcribed DIR` (a Kaldi data directory of real recordings: `text`, and `wav.scp` or the audio beside it),
the speech rate of each utterance against its transcript's syllables (a Chinese character is one; an English text's
as espeak-ng pronounces it) and beside the de Jong & Wempe reference. With voice clips (`--vocal-dir`, default the voice packs of the Debian package
hedgewars-data where installed: a laugh, a cough and short phrases per voice), per class the laughs the laughter check
finds and the syllable nuclei counted with and without it. With recordings of coughs alone (`--cough-dir`), the syllable
nuclei counted on them (every one a false syllable).

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
import functools
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import webrtcvad

from clients.wavfile import read_wav

ROOT = Path(__file__).resolve().parent.parent
RATE = 8000
FRAME = RATE // 50
REAL_CALL = ROOT.parent / "shared" / "audio" / "Auto_Repairs_40_UTC_stereo_L-agent_R-caller_pcm16.wav"
DEFAULT_MUSIC_DIRS = ("/usr/share/games/singularity/music", "/usr/share/scummvm/drascula/audio")
DEFAULT_VOCAL_DIRS = ("/usr/share/games/hedgewars/Data/Sounds/voices",)  # apt-get install hedgewars-data
SENTENCES = (
    "Hello, I have been waiting on hold for twenty minutes and nobody has answered my question.",
    "I would like to change the address on my account and cancel the second order please.",
    "Thank you for calling, my name is Anna, how can I help you today?",
)


def vad_flags(x: np.ndarray) -> np.ndarray:
    detector = webrtcvad.Vad(2)
    return np.array([detector.is_speech(x[i * FRAME:(i + 1) * FRAME].tobytes(), RATE) for i in range(len(x) // FRAME)], dtype=bool)


@functools.lru_cache(maxsize=1)
def _silero_model():
    import torch
    from silero_vad import load_silero_vad

    torch.set_num_threads(1)
    return load_silero_vad()


def silero_speech(x: np.ndarray) -> np.ndarray | None:
    """Per 20 ms frame of 8 kHz int16 audio, whether silero-vad (a pretrained detector that ships its weights in its
    wheel; `pip install silero-vad`, not a dependency of the service) gives speech probability >= 0.5 for the
    32 ms chunk the frame starts in; None when silero-vad is not installed. Run chunk by chunk, one stream."""
    if importlib.util.find_spec("silero_vad") is None:
        return None
    import torch

    model, chunk = _silero_model(), 256
    audio = torch.from_numpy(x.astype(np.float32) / 32768.0)
    model.reset_states()
    with torch.no_grad():
        probs = [float(model(audio[i * chunk : (i + 1) * chunk].unsqueeze(0), RATE)) for i in range(len(audio) // chunk)]
    per_sample = np.repeat(np.array(probs or [0.0]), chunk)
    per_sample = np.concatenate((per_sample, np.full(max(0, len(x) - len(per_sample)), probs[-1] if probs else 0.0)))
    frames = len(x) // FRAME
    return per_sample[: frames * FRAME : FRAME] >= 0.5


def gate_figures(x: np.ndarray, voiced: np.ndarray | None = None, silero: bool = False) -> tuple[int, int, dict | None]:
    """(voiced frames, of them steady sound, and with `silero` and silero-vad installed {"silero": voiced frames
    silero-vad calls speech, "left": voiced frames neither the gate nor silero-vad takes away}) of one channel."""
    from service.analytics.gate import SteadyGate

    voiced = vad_flags(x) if voiced is None else voiced
    state = SteadyGate(FRAME).push(x, len(voiced), voiced)
    extra = None
    speech = silero_speech(x[: len(voiced) * FRAME]) if silero else None
    if speech is not None:
        speech = speech[: len(voiced)]
        extra = {"silero": int(np.count_nonzero(voiced & speech)), "left": int(np.count_nonzero(voiced & ~state & speech))}
    return int(np.count_nonzero(voiced)), int(np.count_nonzero(state & voiced)), extra


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


def stereo_calls() -> list[str]:
    """The two-channel calls of the speech set: the bundled one, and the real one in ../shared/audio when present."""
    return [str(ROOT / "clients" / "samples" / "call_stereo_8k.wav")] + ([str(REAL_CALL)] if REAL_CALL.exists() else [])


def speech_clips(work: str, espeak: bool) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, samples, speaking flags or None): stereo calls are read with the service's near-silence and crosstalk
    corrections, so that the other side's voice leaking in is not counted as this side's speech."""
    from service.analytics.crosstalk import speaking_frames

    clips: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for path in stereo_calls():
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


# Mandarin sentences in pinyin (espeak-ng's cmn-latn-pinyin voice): one token per character, so the truth is the
# token count and the figure is characters per minute.
PINYIN = (
    "ni3 hao3 wo3 yi3 jing1 deng3 le5 er4 shi2 fen1 zhong1 le5 hai2 mei2 you3 ren2 hui2 da2 wo3 de5 wen4 ti2",
    "wo3 xiang3 xiu1 gai3 wo3 zhang4 hu4 shang4 de5 di4 zhi3 bing4 qie3 qu3 xiao1 di4 er4 ge4 ding4 dan1",
    "xie4 xie4 nin2 de5 lai2 dian4 wo3 jiao4 an1 na4 qing3 wen4 you3 shen2 me5 ke3 yi3 bang1 nin2",
)
RATES_WPM = (120, 170, 230)
DE_JONG_SCRIPT = Path(__file__).resolve().parent / "dejong_wempe.praat"


def dejong_nuclei(x: np.ndarray, rate: int = RATE) -> int | None:
    """Syllable nuclei of int16 audio by the de Jong & Wempe procedure, run in Praat (clients/dejong_wempe.praat)
    through parselmouth: the test-time reference. None when praat-parselmouth is not installed."""
    try:
        import parselmouth
    except ImportError:
        return None
    sound = parselmouth.Sound(x.astype(np.float64) / 32768.0, sampling_frequency=rate)
    _, output = parselmouth.praat.run(sound, DE_JONG_SCRIPT.read_text(), -25, 2, capture_output=True)
    return int(output.strip())


def service_nuclei(x: np.ndarray) -> tuple[int, int]:
    """(syllable nuclei, voiced ms) of int16 8 kHz audio as the service's streaming tracker counts them."""
    from service.analytics.prosody import ProsodyTrack

    voiced = vad_flags(x)
    track = ProsodyTrack(RATE)
    track.push(x[: len(voiced) * FRAME], voiced)
    totals = track.totals()
    return int(totals["nuclei"]), int(totals["voiced_ms"])


def vocal_class(path: str) -> str:
    """The class of a Hedgewars voice clip (VOICE/NAME.ogg): laughter, cough, "hmm", speech from a robot or singing
    voice pack, or speech (short exclamations and phrases)."""
    name, pack = Path(path).stem, Path(path).parent.name
    if name == "Laugh":
        return "laughter"
    if "Cough" in name:
        return "cough"
    if name == "Hmm":
        return "hmm"
    return "speech (robot or singing voice)" if pack in ("Robot", "Singer") else "speech"


def vocal_sounds(dirs: list[str], work: str) -> dict | None:
    """Laughter, coughs and speech of real voices (the voice packs of the Debian package hedgewars-data: a laugh, a
    cough and 70-odd short phrases per voice, acted): per class the clips, those the laughter check finds a laugh in,
    and the syllable nuclei counted with and without the check. None when there are no clips (or no sox)."""
    paths = sorted(p for d in dirs for p in glob.glob(os.path.join(d, "*", "*.ogg")))
    if not paths or shutil.which("sox") is None:
        return None
    from service.analytics.prosody import ProsodyTrack

    classes: dict[str, dict] = {}
    seen: set[bytes] = set()
    for index, path in enumerate(paths):
        out = os.path.join(work, f"vocal{index}.wav")
        if not _sox(path, out):
            continue
        x = _mono8k(out)[0]
        if x.tobytes() in seen:  # some voice packs share clips
            continue
        seen.add(x.tobytes())
        voiced = vad_flags(x)
        totals = {}
        for laughter in (True, False):
            track = ProsodyTrack(RATE, laughter=laughter)
            track.push(x[: len(voiced) * FRAME], voiced)
            totals[laughter] = track.totals()
        figures = classes.setdefault(vocal_class(path), {"clips": 0, "with_laugh": 0, "laughs": 0, "laughter_ms": 0,
                                                          "nuclei": 0, "nuclei_without_check": 0, "voiced_ms": 0})
        figures["clips"] += 1
        figures["with_laugh"] += int(totals[True]["laughs"] > 0)
        figures["laughs"] += totals[True]["laughs"]
        figures["laughter_ms"] += totals[True]["laughter_ms"]
        figures["nuclei"] += totals[True]["nuclei"]
        figures["nuclei_without_check"] += totals[False]["nuclei"]
        figures["voiced_ms"] += totals[True]["voiced_ms"]
    return classes or None


def cough_sounds(dirs: list[str], limit: int | None = None) -> dict | None:
    """Syllables counted on recordings of coughs alone (every .wav/.mp3/.ogg/.flac in `dirs`, decoded with soundfile, at 8
    kHz; at most `limit` clips): the clips, their audio and voiced time, the service's syllable nuclei and the de Jong &
    Wempe reference's, and the clips with any nucleus. Every nucleus counted is a false one. None when there are no clips."""
    import soundfile
    import soxr

    paths = sorted(p for d in dirs for pattern in ("*.wav", "*.mp3", "*.ogg", "*.flac") for p in glob.glob(os.path.join(d, pattern)))
    figures = {"clips": 0, "audio_s": 0.0, "voiced_ms": 0, "nuclei": 0, "clips_with_nuclei": 0, "dejong_nuclei": None}
    dejong = []
    for path in paths[:limit]:
        try:
            samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError):
            continue
        mono = samples.mean(axis=1)
        if rate != RATE:
            mono = soxr.resample(mono, rate, RATE)
        x = np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)
        if len(x) < FRAME:
            continue
        nuclei, voiced_ms = service_nuclei(x)
        figures["clips"] += 1
        figures["audio_s"] += len(x) / RATE
        figures["voiced_ms"] += voiced_ms
        figures["nuclei"] += nuclei
        figures["clips_with_nuclei"] += int(nuclei > 0)
        reference = dejong_nuclei(x)
        if reference is not None:
            dejong.append(reference)
    if not figures["clips"]:
        return None
    figures["audio_s"] = round(figures["audio_s"], 1)
    if len(dejong) == figures["clips"]:
        figures["dejong_nuclei"] = int(sum(dejong))
    return figures


def _ideographs(text: str) -> int:
    """Chinese characters in a transcript: one syllable each."""
    return sum(1 for ch in text if "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff")


def transcribed_rate(dirs: list[str], work: str) -> dict | None:
    """Speech rate on real recordings with transcripts, from Kaldi data directories (`text`: lines of
    `utterance-id transcript`; the audio in `wav.scp`, lines of `utterance-id path` relative to the directory or
    absolute, or as `utterance-id.wav` beside `text`). The truth per utterance: a Chinese transcript's ideographs (one
    syllable each; one that also holds Latin letters or digits is left out, as their syllables are unknown), an
    English one's syllables as espeak-ng pronounces it (ipa_syllables; left out without espeak-ng). Per utterance the
    service's syllable nuclei and the de Jong & Wempe reference's, at 8 kHz; per language each one's agreement with the
    truth (the same voiced time, so the count ratio is the rate ratio). None when no directory holds a readable
    utterance."""
    rows = []
    for directory in dirs:
        base = Path(directory)
        if not (base / "text").is_file():
            raise FileNotFoundError(f"{base / 'text'}: a Kaldi data directory needs a text file")
        audio = {}
        if (base / "wav.scp").is_file():
            for line in (base / "wav.scp").read_text(encoding="utf-8").splitlines():
                if line.strip():
                    key, path = line.split(None, 1)
                    audio[key] = base / path.strip()
        for line in (base / "text").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            key, _, transcript = line.partition(" ")
            path = audio.get(key, base / f"{key}.wav")
            chars = _ideographs(transcript)
            latin = any(ch.isascii() and ch.isalnum() for ch in transcript)
            if not path.is_file() or (chars and latin) or not (chars or latin):
                continue
            if chars:
                language, syllables = "Mandarin", chars
            elif shutil.which("espeak-ng"):
                language, syllables = "English", ipa_syllables(transcript.lower())
            else:
                continue
            out = os.path.join(work, "transcribed8k.wav")
            if not _sox(str(path), out):
                continue
            x = _mono8k(out)[0]
            nuclei, voiced_ms = service_nuclei(x)
            rows.append({"utterance": key, "language": language, "syllables": syllables, "service_nuclei": nuclei,
                         "dejong_nuclei": dejong_nuclei(x), "voiced_ms": voiced_ms, "seconds": round(len(x) / RATE, 2)})
    if not rows:
        return None
    languages = {}
    for language in sorted({r["language"] for r in rows}):
        mine = [r for r in rows if r["language"] == language]
        truth = np.array([r["syllables"] for r in mine], float)
        entry = {"utterances": len(mine), "syllables": int(truth.sum()),
                 "service": _agreement(np.array([r["service_nuclei"] for r in mine], float), truth)}
        if all(r["dejong_nuclei"] is not None for r in mine):
            entry["dejong"] = _agreement(np.array([r["dejong_nuclei"] for r in mine], float), truth)
        languages[language] = entry
    return {"summary": {"utterances": len(rows), "languages": languages}, "utterances": rows}


def _agreement(measured: np.ndarray, truth: np.ndarray) -> dict:
    ratio = measured / truth
    return {"mean_ratio": round(float(np.mean(ratio)), 3), "mean_abs_error": round(float(np.mean(np.abs(ratio - 1))), 3),
            "pearson_r": round(float(np.corrcoef(measured, truth)[0, 1]), 3) if len(truth) > 2 else None}


def speech_rate_error(work: str) -> dict | None:
    """Speech rate on espeak-ng speech with known syllables: English sentences (syllables from espeak-ng's own IPA) and
    Mandarin pinyin sentences (one syllable per character) at three speaking rates. Per utterance the service's
    syllable nuclei per minute of voiced speech beside the truth and beside the de Jong & Wempe reference (when
    parselmouth is installed); per language the mean ratio, mean absolute error and Pearson r over the utterances.
    None without espeak-ng and sox."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return None
    rows = []
    sets = [("English", "en-us", SENTENCES, ipa_syllables), ("Mandarin", "cmn-latn-pinyin", PINYIN, lambda t: len(t.split()))]
    for language, voice, sentences, syllables in sets:
        for words_per_min in RATES_WPM:
            for index, sentence in enumerate(sentences):
                raw, out = os.path.join(work, "rate.wav"), os.path.join(work, "rate8k.wav")
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_min), "-w", raw, sentence], check=True, capture_output=True)
                if not _sox(raw, out):
                    continue
                x = _mono8k(out)[0]
                nuclei, voiced_ms = service_nuclei(x)
                if not voiced_ms:
                    continue
                per_min = 60000.0 / voiced_ms
                reference, truth = dejong_nuclei(x), syllables(sentence)
                rows.append({"language": language, "wpm": words_per_min, "sentence": index,
                             "true_syllables": truth, "service_nuclei": nuclei, "dejong_nuclei": reference,
                             "true_spm": round(truth * per_min, 1), "measured_spm": round(nuclei * per_min, 1),
                             "dejong_spm": None if reference is None else round(reference * per_min, 1)})
    out: dict = {"utterances": rows, "languages": {}}
    for language in {r["language"] for r in rows}:
        mine = [r for r in rows if r["language"] == language]
        truth = np.array([r["true_spm"] for r in mine])
        entry = {"service": _agreement(np.array([r["measured_spm"] for r in mine]), truth)}
        if all(r["dejong_spm"] is not None for r in mine):
            entry["dejong"] = _agreement(np.array([r["dejong_spm"] for r in mine]), truth)
        out["languages"][language] = entry
    english = out["languages"].get("English", {}).get("service", {})
    out.update(english)  # the English figures at the top level, as before
    return out


def real_call_against_dejong(path: str, min_ms: int = 1000, pause_ms: int = 300) -> dict | None:
    """The service's syllable count per utterance of a real recording's channels against the de Jong & Wempe
    reference on the same utterance (utterances: webrtcvad's voiced runs joined across pauses shorter than
    `pause_ms`, at least `min_ms` long). None without the file or parselmouth."""
    if not os.path.exists(path) or importlib.util.find_spec("parselmouth") is None:
        return None
    rows = []
    for channel, x in enumerate(_mono8k(path)):
        voiced = vad_flags(x)
        runs, start, quiet = [], None, 0
        for k, flag in enumerate(voiced.tolist() + [False] * (pause_ms // 20 + 1)):
            if flag:
                start, quiet = (k if start is None else start), 0
            elif start is not None:
                quiet += 1
                if quiet * 20 >= pause_ms:
                    runs.append((start, k - quiet + 1))
                    start, quiet = None, 0
        for first, end in runs:
            if (end - first) * 20 < min_ms:
                continue
            clip = x[first * FRAME : end * FRAME]
            rows.append({"channel": channel, "start_ms": first * 20, "end_ms": end * 20,
                         "service_nuclei": service_nuclei(clip)[0], "dejong_nuclei": dejong_nuclei(clip)})
    service = np.array([r["service_nuclei"] for r in rows], float)
    reference = np.array([r["dejong_nuclei"] for r in rows], float)
    keep = reference > 0
    summary = _agreement(service[keep], reference[keep]) if keep.sum() > 2 else {}
    summary.update({"utterances": len(rows), "service_total": int(service.sum()), "dejong_total": int(reference.sum())})
    return {"summary": summary, "utterances": rows}


# Two-speaker scenes voiced with espeak-ng, labelled by construction: (name, customer utterances, agent utterances,
# expected counts). An utterance is (start s, text, words/min, cut s or None: the speaker stops there, mid-word).
_LONG_AGENT = "Let me explain how the new billing cycle works because the charges on your account changed in March."
_LONG_CUSTOMER = "I have been charged twice this month and I want the second payment refunded to my card today."
SCENES = (
    ("turns, no overlap", [(6.5, _LONG_CUSTOMER, 170, None)], [(0.0, _LONG_AGENT, 170, None)],
     {"interruptions": {"customer": 0, "agent": 0}, "backchannels": {"customer": 0, "agent": 0}}),
    ("customer back-channels twice", [(1.5, "mm hm", 170, None), (3.6, "right", 170, None)], [(0.0, _LONG_AGENT, 170, None)],
     {"interruptions": {"customer": 0, "agent": 0}, "backchannels": {"customer": 2, "agent": 0}}),
    ("agent back-channels once", [(0.0, _LONG_CUSTOMER, 170, None)], [(2.0, "okay", 170, None)],
     {"interruptions": {"customer": 0, "agent": 0}, "backchannels": {"customer": 0, "agent": 1}}),
    ("customer takes the floor", [(2.0, _LONG_CUSTOMER, 170, None)], [(0.0, _LONG_AGENT, 170, 2.7)],
     {"interruptions": {"customer": 1, "agent": 0}, "backchannels": {"customer": 0, "agent": 0}}),
    ("agent takes the floor", [(0.0, _LONG_CUSTOMER, 170, 3.0)], [(2.2, _LONG_AGENT, 170, None)],
     {"interruptions": {"customer": 0, "agent": 1}, "backchannels": {"customer": 0, "agent": 0}}),
    ("both talk on (contested)", [(2.0, _LONG_CUSTOMER, 170, None)], [(0.0, _LONG_AGENT, 170, None)],
     {"interruptions": {"customer": 1, "agent": 0}, "backchannels": {"customer": 0, "agent": 0}}),
    # The agent's comma is a 240 ms pause just after the customer came in: a listener hears one interruption.
    ("both talk on, the agent pausing at a comma", [(2.0, _LONG_CUSTOMER, 170, None)], [(0.0, _LONG_AGENT.replace(" works", " works,"), 170, None)],
     {"interruptions": {"customer": 1, "agent": 0}, "backchannels": {"customer": 0, "agent": 0}}),
)


def _voice(work: str, text: str, words_per_min: int, voice: str) -> np.ndarray | None:
    raw, out = os.path.join(work, "scene.wav"), os.path.join(work, "scene8k.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_min), "-w", raw, text], check=True, capture_output=True)
    return _mono8k(out)[0] if _sox(raw, out) else None


def conversation_scenes(work: str) -> dict | None:
    """Interruptions and back-channels of the labelled scenes (SCENES) as the service's batch analysis counts them,
    against the labels: per scene the counts, and in all how many labelled events were found and how many counted
    events were not labelled. None without espeak-ng and sox."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        return None
    from clients.wavfile import write_wav
    from service.batch import AnalyzeOptions, analyze
    from service.config import load_config
    from service.domain import Role
    from service.inference.constant import ConstantEmotionModel

    paths, labels = [], []
    for index, (name, customer, agent, expected) in enumerate(SCENES):
        tracks = []
        for utterances, voice in ((customer, "en-us+m3"), (agent, "en-us+f3")):
            track = np.zeros(12 * RATE, np.int16)
            for start, text, words_per_min, cut in utterances:
                x = _voice(work, text, words_per_min, voice)
                if x is None:
                    return None
                if cut is not None:
                    x = x[: int((cut - start) * RATE)]
                at = int(start * RATE)
                track[at : at + len(x)] = x[: len(track) - at]
            tracks.append(track)
        path = os.path.join(work, f"scene{index}.wav")
        write_wav(path, RATE, np.stack(tracks, axis=1))
        paths.append(path)
        labels.append(expected)
    options = AnalyzeOptions(out_dir=os.path.join(work, "scenes"), roles=(Role.CUSTOMER, Role.AGENT), jobs=1, progress=False)
    results = analyze(paths, options, load_config(environ={}), model=ConstantEmotionModel())
    rows, found, missed, extra = [], 0, 0, 0
    for (name, *_), expected, result in zip(SCENES, labels, results):
        conversation = (result.summary or {}).get("conversation", {}) if result.status == "ok" else {}
        counted = {kind: dict(conversation.get(kind, {}).get("by", {})) for kind in ("interruptions", "backchannels")}
        for kind in expected:
            for role, want in expected[kind].items():
                got = counted[kind].get(role, 0)
                found, missed, extra = found + min(got, want), missed + max(0, want - got), extra + max(0, got - want)
        rows.append({"scene": name, "expected": expected, "counted": counted})
    return {"scenes": rows, "labelled_found": found, "labelled_missed": missed, "unlabelled_counted": extra}


def windows_to_the_model(clips: dict[str, list[tuple[str, np.ndarray]]], work: str, share: float) -> dict:
    """Per class, the clips run as calls through the batch analysis (constant model, every channel scored): the windows
    sent to the emotion model without the engine's speech check, and with it at `share` (silero-vad carrying each
    channel's state from window to window), with the windows it held back, and the talk time of all the calls without
    and with the check (a window it finds not speech latches its channel out of talk time). A clip is a mono call, or
    a stereo call when its samples have two columns."""
    from clients.wavfile import write_wav
    from service.batch import AnalyzeOptions, analyze
    from service.config import load_config
    from service.domain import Role
    from service.inference.constant import ConstantEmotionModel
    from service.inference.speech import SpeechCheckedModel

    figures = {}
    config = load_config(environ={})
    for kind, members in clips.items():
        paths = []
        for index, (_, x) in enumerate(members):
            paths.append(os.path.join(work, f"calls-{len(figures)}-{index}.wav"))
            write_wav(paths[-1], RATE, x if x.ndim == 2 else x[:, None])
        counts = {}
        for label, model in (("without", ConstantEmotionModel()),
                             ("with", SpeechCheckedModel(ConstantEmotionModel(), _detector(), share))):
            options = AnalyzeOptions(out_dir=os.path.join(work, f"windows-{len(figures)}-{label}"),
                                     roles=(Role.CUSTOMER, Role.AGENT), jobs=2, progress=False)
            summaries = [result.summary for result in analyze(paths, options, config, model=model) if result.status == "ok"]
            speakers = [speaker for summary in summaries for speaker in summary["speakers"]]
            talk_ms = sum(sum(summary["conversation"]["talk_ms"].values()) for summary in summaries)
            counts[label] = (sum(sp["windows_scored"] for sp in speakers), sum(sp.get("windows_not_speech", 0) for sp in speakers), talk_ms)
        figures[kind] = {"calls": len(members), "scored_without_check": counts["without"][0], "scored_with_check": counts["with"][0],
                         "not_speech": counts["with"][1], "talk_s_without_check": round(counts["without"][2] / 1000, 1),
                         "talk_s_with_check": round(counts["with"][2] / 1000, 1)}
    return {"share": share, "classes": figures}


HOLD_SPEECH_AT_S = (5.0, 20.0, 35.0, 50.0)  # the customer talking (to someone beside them) while the agent's side plays music


def hold_music_calls(music: list[tuple[str, np.ndarray]], work: str, share: float) -> dict:
    """Hold music on the agent's channel (not scored) while the customer speaks now and then (the customer fixture at
    HOLD_SPEECH_AT_S): per clip a stereo call through the batch analysis (constant model, the customer scored), without
    the speech check and with it at `share` for each CALLPULSE_CHECK_UNSCORED mode. Totals per setting: the agent's
    talk time, over-talk, interruptions by the agent (what the shipped agent-talks-over-customer rule counts), hold
    time and the default rules' alerts. Every second of agent talk here is music."""
    from clients.wavfile import write_wav
    from service.batch import AnalyzeOptions, analyze
    from service.config import load_config
    from service.domain import Role
    from service.inference.constant import ConstantEmotionModel
    from service.inference.speech import SpeechCheckedModel

    speech = _mono8k(str(ROOT / "clients" / "samples" / "customer_16k.wav"))[0]
    paths = []
    for index, (_, x) in enumerate(music):
        customer = np.zeros(len(x), np.int16)
        for at in HOLD_SPEECH_AT_S:
            start = int(at * RATE)
            if start < len(x):
                part = speech[: len(x) - start]
                customer[start : start + len(part)] = part
        paths.append(os.path.join(work, f"hold-{index}.wav"))
        write_wav(paths[-1], RATE, np.stack([customer, x], axis=1))
    settings = [("without the check", "suspect", ConstantEmotionModel())]
    settings += [(f"check {share:g}, unscored: {mode}", mode, SpeechCheckedModel(ConstantEmotionModel(), _detector(), share))
                 for mode in ("suspect", "all")]
    out = {"calls": len(paths), "settings": {}}
    for label, mode, model in settings:
        options = AnalyzeOptions(out_dir=os.path.join(work, f"hold-{mode}-{len(out['settings'])}"), roles=(Role.CUSTOMER, Role.AGENT),
                                 score_roles=(Role.CUSTOMER,), jobs=2, progress=False)
        config = load_config(environ={"CALLPULSE_CHECK_UNSCORED": mode})
        summaries = [r.summary for r in analyze(paths, options, config, model=model) if r.status == "ok"]
        conversations = [summary["conversation"] for summary in summaries]
        out["settings"][label] = {
            "agent_talk_s": round(sum(c["talk_ms"]["agent"] for c in conversations) / 1000, 1),
            "overtalk_s": round(sum(c["overtalk_ms"] for c in conversations) / 1000, 1),
            "agent_interruptions": sum(c["interruptions"]["by"].get("agent", 0) for c in conversations),
            "hold_s": round(sum(c.get("hold", {}).get("ms", 0) for c in conversations) / 1000, 1),
            "alerts": dict(sorted(Counter(a["rule_id"] for summary in summaries for a in summary["alerts"]).items())),
        }
    return out


def _detector():
    """The engine's speech detector as the configuration sets it up (CALLPULSE_SPEECH_CHECK_REFRESH_MS)."""
    from service.config import load_config
    from service.inference.speech import SpeechDetector

    return SpeechDetector(refresh_s=load_config().inference.speech_check_refresh_ms / 1000)


def _angry_test_model():
    """A TEST MODEL that calls every window angry (the issue's "always-angry model"): whatever reaches it alerts."""
    from service.inference.constant import ConstantEmotionModel

    class AlwaysAngryTestModel(ConstantEmotionModel):
        def __init__(self) -> None:
            super().__init__()
            self.name = "TEST MODEL: always angry (evaluation only)"

        def score_batch(self, windows):
            out = super().score_batch(windows)
            angry = np.zeros(len(self.labels), dtype=np.float32)
            angry[self.labels.index("angry")] = 1.0
            for result in out:
                result.scores[:] = angry
                result.frame_logits[:, self.labels.index("angry")] = 20.0  # windows scored from their frames read angry too
            return out

    return AlwaysAngryTestModel()


# The emotion half of the shipped customer-upset-fast rule on its own (no speech-rate condition): the strictest test
# of what music sends to the model.
ANGER_ONLY_RULES = """rules:
  - id: customer-angry-5s
    speaker: customer
    all:
      - emotion: [angry, fearful]
        min: 0.6
        clear: 0.4
        for: 5s
        max_pause: 3s
    severity: high
    notify: [agent]
    cooldown: 60s
    message: customer angry for 5 s
"""


def music_alerts(music: list[tuple[str, np.ndarray]], work: str, share: float) -> dict:
    """Music on the customer's channel (scored) with a model that calls every window angry: per clip a stereo call (the
    agent's channel silent) through the batch analysis, with the default rules and with ANGER_ONLY_RULES, each without
    the speech check and with it at `share`. Per setting the clips with an alert, the alerts per rule, the windows
    scored and the customer's talk time: every alert here is one the music raised."""
    from clients.wavfile import write_wav
    from service.inference.speech import SpeechCheckedModel

    paths = []
    for index, (_, x) in enumerate(music):
        paths.append(os.path.join(work, f"music-customer-{index}.wav"))
        write_wav(paths[-1], RATE, np.stack([x, np.zeros(len(x), np.int16)], axis=1))
    anger_only = os.path.join(work, "anger-only.yaml")
    Path(anger_only).write_text(ANGER_ONLY_RULES)
    out = {"calls": len(paths), "settings": {}}
    for rules, environ in (("default rules", {}), ("anger for 5 s alone", {"CALLPULSE_RULES": anger_only})):
        for check, model in (("without the check", _angry_test_model()),
                             (f"check {share:g}", SpeechCheckedModel(_angry_test_model(), _detector(), share))):
            out["settings"][f"{rules}, {check}"] = _alerts_of(paths, os.path.join(work, f"music-alerts-{len(out['settings'])}"), model, environ)
    return out


def music_after_speech_alerts(music: list[tuple[str, np.ndarray]], work: str, share: float, gain_db: float = 10.0,
                              speech_s: float = 25.0) -> dict:
    """Music after the customer's own speech, louder than it by `gain_db` (the customer's side puts the call on hold, or
    a radio comes on): per clip a stereo call whose customer channel holds `speech_s` of a real caller's speech (the
    real call's caller when present, else the bundled call's customer) and then the clip at the speech's level plus
    `gain_db` (both measured over their samples above -36 dBFS), the agent's channel silent. Through the batch analysis
    with the constant model and the default rules (their loudness rule is warm after 10 s of speech), without the speech
    check and with it at `share`: every alert here is one the music raised."""
    from clients.wavfile import write_wav
    from service.inference.constant import ConstantEmotionModel
    from service.inference.speech import SpeechCheckedModel

    source = REAL_CALL if REAL_CALL.exists() else ROOT / "clients" / "samples" / "call_stereo_8k.wav"
    caller = _mono8k(str(source))[1 if source == REAL_CALL else 0].astype(np.float64)  # the caller's channel
    caller = np.tile(caller, int(np.ceil(speech_s * RATE / len(caller))))[: int(speech_s * RATE)]

    def level(x: np.ndarray) -> float:
        loud = x[np.abs(x) > 500.0]
        return float(np.sqrt(np.mean(loud * loud))) if len(loud) else 1.0

    target = level(caller) * 10 ** (gain_db / 20)
    paths = []
    for index, (_, x) in enumerate(music):
        loud = np.clip(np.round(x.astype(np.float64) * target / level(x.astype(np.float64))), -32768, 32767)
        customer = np.concatenate([caller, loud]).astype(np.int16)
        paths.append(os.path.join(work, f"music-after-speech-{index}.wav"))
        write_wav(paths[-1], RATE, np.stack([customer, np.zeros(len(customer), np.int16)], axis=1))
    out = {"calls": len(paths), "gain_db": gain_db, "settings": {}}
    for check, model in (("without the check", ConstantEmotionModel()),
                         (f"check {share:g}", SpeechCheckedModel(ConstantEmotionModel(), _detector(), share))):
        out["settings"][check] = _alerts_of(paths, os.path.join(work, f"music-after-speech-alerts-{len(out['settings'])}"), model, {})
    return out


def _alerts_of(paths: list[str], out_dir: str, model, environ: dict) -> dict:
    """The calls through the batch analysis (the customer scored) with `model` and the settings in `environ`: the calls
    with an alert, the alerts per rule, the customer's windows scored and talk time."""
    from service.batch import AnalyzeOptions, analyze
    from service.config import load_config
    from service.domain import Role

    options = AnalyzeOptions(out_dir=out_dir, roles=(Role.CUSTOMER, Role.AGENT),
                             score_roles=(Role.CUSTOMER,), jobs=2, progress=False)
    summaries = [r.summary for r in analyze(paths, options, load_config(environ=environ), model=model) if r.status == "ok"]
    customers = [speaker for summary in summaries for speaker in summary["speakers"] if speaker["speaker"] == "customer"]
    return {
        "clips_with_alerts": sum(1 for summary in summaries if summary["alerts"]),
        "alerts": dict(sorted(Counter(a["rule_id"] for summary in summaries for a in summary["alerts"]).items())),
        "windows_scored": sum(c["windows_scored"] for c in customers),
        "talk_s": round(sum(summary["conversation"]["talk_ms"]["customer"] for summary in summaries) / 1000, 1),
    }


def _row(name: str, voiced: int, steady: int, extra: dict | None) -> dict:
    return {"clip": name, "voiced": voiced, "steady": steady, **(extra or {})}


def evaluate(music_dirs: list[str], skip: float, seconds: float, espeak: bool, silero: bool = False,
             check: float | None = None, transcribed: list[str] | None = None, vocal_dirs: list[str] | None = None,
             cough_dirs: list[str] | None = None) -> dict:
    """Per class: clips, voiced frames and the share of them taken as steady sound, with the per-clip figures (with
    `silero`, also the share silero-vad calls speech and the share left as speech by the gate and silero-vad together;
    with `check`, the windows that reach the emotion model without and with the engine's speech check at that share)."""
    rows: dict[str, list[dict]] = {"music (Debian packages)": [], "music (generated)": [], "tones": [], "speech": []}
    calls: dict[str, list[tuple[str, np.ndarray]]] = {kind: [] for kind in rows}
    with tempfile.TemporaryDirectory(prefix="callpulse-eval-") as work:
        have_sox = shutil.which("sox") is not None
        for name, x in music_clips(music_dirs, skip, seconds, work) if have_sox else []:
            rows["music (Debian packages)"].append(_row(name, *gate_figures(x, silero=silero)))
            calls["music (Debian packages)"].append((name, x))
        for name, x in generated_music():
            rows["music (generated)"].append(_row(name, *gate_figures(x, silero=silero)))
            calls["music (generated)"].append((name, x))
        for name, x in tone_clips():
            rows["tones"].append(_row(name, *gate_figures(x, silero=silero)))
            calls["tones"].append((name, x))
        for path in stereo_calls():  # as the calls they are: each channel's speech with the other's bleed beside it
            calls["speech"].append((Path(path).stem, np.stack(_mono8k(path), axis=1)))
        for name, x, speaking in speech_clips(work, espeak and have_sox):
            rows["speech"].append(_row(name, *gate_figures(x, speaking, silero=silero)))
            if speaking is None:  # a mono clip (the stereo calls' channels are in as their calls)
                calls["speech"].append((name, x))
        windows = windows_to_the_model(calls, work, check) if check else None
        holds = hold_music_calls(calls["music (Debian packages)"], work, check) if check and calls["music (Debian packages)"] else None
        alerts = music_alerts(calls["music (Debian packages)"], work, check) if check and calls["music (Debian packages)"] else None
        after_speech = (music_after_speech_alerts(calls["music (Debian packages)"], work, check)
                        if check and calls["music (Debian packages)"] else None)
        rate = speech_rate_error(work) if espeak else None
        scenes = conversation_scenes(work) if espeak else None
        real = real_call_against_dejong(str(REAL_CALL)) if rate is not None else None
        transcribed_rates = transcribed_rate(transcribed, work) if transcribed else None
        vocal = vocal_sounds(vocal_dirs, work) if vocal_dirs else None
        coughs = cough_sounds(cough_dirs) if cough_dirs else None
    summary = {}
    for kind, clips in rows.items():
        voiced = sum(c["voiced"] for c in clips)
        steady = sum(c["steady"] for c in clips)
        summary[kind] = {"clips": len(clips), "voiced_frames": voiced, "steady_share": round(steady / voiced, 4) if voiced else None,
                         "clips_mostly_steady": sum(1 for c in clips if c["voiced"] and c["steady"] >= 0.8 * c["voiced"])}
        if clips and voiced and all("silero" in c for c in clips):
            summary[kind]["silero_speech_share"] = round(sum(c["silero"] for c in clips) / voiced, 4)
            summary[kind]["left_as_speech_share"] = round(sum(c["left"] for c in clips) / voiced, 4)
    return {"classes": summary, "clips": rows, "speech_rate": rate, "real_call_rate": real, "conversation": scenes,
            "windows": windows, "transcribed_rate": transcribed_rates, "hold_music": holds, "vocal": vocal, "coughs": coughs,
            "music_alerts": alerts, "music_after_speech": after_speech}


def _print_table(header: list[str], rows: list[list]) -> None:
    """A markdown table after a blank line."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.eval_signal", description=__doc__.split("\n")[0])
    parser.add_argument("--music-dir", action="append", help="directory of music files (repeatable)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of each music file")
    parser.add_argument("--skip", type=float, default=20.0, help="seconds skipped at the start of each music file")
    parser.add_argument("--no-espeak", action="store_true", help="leave out the espeak-ng sentences")
    parser.add_argument("--silero", action="store_true",
                        help="also run silero-vad (pip install silero-vad) on every clip: what a trained detector would add")
    parser.add_argument("--check", type=float, default=0.2,
                        help="run every clip as a call and count the windows that reach the emotion model without and with the "
                             "engine's speech check at this share (0: skip; default 0.2, the service's default)")
    parser.add_argument("--transcribed", action="append",
                        help="Kaldi data directory of real recordings with transcripts (text, wav.scp), Chinese or English: "
                             "speech rate against the transcripts' syllables (repeatable)")
    parser.add_argument("--vocal-dir", action="append",
                        help="directory of voice packs (VOICE/NAME.ogg: Laugh, *Cough*, Hmm, phrases), default hedgewars-data's "
                             "where installed: laughter found and syllables counted per class (repeatable)")
    parser.add_argument("--cough-dir", action="append",
                        help="directory of recordings of coughs alone (.wav/.mp3/.ogg/.flac; e.g. the call-center clips of "
                             "github.com/covid19-cough/dataset): the syllables counted on them, all false (repeatable)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = evaluate(args.music_dir or [d for d in DEFAULT_MUSIC_DIRS if os.path.isdir(d)], args.skip, args.seconds, not args.no_espeak,
                      silero=args.silero, check=args.check, transcribed=args.transcribed,
                      vocal_dirs=args.vocal_dir or [d for d in DEFAULT_VOCAL_DIRS if os.path.isdir(d)], cough_dirs=args.cough_dir)
    with_silero = any("silero_speech_share" in f for f in result["classes"].values())
    print("| class | clips | voiced frames (webrtcvad) | share the gate takes as steady sound | clips >= 80% steady |"
          + (" silero-vad: share it calls speech | left as speech by the gate and silero-vad |" if with_silero else ""))
    print("| --- | --- | --- | --- | --- |" + (" --- | --- |" if with_silero else ""))
    for kind, figures in result["classes"].items():
        share = "-" if figures["steady_share"] is None else f"{100 * figures['steady_share']:.1f}%"
        line = f"| {kind} | {figures['clips']} | {figures['voiced_frames']} | {share} | {figures['clips_mostly_steady']} |"
        if with_silero:
            line += "".join(f" {100 * figures[k]:.1f}% |" if k in figures else " - |" for k in ("silero_speech_share", "left_as_speech_share"))
        print(line)
    windows = result.get("windows")
    if windows:
        print(f"\n| class | calls | windows sent to the emotion model | with the speech check at {windows['share']:g} | held back as not speech "
              "| talk time (s) | with the check |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for kind, figures in windows["classes"].items():
            print(f"| {kind} | {figures['calls']} | {figures['scored_without_check']} | {figures['scored_with_check']} | "
                  f"{figures['not_speech']} | {figures['talk_s_without_check']} | {figures['talk_s_with_check']} |")
    rate = result["speech_rate"]
    if rate:
        print("\n| espeak-ng | words/min | syllables/min (truth) | the service | de Jong & Wempe (Praat) |")
        print("| --- | --- | --- | --- | --- |")
        for language in ("English", "Mandarin"):
            for words_per_min in RATES_WPM:
                rows = [r for r in rate["utterances"] if r["wpm"] == words_per_min and r["language"] == language]
                if not rows:
                    continue
                reference = "-" if rows[0]["dejong_spm"] is None else f"{np.mean([r['dejong_spm'] for r in rows]):.0f}"
                print(f"| {language} | {words_per_min} | {np.mean([r['true_spm'] for r in rows]):.0f} | "
                      f"{np.mean([r['measured_spm'] for r in rows]):.0f} | {reference} |")
        for language, entry in sorted(rate["languages"].items()):
            for who, figures in entry.items():
                print(f"{language}, {who} against the truth over {sum(1 for r in rate['utterances'] if r['language'] == language)} "
                      f"utterances: mean ratio {figures['mean_ratio']}, mean absolute error {100 * figures['mean_abs_error']:.0f}%, "
                      f"Pearson r {figures['pearson_r']}")
    real = result.get("real_call_rate")
    if real:
        figures = real["summary"]
        print(f"\nreal call ({REAL_CALL.name}), the service against de Jong & Wempe per utterance ({figures['utterances']}): "
              f"totals {figures['service_total']} / {figures['dejong_total']}, mean ratio {figures.get('mean_ratio')}, "
              f"mean absolute error {100 * figures.get('mean_abs_error', 0):.0f}%, Pearson r {figures.get('pearson_r')}")
    holds = result.get("hold_music")
    if holds:
        _print_table([f"hold music on the agent's channel, the customer speaking ({holds['calls']} calls)", "agent talk (s)",
                      "over-talk (s)", "interruptions by the agent", "hold (s)", "alerts"],
                     [[label, f["agent_talk_s"], f["overtalk_s"], f["agent_interruptions"], f["hold_s"],
                       ", ".join(f"{rule} {count}" for rule, count in f["alerts"].items()) or "none"]
                      for label, f in holds["settings"].items()])
    alerts = result.get("music_alerts")
    if alerts:
        _print_table([f"music on the customer's channel, an always-angry test model ({alerts['calls']} calls)", "calls with an alert",
                      "alerts", "windows scored", "customer talk (s)"],
                     [[label, f["clips_with_alerts"], ", ".join(f"{rule} {count}" for rule, count in f["alerts"].items()) or "none",
                       f["windows_scored"], f["talk_s"]] for label, f in alerts["settings"].items()])
    after = result.get("music_after_speech")
    if after:
        _print_table([f"music {after['gain_db']:+g} dB over the customer's own speech before it, constant model ({after['calls']} calls)",
                      "calls with an alert", "alerts", "windows scored", "customer talk (s)"],
                     [[label, f["clips_with_alerts"], ", ".join(f"{rule} {count}" for rule, count in f["alerts"].items()) or "none",
                       f["windows_scored"], f["talk_s"]] for label, f in after["settings"].items()])
    transcribed = result.get("transcribed_rate")
    if transcribed:
        _print_table(["utterance (real, transcribed)", "language", "seconds", "syllables (characters)", "the service",
                      "de Jong & Wempe (Praat)"],
                     [[r["utterance"], r["language"], r["seconds"], r["syllables"], r["service_nuclei"], r["dejong_nuclei"]]
                      for r in transcribed["utterances"]])
        for language, entry in transcribed["summary"]["languages"].items():
            for who in ("service", "dejong"):
                if who in entry:
                    figures = entry[who]
                    print(f"{language}, {who} against the transcripts over {entry['utterances']} utterances: mean ratio "
                          f"{figures['mean_ratio']}, mean absolute error {100 * figures['mean_abs_error']:.0f}%, Pearson r "
                          f"{figures['pearson_r']}")
    vocal = result.get("vocal")
    if vocal:
        _print_table(["voice clips (hedgewars-data)", "clips", "with a laugh found", "laughter (s)", "syllable nuclei",
                      "without the laughter check", "voiced (s)"],
                     [[kind, f["clips"], f["with_laugh"], f"{f['laughter_ms'] / 1000:.1f}", f["nuclei"], f["nuclei_without_check"],
                       f"{f['voiced_ms'] / 1000:.1f}"] for kind, f in vocal.items()])
    coughs = result.get("coughs")
    if coughs:
        _print_table(["coughs alone (--cough-dir)", "clips", "audio (s)", "voiced (s)", "syllable nuclei (all false)",
                      "clips with a nucleus", "de Jong & Wempe (Praat)"],
                     [["coughs", coughs["clips"], coughs["audio_s"], f"{coughs['voiced_ms'] / 1000:.1f}", coughs["nuclei"],
                       coughs["clips_with_nuclei"], "-" if coughs["dejong_nuclei"] is None else coughs["dejong_nuclei"]]])
    scenes = result.get("conversation")
    if scenes:
        print("\n| scene (espeak-ng voices, labelled by construction) | interruptions by customer / agent | back-channels by customer / agent |")
        print("| --- | --- | --- |")
        for row in scenes["scenes"]:
            cells = []
            for kind in ("interruptions", "backchannels"):
                want, got = row["expected"][kind], row["counted"][kind]
                cells.append(" / ".join(f"{got.get(r, 0)}" + ("" if got.get(r, 0) == want[r] else f" (label {want[r]})")
                                        for r in ("customer", "agent")))
            print(f"| {row['scene']} | {cells[0]} | {cells[1]} |")
        print(f"\nlabelled events found {scenes['labelled_found']}, missed {scenes['labelled_missed']}; "
              f"counted without a label {scenes['unlabelled_counted']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
