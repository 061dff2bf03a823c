"""The CUDA path: fp32/fp16/bf16 scores against the CPU, padded batches, warm-up. Skipped without CUDA."""

import numpy as np
import pytest
import torch

from service.audio.resample import to_model_input
from service.inference.emotion2vec import Emotion2vecModel
from clients.wavfile import read_wav
from tests.conftest import CUSTOMER_WAV

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def windows():
    audio = to_model_input(read_wav(str(CUSTOMER_WAV)).samples[:, 0], 16000)
    return [audio[:n] for n in (8000, 24000, 48000, len(audio))]


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 5e-2), ("bf16", 5e-2)])
def test_cuda_scores_match_the_cpu(test_models, windows, precision, tolerance):
    """Scores on CUDA (fp32 or autocast fp16/bf16) stay within tolerance of the CPU's fp32 scores."""
    cpu = Emotion2vecModel.load(test_models["random"], device="cpu", threads=1)
    gpu = Emotion2vecModel.load(test_models["random"], device="cuda", precision=precision, warm_lengths_ms=(500, 1000, 3500))
    gpu.warm_up()
    for expected, got in zip(cpu.score_batch(windows), gpu.score_batch(windows)):
        assert np.abs(expected.scores - got.scores).max() < tolerance


def test_cuda_padded_batch_equals_each_window_alone(test_models, windows):
    """On CUDA too, a padded batch of mixed lengths scores each window as it scores alone."""
    gpu = Emotion2vecModel.load(test_models["random"], device="cuda", bucket_ms=60000)
    together = gpu.score_batch(windows)
    for audio, batched in zip(windows, together):
        alone = gpu.score_batch([audio])[0]
        assert np.abs(alone.scores - batched.scores).max() < 1e-3
    assert gpu.padded_samples > 0
