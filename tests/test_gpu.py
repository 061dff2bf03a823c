"""The CUDA path: fp32/fp16/bf16 scores against the CPU, padded batches, warm-up, one copy per pass and CUDA graphs
(replay against eager, padding to a captured size, fallback for shapes not captured). Skipped without CUDA."""

import numpy as np
import pytest
import torch

from clients.wavfile import read_wav
from service.audio.resample import to_model_input
from service.inference.emotion2vec import Emotion2vecModel
from service.inference.graphs import Shape
from tests.conftest import CUSTOMER_WAV

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SECOND = 16000
LENGTHS_MS = (500, 1000, 1500, 3000)
# graph against eager on the same shape: the same kernels, so equal in fp32 and within 1e-3 in half precision
REPLAY_TOLERANCE = {"fp32": 0.0, "bf16": 1e-3, "fp16": 1e-3}
# a padded pass against unpadded ones: other shapes may pick other kernels (other rounding)
PADDING_TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 1e-2}


@pytest.fixture(scope="module")
def windows():
    audio = to_model_input(read_wav(str(CUSTOMER_WAV)).samples[:, 0], 16000)
    return [audio[:n] for n in (8000, 24000, 48000, len(audio))]


def speech(*lengths):
    """Windows of the customer fixture's speech (16 kHz) of the given lengths, from different offsets."""
    audio = to_model_input(read_wav(str(CUSTOMER_WAV)).samples[:, 0], 16000)
    audio = np.tile(audio, 1 + max(lengths) // len(audio) + 1)
    return [np.ascontiguousarray(audio[i * 4000 : i * 4000 + n]) for i, n in enumerate(lengths)]


def graph_model(path, precision, max_batch=8):
    model = Emotion2vecModel.load(path, device="cuda", precision=precision, warm_lengths_ms=LENGTHS_MS)
    model.warm_up(max_batch=max_batch, cuda_graphs=True)
    return model


def max_diff(got, expected):
    return max(max(float(np.abs(a.scores - b.scores).max()), float(np.abs(a.frame_logits - b.frame_logits).max()))
               for a, b in zip(got, expected))


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
    gpu = Emotion2vecModel.load(test_models["random"], device="cuda", precision="fp32", bucket_ms=60000)
    together = gpu.score_batch(windows)
    for audio, batched in zip(windows, together):
        alone = gpu.score_batch([audio])[0]
        assert np.abs(alone.scores - batched.scores).max() < 1e-3
    assert gpu.padded_samples > 0


def test_auto_precision_is_bf16_on_cuda(test_models):
    """Without a precision, a CUDA model runs bf16 autocast (fp16 on GPUs without native bf16)."""
    model = Emotion2vecModel.load(test_models["random"], device="cuda")
    assert model.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")


def test_one_device_to_host_copy_per_pass_on_cuda(test_models, windows):
    """Windows of one length bucket cost one device-to-host copy, and their results are each window's own."""
    model = Emotion2vecModel.load(test_models["random"], device="cuda", precision="fp32", bucket_ms=60000)
    model.return_embeddings = True
    before = model.host_copies
    together = model.score_batch(windows)
    assert model.host_copies == before + 1
    for audio, result in zip(windows, together):
        assert result.frame_logits.shape[0] == model.frames_for(len(audio)) and result.embedding.shape == (64,)
        assert np.allclose(result.scores.sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_warm_up_captures_a_graph_per_bucket_and_batch_size(test_models, precision):
    """warm_up(cuda_graphs=True) captures every (length bucket, batch size) shape and its self-check passes."""
    model = graph_model(test_models["random"], precision)
    report = model.graph_report
    print(f"capture report ({precision}): {report}")
    assert report["backend"] == "cuda" and report["self_check"] == "passed"
    assert report["captured"] == len(LENGTHS_MS) * 4 and report["failed"] == {} and report["skipped"] == 0
    assert model.graphs.active


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_graph_replay_equals_the_eager_forward_of_the_same_shape(test_models, precision):
    """A replay gives the eager forward's packed output on the same static input: equal in fp32, within 1e-3 in bf16."""
    model = graph_model(test_models["random"], precision)
    shape = Shape(SECOND, 4)
    entry = model.graphs.get(shape)
    rows = speech(SECOND, 12000, 9000)
    replayed, _ = model._run_static(entry, shape, rows)
    replayed = replayed.copy()
    eager = model._static_forward(entry.source, entry.sizes, False, None).float().cpu().numpy()
    diff = float(np.abs(replayed - eager).max())
    if precision == "fp32":
        assert np.array_equal(replayed, eager), diff
    else:
        assert diff <= REPLAY_TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graph_scores_equal_eager_scores(test_models, precision):
    """score_batch through the graphs equals score_batch eagerly (graphs released) on mixed speech windows."""
    model = graph_model(test_models["random"], precision)
    groups = [speech(SECOND, SECOND, 12000), speech(3 * SECOND, 44000), speech(8000), speech(*([SECOND] * 8))]
    with_graphs = [model.score_batch(g) for g in groups]
    assert model.graphs.replays == len(groups)
    model.graphs.release()
    for group, got in zip(groups, with_graphs):
        assert max_diff(got, model.score_batch(group)) <= PADDING_TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_batch_padded_to_a_captured_size_equals_it_unpadded(test_models, precision):
    """Three windows replayed in the 4-row shape (one dummy row) score as each window alone and unpadded."""
    model = graph_model(test_models["random"], precision)
    rows = speech(SECOND, 12000, 9000)
    padded = model.score_batch(rows)
    assert model.graphs.replays == 1
    model.graphs.release()
    alone = [model.score_batch([r])[0] for r in rows]
    assert max_diff(padded, alone) <= PADDING_TOLERANCE[precision]


def test_shapes_not_captured_run_eagerly_on_cuda(test_models):
    """A window longer than every bucket and a batch larger than the largest captured size run eagerly and correctly."""
    model = graph_model(test_models["random"], "fp32", max_batch=4)
    reference = Emotion2vecModel.load(test_models["random"], device="cuda", precision="fp32")
    for group in (speech(4 * SECOND), speech(*([SECOND] * 6))):
        assert max_diff(model.score_batch(group), reference.score_batch(group)) <= PADDING_TOLERANCE["fp32"]
    assert model.graphs.fallbacks["too_long"] == 1 and model.graphs.fallbacks["too_many"] == 1
    assert model.graphs.replays == 0


def test_an_eager_pass_that_grows_funasrs_alibi_cache_leaves_the_graphs_right(test_models):
    """funasr replaces its alibi cache when an eager pass needs a bigger one; graphs captured before still replay right."""
    model = graph_model(test_models["random"], "fp32", max_batch=4)
    rows = speech(SECOND, 12000)
    before = model.score_batch(rows)
    model.score_batch(speech(*([5 * SECOND] * 8)))  # eager, equal lengths: funasr's own forward, a bigger cache
    junk = [torch.full((1 << 18,), float("nan"), device="cuda") for _ in range(256)]  # reuse freed blocks
    torch.cuda.synchronize()
    assert max_diff(model.score_batch(rows), before) == 0.0
    assert model.graphs.replays == 2 and len(junk) == 256


def test_the_speech_check_on_cuda_carries_channel_state_as_on_the_cpu():
    """The speech detector on CUDA, channels batched together with their states on the device, gives each window the
    share the CPU gives (within one chunk of a window, where a probability sits at the threshold)."""
    from service.inference.base import StreamSpan
    from service.inference.speech import SpeechDetector

    audio = np.concatenate(speech(4 * SECOND, 4 * SECOND))
    windows = [(audio[i:i + SECOND], i) for i in range(0, len(audio) - SECOND + 1, SECOND // 2)]
    shares = {}
    for device in ("cpu", "cuda"):
        detector = SpeechDetector(device)
        got = []
        for k in range(0, len(windows), 2):  # two channels of the same audio in each batch
            batch = windows[k:k + 2]
            audios = [w for w, _ in batch] * 2
            spans = [StreamSpan(c, start) for c in ("a", "b") for _, start in batch]
            got.append(detector.speech_shares(audios, spans))
        shares[device] = np.array([x for batch in got for x in batch])
    assert np.abs(shares["cuda"] - shares["cpu"]).max() <= 1 / 31 + 1e-9
