"""Reading recorded call files: formats, rates, sample conversion and specific errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from service.audio.files import AudioFileError, RecordedAudio, read_call_audio
from service.errors import InvalidArgument

CUSTOMER_HZ = 440.0
AGENT_HZ = 1000.0
SECONDS = 1.0

# (format, subtype, extension); MP3 and Opus only where this libsndfile build can write them
FORMATS = [
    ("WAV", "PCM_16", "wav"),
    ("FLAC", "PCM_16", "flac"),
    ("OGG", "VORBIS", "ogg"),
    ("MP3", "MPEG_LAYER_III", "mp3"),
]
RATES = [8000, 16000, 44100, 48000]


def _can_write(fmt: str, subtype: str) -> bool:
    return fmt in soundfile.available_formats() and subtype in soundfile.available_subtypes(fmt)


def _stereo_tones(rate: int, seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    customer = 0.5 * np.sin(2 * np.pi * CUSTOMER_HZ * t)
    agent = 0.3 * np.sin(2 * np.pi * AGENT_HZ * t)
    return np.stack([customer, agent], axis=1).astype(np.float32)


def _dominant_hz(channel: np.ndarray, rate: int) -> float:
    x = channel.astype(np.float64) * np.hanning(len(channel))
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(channel), 1 / rate)[np.argmax(spectrum)])


def _write(tmp_path, name: str, data: np.ndarray, rate: int, fmt: str, subtype: str):
    path = tmp_path / name
    soundfile.write(path, data, rate, format=fmt, subtype=subtype)
    return path


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt,subtype,ext", FORMATS)
def test_each_format_and_rate_reads_back_the_stereo_signal(tmp_path, fmt, subtype, ext, rate):
    """A stereo tone file in each format reads back as int16 stereo at 8/16 kHz with each channel's tone intact."""
    if not _can_write(fmt, subtype):
        pytest.skip(f"libsndfile here cannot write {fmt}/{subtype}")
    path = _write(tmp_path, f"call_{rate}.{ext}", _stereo_tones(rate), rate, fmt, subtype)
    audio = read_call_audio(path)
    expected_rate = rate if rate in (8000, 16000) else 16000
    assert isinstance(audio, RecordedAudio)
    assert audio.samples.dtype == np.int16
    assert audio.samples.ndim == 2 and audio.samples.shape[1] == 2 and audio.channels == 2
    assert audio.sample_rate == expected_rate
    assert audio.source_rate == rate
    assert audio.source_format == fmt
    # MP3 encoders may add up to a granule-pair of padding; the others are exact to a frame
    tolerance_s = 2 * 1152 / rate if fmt == "MP3" else 1 / expected_rate
    assert abs(audio.duration_s - SECONDS) <= tolerance_s
    assert abs(audio.samples.shape[0] / expected_rate - audio.duration_s) < 1e-12
    bin_hz = expected_rate / audio.samples.shape[0]
    assert abs(_dominant_hz(audio.samples[:, 0], expected_rate) - CUSTOMER_HZ) <= 2 * bin_hz
    assert abs(_dominant_hz(audio.samples[:, 1], expected_rate) - AGENT_HZ) <= 2 * bin_hz


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_ogg_opus_reads_back_when_supported(tmp_path, rate):
    """An Ogg/Opus stereo file reads back with both tones, at 16 kHz when recorded at 48 kHz."""
    if not _can_write("OGG", "OPUS"):
        pytest.skip("libsndfile here has no Opus support")
    path = _write(tmp_path, f"call_{rate}.opus", _stereo_tones(rate), rate, "OGG", "OPUS")
    audio = read_call_audio(path)
    expected_rate = rate if rate in (8000, 16000) else 16000
    assert audio.source_format == "OGG"
    assert audio.sample_rate == expected_rate and audio.samples.shape[1] == 2
    assert abs(audio.duration_s - SECONDS) <= 0.05
    bin_hz = expected_rate / audio.samples.shape[0]
    assert abs(_dominant_hz(audio.samples[:, 0], expected_rate) - CUSTOMER_HZ) <= 2 * bin_hz
    assert abs(_dominant_hz(audio.samples[:, 1], expected_rate) - AGENT_HZ) <= 2 * bin_hz


def test_pcm16_wav_samples_are_returned_bit_exact(tmp_path):
    """PCM16 WAV samples at a kept rate come back unchanged, every value including the extremes."""
    rng = np.random.default_rng(1)
    data = rng.integers(-32768, 32768, size=(4000, 2), dtype=np.int16)
    data[0] = (-32768, 32767)
    path = tmp_path / "exact.wav"
    soundfile.write(path, data, 8000, subtype="PCM_16")
    audio = read_call_audio(path)
    assert np.array_equal(audio.samples, data)


def test_mono_file_keeps_one_channel(tmp_path):
    """A mono WAV reads as shape (frames, 1)."""
    path = tmp_path / "mono.wav"
    soundfile.write(path, _stereo_tones(16000)[:, 0], 16000, subtype="PCM_16")
    audio = read_call_audio(path)
    assert audio.samples.shape == (16000, 1)
    assert audio.channels == 1


def test_float_wav_out_of_range_values_are_clipped(tmp_path):
    """Float WAV values beyond +-1.0 are clipped to the int16 limits, not wrapped."""
    data = np.array([[2.5, -3.0], [0.5, -0.5], [1.0, -1.0]], dtype=np.float32)
    path = tmp_path / "float.wav"
    soundfile.write(path, data, 8000, subtype="FLOAT")
    samples = read_call_audio(path).samples
    assert samples[0].tolist() == [32767, -32768]
    assert samples[1].tolist() == [16384, -16384]
    assert samples[2].tolist() == [32767, -32768]


