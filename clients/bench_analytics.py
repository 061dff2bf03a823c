"""CPU cost of the inline conversation analytics (prosody per channel, turn-taking per call) per second of audio.

    python -m clients.bench_analytics [--wav FILE] [--seconds 120] [--chunk-ms 20]

Feeds a stereo recording (the bundled sample call by default, looped) through the same VAD,
crosstalk gate, ProsodyTrack and ConversationTracker a CallSession uses, in chunks like a bridge sends, asking for
window figures every 500 ms of speech as the session does, and prints CPU seconds per second of
call audio for each part (single thread).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import webrtcvad

from clients.wavfile import read_wav
from service.analytics.conversation import ConversationTracker
from service.analytics.crosstalk import speaking_frames
from service.analytics.prosody import ProsodyTrack
from service.domain import Role

SAMPLE = Path(__file__).resolve().parent / "samples" / "call_stereo_8k.wav"
FRAME_MS = 20
CROSSTALK_MARGIN_DB = 20.0  # AnalyticsConfig's default


def measure(samples: np.ndarray, rate: int, chunk_ms: int) -> dict[str, float]:
    """CPU seconds per second of audio for VAD, who is speaking (near silence, crosstalk), prosody (both
    channels) and turn-taking."""
    frame = rate * FRAME_MS // 1000
    channels = samples.shape[1]
    usable = len(samples) - len(samples) % frame
    samples = samples[:usable]
    vads = [webrtcvad.Vad(2) for _ in range(channels)]
    began = time.process_time()
    voiced = np.array([[vads[c].is_speech(samples[i:i + frame, c].tobytes(), rate) for c in range(channels)]
                       for i in range(0, usable, frame)])
    vad_s = time.process_time() - began
    tracks = [ProsodyTrack(rate, FRAME_MS) for _ in range(channels)]
    conversation = ConversationTracker((Role.CUSTOMER, Role.AGENT)[:channels], FRAME_MS)
    chunk_frames = max(1, chunk_ms // FRAME_MS)
    hop_frames = 500 // FRAME_MS
    prosody_s = conversation_s = speaking_s = 0.0
    for first in range(0, len(voiced), chunk_frames):
        last = min(len(voiced), first + chunk_frames)
        block = samples[first * frame:last * frame]
        began = time.process_time()
        columns = [np.ascontiguousarray(block[:, c]) for c in range(channels)]
        speaking, _ = speaking_frames(columns, voiced[first:last], frame, CROSSTALK_MARGIN_DB)
        speaking_s += time.process_time() - began
        began = time.process_time()
        for c, track in enumerate(tracks):
            track.push(columns[c], speaking[:, c])
            if last // hop_frames != first // hop_frames:  # a window is cut every 500 ms of speech
                end = last * frame
                track.figures(max(0, end - 3 * rate), end, max(0, end - rate // 2))
        prosody_s += time.process_time() - began
        began = time.process_time()
        conversation.push(speaking)
        conversation_s += time.process_time() - began
    audio_s = usable / rate
    return {"audio_s": round(audio_s, 1), "vad_cpu_per_audio_s": round(vad_s / audio_s, 5),
            "speaking_cpu_per_audio_s": round(speaking_s / audio_s, 5),
            "prosody_cpu_per_audio_s": round(prosody_s / audio_s, 5),
            "conversation_cpu_per_audio_s": round(conversation_s / audio_s, 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.bench_analytics", description=__doc__.split("\n")[0])
    parser.add_argument("--wav", default=str(SAMPLE), help="stereo (or mono) PCM16 WAV at 8 or 16 kHz")
    parser.add_argument("--seconds", type=float, default=120.0, help="audio to process (the file is looped)")
    parser.add_argument("--chunk-ms", type=int, default=20, help="chunk size a bridge sends")
    args = parser.parse_args(argv)
    wav = read_wav(args.wav)
    reps = int(np.ceil(args.seconds * wav.sample_rate / len(wav.samples)))
    samples = np.tile(wav.samples, (reps, 1))[: int(args.seconds * wav.sample_rate)]
    print(json.dumps({"wav": Path(args.wav).name, "rate": wav.sample_rate, "chunk_ms": args.chunk_ms,
                      **measure(samples, wav.sample_rate, args.chunk_ms)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
