"""Decoding of wire audio (PCM16LE, G.711 mu-law and A-law) into per-channel int16 samples."""

from __future__ import annotations

import numpy as np

from service.domain import AudioFormat, Encoding
from service.errors import InvalidArgument


def _mulaw_table() -> np.ndarray:
    # ITU-T G.711 mu-law expansion (as in the reference g711.c).
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_table() -> np.ndarray:
    # ITU-T G.711 A-law expansion (as in the reference g711.c).
    codes = np.arange(256, dtype=np.int32)
    a = codes ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


MULAW_TO_PCM16 = _mulaw_table()
ALAW_TO_PCM16 = _alaw_table()


def decode(audio_format: AudioFormat, data: bytes) -> np.ndarray:
    """Decode one chunk into an int16 array of shape (frames, channels).

    Raises InvalidArgument when the chunk is not a whole number of sample frames.
    """
    if len(data) % audio_format.frame_bytes:
        raise InvalidArgument(
            f"audio chunk has {len(data)} bytes, not a whole number of {audio_format.frame_bytes}-byte sample frames "
            f"({audio_format.encoding.name}, {audio_format.channels} channel(s))"
        )
    if audio_format.encoding is Encoding.PCM16LE:
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
    else:
        table = MULAW_TO_PCM16 if audio_format.encoding is Encoding.MULAW else ALAW_TO_PCM16
        samples = table[np.frombuffer(data, dtype=np.uint8)]
    return samples.reshape(-1, audio_format.channels)


def _encoder(table: np.ndarray):
    order = np.argsort(table, kind="stable")
    values = table[order].astype(np.int32)
    codes = order.astype(np.uint8)

    def encode(samples: np.ndarray) -> bytes:
        # nearest G.711 code point for each linear sample
        x = np.asarray(samples, dtype=np.int32).ravel()
        idx = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
        left, right = values[idx - 1], values[idx]
        idx = np.where(x - left <= right - x, idx - 1, idx)
        return codes[idx].tobytes()

    return encode


encode_mulaw = _encoder(MULAW_TO_PCM16)
encode_mulaw.__doc__ = "Encode int16 samples as G.711 mu-law bytes (nearest code point)."
encode_alaw = _encoder(ALAW_TO_PCM16)
encode_alaw.__doc__ = "Encode int16 samples as G.711 A-law bytes (nearest code point)."


def encode(encoding: Encoding, samples: np.ndarray) -> bytes:
    """Encode interleaved int16 samples (any shape, row-major) in the given wire encoding."""
    if encoding is Encoding.PCM16LE:
        return np.ascontiguousarray(samples, dtype="<i2").tobytes()
    return (encode_mulaw if encoding is Encoding.MULAW else encode_alaw)(samples)