def test_24_bit_wav_is_reduced_to_int16(tmp_path):
    """A 24-bit WAV reads as int16 samples at the same relative level."""
    data = _stereo_tones(16000)
    path = tmp_path / "pcm24.wav"
    soundfile.write(path, data, 16000, subtype="PCM_24")
    samples = read_call_audio(path).samples
    assert samples.dtype == np.int16
    assert np.max(np.abs(samples[:, 0].astype(int) - np.rint(data[:, 0] * 32768))) <= 1


def test_samples_are_read_only(tmp_path):
    """The returned sample array cannot be modified in place."""
    path = tmp_path / "ro.wav"
    soundfile.write(path, _stereo_tones(8000), 8000, subtype="PCM_16")
    audio = read_call_audio(path)
    with pytest.raises(ValueError):
        audio.samples[0, 0] = 1


@pytest.mark.parametrize("rate", [8000, 192000])
def test_rates_at_the_limits_are_accepted(tmp_path, rate):
    """Files at exactly 8000 Hz and 192000 Hz are accepted (the latter resampled to 16 kHz)."""
    path = tmp_path / f"edge_{rate}.wav"
    soundfile.write(path, _stereo_tones(rate, 0.25), rate, subtype="PCM_16")
    audio = read_call_audio(path)
    assert audio.sample_rate == (8000 if rate == 8000 else 16000)
    assert abs(audio.duration_s - 0.25) <= 1 / audio.sample_rate


@pytest.mark.parametrize("rate", [4000, 7999, 192001, 384000])
def test_rate_outside_range_is_rejected(tmp_path, rate):
    """A file whose rate is outside 8000..192000 Hz raises AudioFileError naming the rate."""
    path = tmp_path / "odd_rate.wav"
    soundfile.write(path, np.zeros((100, 1), dtype=np.int16), rate, subtype="PCM_16")
    expected = rf"odd_rate\.wav: sample rate {rate} Hz is outside the supported 8000\.\.192000 Hz"
    with pytest.raises(AudioFileError, match=expected):
        read_call_audio(path)


def test_random_bytes_named_wav_is_not_audio(tmp_path):
    """Random bytes in a .wav file raise AudioFileError with libsndfile's reason."""
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expected = r"noise\.wav: not a readable audio file \(unsupported or corrupt format; libsndfile: .+\)"
    with pytest.raises(AudioFileError, match=expected):
        read_call_audio(path)


def test_truncated_flac_is_reported_as_corrupt(tmp_path):
    """A FLAC file cut in half raises AudioFileError saying it is corrupt or truncated."""
    path = _write(tmp_path, "whole.flac", _stereo_tones(16000), 16000, "FLAC", "PCM_16")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AudioFileError, match=r"cut\.flac: audio data is corrupt or truncated \(libsndfile: .+\)"):
        read_call_audio(cut)


def test_flac_cut_inside_its_header_is_not_audio(tmp_path):
    """A FLAC file cut inside its header raises AudioFileError as an unreadable audio file."""
    path = _write(tmp_path, "whole.flac", _stereo_tones(16000), 16000, "FLAC", "PCM_16")
    cut = tmp_path / "stub.flac"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(AudioFileError, match=r"stub\.flac: not a readable audio file"):
        read_call_audio(cut)


def test_empty_file_is_rejected(tmp_path):
    """A zero-byte file raises AudioFileError saying it is empty."""
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav: is empty \(0 bytes\)"):
        read_call_audio(path)


def test_wav_without_frames_is_rejected(tmp_path):
    """A valid WAV header with no sample frames raises AudioFileError saying there are no frames."""
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros((0, 2), dtype=np.int16), 8000, subtype="PCM_16")
    with pytest.raises(AudioFileError, match=r"silent\.wav: has no audio frames"):
        read_call_audio(path)


def test_text_file_named_mp3_is_not_audio(tmp_path):
    """A text file with an .mp3 name raises AudioFileError as an unreadable audio file."""
    path = tmp_path / "notes.mp3"
    path.write_text("this is a call transcript, not audio\n" * 40)
    with pytest.raises(AudioFileError, match=r"notes\.mp3: not a readable audio file"):
        read_call_audio(path)


@pytest.mark.parametrize("channels", [3, 6])
def test_more_than_two_channels_is_rejected(tmp_path, channels):
    """A WAV with more than two channels raises AudioFileError giving the channel count."""
    path = tmp_path / "surround.wav"
    soundfile.write(path, np.zeros((800, channels), dtype=np.int16), 8000, subtype="PCM_16")
    expected = rf"surround\.wav: has {channels} channels; expected mono or stereo \(customer, agent\)"
    with pytest.raises(AudioFileError, match=expected):
        read_call_audio(path)


def test_missing_path_is_reported_as_not_found(tmp_path):
    """A path that does not exist raises AudioFileError saying the file was not found."""
    with pytest.raises(AudioFileError, match=r"^gone\.wav: file not found$"):
        read_call_audio(tmp_path / "gone.wav")


def test_directory_is_not_an_audio_file(tmp_path):
    """A directory path raises AudioFileError saying it is a directory."""
    folder = tmp_path / "calls.wav"
    folder.mkdir()
    with pytest.raises(AudioFileError, match=r"calls\.wav: is a directory"):
        read_call_audio(folder)


def test_audio_file_error_is_an_invalid_argument(tmp_path):
    """AudioFileError is an InvalidArgument, so transports map it to the invalid-argument status."""
    with pytest.raises(InvalidArgument) as info:
        read_call_audio(str(tmp_path / "missing.flac"))
    assert isinstance(info.value, AudioFileError)
    assert info.value.kind == "invalid_argument"
    assert not isinstance(info.value, soundfile.SoundFileError)
