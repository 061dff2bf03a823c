"""WAV reading for the clients: PCM16, G.711 mu-law (format tag 7) and A-law (tag 6), plain or EXTENSIBLE."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from service.audio.codecs import ALAW_TO_PCM16, MULAW_TO_PCM16

_TAGS = {1: "pcm16", 6: "alaw", 7: "mulaw"}


@dataclass(frozen=True)
class WavAudio:
    """Decoded WAV: int16 samples of shape (frames, channels)."""

    sample_rate: int
    samples: np.ndarray
    source_encoding: str

    @property
    def channels(self) -> int:
        return self.samples.shape[1]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def read_wav(path: str) -> WavAudio:
    """Read a WAV file; raises ValueError naming what is unsupported."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise ValueError(f"{path}: missing fmt or data chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    encoding = _TAGS.get(tag)
    if encoding is None:
        raise ValueError(f"{path}: WAV format tag {tag} is not supported (PCM16, mu-law or A-law)")
    if encoding == "pcm16" and bits != 16:
        raise ValueError(f"{path}: {bits}-bit PCM is not supported; convert to 16-bit")
    if channels not in (1, 2):
        raise ValueError(f"{path}: {channels} channels; expected 1 or 2")
    payload = payload[: len(payload) - len(payload) % block_align]
    if encoding == "pcm16":
        samples = np.frombuffer(payload, dtype="<i2").astype(np.int16)
    else:
        table = MULAW_TO_PCM16 if encoding == "mulaw" else ALAW_TO_PCM16
        samples = table[np.frombuffer(payload, dtype=np.uint8)]
    return WavAudio(rate, samples.reshape(-1, channels), encoding)


def write_wav(path: str, sample_rate: int, samples: np.ndarray) -> None:
    """Write int16 samples of shape (frames,) or (frames, channels) as PCM16 WAV."""
    samples = np.asarray(samples, dtype="<i2")
    if samples.ndim == 1:
        samples = samples[:, None]
    channels = samples.shape[1]
    payload = samples.tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * 2 * channels, 2 * channels, 16)
    header += b"data" + struct.pack("<I", len(payload))
    with open(path, "wb") as fh:
        fh.write(header + payload)
