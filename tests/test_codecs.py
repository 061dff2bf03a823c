"""G.711 and PCM16 decoding, stereo split, and chunk validation."""

import audioop  # deprecated but present on 3.11: an independent reference implementation

import numpy as np
import pytest

from service.audio.codecs import ALAW_TO_PCM16, MULAW_TO_PCM16, decode, encode, encode_alaw, encode_mulaw
from service.domain import AudioFormat, Encoding, Role
from service.errors import InvalidArgument

MONO = (Role.CUSTOMER,)
STEREO = (Role.CUSTOMER, Role.AGENT)


def test_mulaw_table_matches_reference_for_every_code():
    """Each of the 256 mu-law codes expands to the same value as CPython's audioop."""
    reference = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2")
    assert np.array_equal(MULAW_TO_PCM16, reference)


def test_alaw_table_matches_reference_for_every_code():
    """Each of the 256 A-law codes expands to the same value as CPython's audioop."""
    reference = np.frombuffer(audioop.alaw2lin(bytes(range(256)), 2), dtype="<i2")
    assert np.array_equal(ALAW_TO_PCM16, reference)


@pytest.mark.parametrize("encoder,table", [(encode_mulaw, MULAW_TO_PCM16), (encode_alaw, ALAW_TO_PCM16)])
def test_encoding_a_decoded_code_point_is_lossless(encoder, table):
    """Encoding the decoded value of every code point gives back a code with the same value."""
    codes = np.frombuffer(encoder(table), dtype=np.uint8)
    assert np.array_equal(table[codes], table)


@pytest.mark.parametrize("encoder,table", [(encode_mulaw, MULAW_TO_PCM16), (encode_alaw, ALAW_TO_PCM16)])
def test_encoder_error_is_no_worse_than_reference(encoder, table):
    """Nearest-code encoding of random speech-level samples is at least as accurate as audioop's."""
    x = (np.random.default_rng(0).normal(0, 6000, 20000)).clip(-32768, 32767).astype(np.int16)
    ours = np.abs(table[np.frombuffer(encoder(x), np.uint8)].astype(int) - x).mean()
    ref_bytes = audioop.lin2ulaw(x.tobytes(), 2) if table is MULAW_TO_PCM16 else audioop.lin2alaw(x.tobytes(), 2)
    reference = np.abs(table[np.frombuffer(ref_bytes, np.uint8)].astype(int) - x).mean()
    assert ours <= reference


def test_pcm16_stereo_is_split_into_channels():
    """Interleaved little-endian stereo PCM16 decodes to (frames, 2) with each channel intact."""
    left = np.arange(0, 100, dtype=np.int16)
    right = -np.arange(0, 100, dtype=np.int16) * 300
    data = np.stack([left, right], axis=1).astype("<i2").tobytes()
    frames = decode(AudioFormat(Encoding.PCM16LE, 8000, STEREO), data)
    assert frames.shape == (100, 2)
    assert np.array_equal(frames[:, 0], left) and np.array_equal(frames[:, 1], right)


@pytest.mark.parametrize("encoding", [Encoding.MULAW, Encoding.ALAW])
def test_g711_stereo_roundtrip(encoding):
    """A stereo G.711 chunk decodes to the two channels that were encoded."""
    rng = np.random.default_rng(1)
    pcm = rng.integers(-20000, 20000, size=(160, 2)).astype(np.int16)
    frames = decode(AudioFormat(encoding, 8000, STEREO), encode(encoding, pcm))
    table = MULAW_TO_PCM16 if encoding is Encoding.MULAW else ALAW_TO_PCM16
    expected = table[np.frombuffer(encode(encoding, pcm), np.uint8)].reshape(-1, 2)
    assert np.array_equal(frames, expected)
    assert np.abs(frames.astype(int) - pcm).max() < 1100  # G.711 step at the top segment is 1024


@pytest.mark.parametrize(
    "encoding,channels,size",
    [(Encoding.PCM16LE, 1, 321), (Encoding.PCM16LE, 2, 642), (Encoding.MULAW, 2, 161)],
)
def test_partial_sample_frame_is_rejected(encoding, channels, size):
    """A chunk that is not a whole number of sample frames is refused with a message naming the frame size."""
    fmt = AudioFormat(encoding, 8000, STEREO[:channels])
    with pytest.raises(InvalidArgument, match=f"{fmt.frame_bytes}-byte sample frames"):
        decode(fmt, b"\x00" * size)


def test_audio_format_validation_names_the_field():
    """Unsupported rate, channel count and duplicated roles are refused with the field name."""
    with pytest.raises(InvalidArgument, match="sample_rate_hz"):
        AudioFormat(Encoding.PCM16LE, 44100, MONO)
    with pytest.raises(InvalidArgument, match="channels"):
        AudioFormat(Encoding.PCM16LE, 8000, (Role.CUSTOMER, Role.AGENT, Role.AGENT))
    with pytest.raises(InvalidArgument, match="different role"):
        AudioFormat(Encoding.PCM16LE, 8000, (Role.AGENT, Role.AGENT))
