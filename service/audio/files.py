"""Reading recorded call files (WAV, FLAC, Ogg Vorbis/Opus, MP3) into int16 samples for batch analysis."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from service.errors import InvalidArgument

MIN_SOURCE_RATE = 8000
MAX_SOURCE_RATE = 192000
KEPT_RATES = (8000, 16000)
TARGET_RATE = 16000
MAX_CHANNELS = 2

# Frames per read call: the array grows with what the decoder actually returns, so a header that
# claims more frames than the file holds never makes the reader allocate for them.
_BLOCK_FRAMES = 1 << 16
# libsndfile reports this frame count when it does not know the length.
_UNKNOWN_FRAMES = 1 << 62
# Formats whose frame count libsndfile derives from a bitrate estimate rather than the stream itself;
# a shortfall there is not evidence of truncation.
_ESTIMATED_LENGTH_FORMATS = frozenset({"MP3"})


class AudioFileError(InvalidArgument):
    """A recorded call file cannot be used; the message names the file and says what is wrong."""


@dataclass(frozen=True, eq=False)
class RecordedAudio:
    """Decoded call audio: int16 samples of shape (frames, channels), channels in the file's order."""

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    source_format: str

    @property
    def channels(self) -> int:
        """Number of channels (1 or 2)."""
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return self.samples.shape[0] / self.sample_rate


def read_call_audio(path: str | os.PathLike) -> RecordedAudio:
    """Read a recorded call file into int16 samples at 8 kHz or 16 kHz.

    8000 Hz and 16000 Hz files keep their rate; any other rate from 8000 to 192000 Hz is resampled
    to 16000 Hz with soxr. Float data (float WAV, Vorbis, Opus, MP3) is clipped to the int16 range.
    Raises AudioFileError when the file is missing, not a decodable audio file, empty, has more than
    two channels or has a rate outside 8000..192000 Hz.
    """
    name = os.path.basename(os.fspath(path)) or os.fspath(path)
    _check_is_file(path, name)
    try:
        handle = soundfile.SoundFile(path)
    except (soundfile.SoundFileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioFileError(
            f"{name}: not a readable audio file (unsupported or corrupt format; libsndfile: {_reason(exc)})"
        ) from None
    with handle:
        source_format = handle.format
        source_rate = int(handle.samplerate)
        channels = int(handle.channels)
        declared = int(handle.frames)
        if channels > MAX_CHANNELS:
            raise AudioFileError(f"{name}: has {channels} channels; expected mono or stereo (customer, agent)")
        if channels < 1:
            raise AudioFileError(f"{name}: has no audio channels")
        if not MIN_SOURCE_RATE <= source_rate <= MAX_SOURCE_RATE:
            raise AudioFileError(
                f"{name}: sample rate {source_rate} Hz is outside the supported {MIN_SOURCE_RATE}..{MAX_SOURCE_RATE} Hz"
            )
        audio = _read_all(handle, name, channels)
    if audio.shape[0] == 0:
        raise AudioFileError(
            f"{name}: has no audio frames (an empty recording, or a stream truncated before its first frame)"
        )
    if 0 < declared < _UNKNOWN_FRAMES and audio.shape[0] < declared and source_format not in _ESTIMATED_LENGTH_FORMATS:
        raise AudioFileError(
            f"{name}: audio data is corrupt or truncated (header declares {declared} frames, "
            f"only {audio.shape[0]} could be decoded)"
        )
    rate = source_rate
    if rate not in KEPT_RATES:
        audio = soxr.resample(audio, source_rate, TARGET_RATE, quality="HQ")
        rate = TARGET_RATE
    samples = _to_int16(audio)
    samples.flags.writeable = False
    return RecordedAudio(samples=samples, sample_rate=rate, source_rate=source_rate, source_format=source_format)


def _check_is_file(path: str | os.PathLike, name: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise AudioFileError(f"{name}: file not found") from None
    except PermissionError:
        raise AudioFileError(f"{name}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise AudioFileError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioFileError(f"{name}: is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioFileError(f"{name}: is not a regular file")
    if info.st_size == 0:
        raise AudioFileError(f"{name}: is empty (0 bytes); not an audio file")


def _read_all(handle: soundfile.SoundFile, name: str, channels: int) -> np.ndarray:
    blocks: list[np.ndarray] = []
    try:
        while True:
            block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                break
            blocks.append(block)
    except (soundfile.SoundFileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioFileError(f"{name}: audio data is corrupt or truncated (libsndfile: {_reason(exc)})") from None
    if not blocks:
        return np.zeros((0, channels), dtype=np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


def _to_int16(audio: np.ndarray) -> np.ndarray:
    # float32 holds every int16 value exactly, so PCM16 input round-trips bit for bit
    scaled = np.rint(np.asarray(audio, dtype=np.float32) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "error_string", None)
    return str(reason or exc).strip() or type(exc).__name__
