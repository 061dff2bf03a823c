"""emotion2vec through funasr: real loading of generated test checkpoints, scores equal to funasr's own."""

import os
import shutil

import numpy as np
import pytest
import torch

from clients.wavfile import read_wav
from service.audio.channel import ChannelPipeline
from service.audio.resample import to_model_input
from service.config import VadConfig, WindowConfig
from service.domain import Role
from service.errors import ModelLoadError
from service.inference.base import softmax_mean
from service.inference.emotion2vec import Emotion2vecModel, _layer_norm, resolve_precision
from service.inference.testmodel import PLUS_TOKENS, make_test_model, model_conf
from tests.conftest import CALL_WAV, CUSTOMER_WAV

LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")


@pytest.fixture(scope="module")
def random_model(test_models):
    return Emotion2vecModel.load(test_models["random"], device="cpu", threads=1)


@pytest.fixture(scope="module")
def funasr_automodel(test_models):
    from funasr import AutoModel

    return AutoModel(model=test_models["random"], device="cpu", disable_update=True, disable_pbar=True, ncpu=1,
                     log_level="ERROR")


@pytest.fixture(scope="module")
def service_windows():
    """The 16 kHz windows the service scores in full scoring for the fixtures (8 kHz stereo call and 16 kHz mono)."""
    windows = []
    call = read_wav(str(CALL_WAV))
    customer = read_wav(str(CUSTOMER_WAV))
    for samples, rate in ((np.ascontiguousarray(call.samples[:, 0]), call.sample_rate), (customer.samples[:, 0], customer.sample_rate)):
        pipeline = ChannelPipeline(Role.CUSTOMER, rate, VadConfig(), WindowConfig(scoring="full"))
        cut = pipeline.push(samples, 0.0) + pipeline.flush(0.0)
        windows.extend(to_model_input(w.samples, w.sample_rate) for w in cut)
    return windows


def test_checkpoint_loads_through_funasr_automodel(random_model, test_models):
    """The generated checkpoint loads via funasr AutoModel with English labels in the model's token order."""
    assert random_model.labels == LABELS
    assert random_model.tokens == PLUS_TOKENS
    assert random_model.name.startswith("TEST MODEL")
    assert sorted(os.listdir(test_models["random"])) == ["callpulse_test_model.json", "config.yaml", "model.pt", "tokens.txt"]


def test_window_scores_equal_funasr_generate(random_model, funasr_automodel, service_windows):
    """For every window the service scores, its scores equal funasr generate(granularity='utterance') within 1e-4."""
    assert len(service_windows) >= 10
    ours = random_model.score_batch(service_windows)
    worst = 0.0
    for audio, result in zip(service_windows, ours):
        reference = funasr_automodel.generate(audio, granularity="utterance", extract_embedding=False)[0]
        assert [l.split("/")[-1] for l in reference["labels"]] == [t.split("/")[-1] for t in PLUS_TOKENS]
        worst = max(worst, float(np.abs(np.asarray(reference["scores"]) - result.scores).max()))
    assert worst < 1e-4


def test_frame_logits_reproduce_window_scores(random_model, service_windows):
    """softmax(mean(frame logits)) of the whole window is the window's score; frames come at 50 Hz."""
    audio = service_windows[0]
    result = random_model.score_batch([audio])[0]
    assert np.allclose(softmax_mean(result.frame_logits), result.scores, atol=1e-6)
    assert abs(result.frame_logits.shape[0] - len(audio) / 320) <= 1
    assert result.frame_logits.shape[1] == len(LABELS)


def test_batched_items_equal_their_scores_alone(random_model, service_windows):
    """Windows scored in one batch get the same scores as when scored one at a time (within 1e-4)."""
    batch = random_model.score_batch(service_windows)
    for audio, together in zip(service_windows, batch):
        alone = random_model.score_batch([audio])[0]
        assert np.abs(alone.scores - together.scores).max() < 1e-4


def test_padded_batch_of_mixed_lengths_equals_each_window_alone(test_models, service_windows):
    """Windows of different lengths padded into one forward pass score as they do alone (within 1e-4)."""
    model = Emotion2vecModel.load(test_models["random"], threads=1, bucket_ms=60000)
    lengths = sorted({len(w) for w in service_windows})
    assert len(lengths) >= 3
    mixed = [next(w for w in service_windows if len(w) == n) for n in lengths]
    before = model.padded_samples
    together = model.score_batch(mixed)
    assert model.padded_samples > before and model.largest_forward == len(mixed)
    for audio, batched in zip(mixed, together):
        alone = model.score_batch([audio])[0]
        assert batched.frame_logits.shape == alone.frame_logits.shape
        assert np.abs(alone.scores - batched.scores).max() < 1e-4
        assert np.abs(alone.frame_logits - batched.frame_logits).max() < 1e-4


def per_window_reference(model, windows):
    """What the model returned before one copy per pass: each window's scores, frame logits and embedding
    sliced out of the batch's device tensors and copied on their own."""
    rows = [_layer_norm(w) for w in windows] if model._normalize else list(windows)
    lengths = [len(r) for r in rows]
    source = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(r) for r in rows], batch_first=True)
    with torch.inference_mode():
        if min(lengths) == max(lengths):
            feats = model._net.extract_features(source, padding_mask=None)["x"]
            valid = [feats.shape[1]] * len(rows)
        else:
            valid = [model.frames_for(n) for n in lengths]
            feats = model._padded_features(source, torch.tensor(valid))
        logits = model._net.proj(feats).index_select(-1, model._keep_index).float()
        out = []
        for i, n in enumerate(valid):
            item = logits[i, :n]
            out.append((torch.softmax(item.mean(dim=0), dim=-1).cpu().numpy(), item.cpu().numpy(),
                        feats[i, :n].float().mean(dim=0).cpu().numpy()))
    return out


@pytest.mark.parametrize("bucket_ms", [500, 60000])
def test_one_copy_per_pass_returns_what_per_window_copies_returned(test_models, service_windows, bucket_ms):
    """Scoring with one device-to-host copy per pass gives each window exactly the frame logits and embedding of
    per-window copies, and the same scores (bit for bit without padding, within 1e-6 with it)."""
    model = Emotion2vecModel.load(test_models["random"], threads=1, bucket_ms=bucket_ms)
    model.return_embeddings = True
    for start in range(0, len(service_windows), 4):
        group = service_windows[start : start + 4]
        if bucket_ms == 500:
            group = [w for w in group if len(w) == len(group[0])]  # one bucket, no padding
        before = model.host_copies
        results = model.score_batch(group)
        assert model.host_copies == before + 1
        for result, (scores, logits, embedding) in zip(results, per_window_reference(model, group)):
            assert np.array_equal(result.frame_logits, logits)
            assert np.array_equal(result.embedding, embedding)
            if bucket_ms == 500:
                assert np.array_equal(result.scores, scores)
            else:
                assert np.abs(result.scores - scores).max() <= 1e-6


def test_one_copy_per_length_bucket(random_model, service_windows):
    """Windows in two length buckets cost two passes and two device-to-host copies, whatever their number."""
    short = [w for w in service_windows if 8000 < len(w) <= 16000][:2]  # buckets are (k-1, k] x 500 ms
    long = [w for w in service_windows if 40000 < len(w) <= 48000][:3]
    assert len(short) == 2 and len(long) == 3
    before = random_model.host_copies
    random_model.score_batch(short + long)
    assert random_model.host_copies == before + 2


def test_precision_auto_is_fp32_on_the_cpu_and_bf16_on_cuda(random_model):
    """auto resolves to fp32 on the CPU and to bf16 on CUDA (fp16 without native bf16); half precision on the CPU
    and unknown values are refused."""
    assert random_model.precision == "fp32"
    assert resolve_precision("auto", cuda=False) == "fp32"
    assert resolve_precision("auto", cuda=True, bf16_supported=lambda: True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_supported=lambda: False) == "fp16"
    assert resolve_precision("fp32", cuda=True) == "fp32"
    with pytest.raises(ModelLoadError, match="only supported on CUDA"):
        resolve_precision("bf16", cuda=False)
    with pytest.raises(ModelLoadError, match="precision must be one of"):
        resolve_precision("fp64", cuda=True)


def test_bad_item_fails_alone(random_model, service_windows):
    """A NaN, a too-short and a wrongly typed window each get their own error; the others are scored."""
    good = service_windows[0]
    nan = good.copy()
    nan[100] = np.nan
    items = [good, nan, np.zeros(100, np.float32), good.astype(np.float64), good]
    results = random_model.score_batch(items)
    assert isinstance(results[1], ValueError) and "NaN" in str(results[1])
    assert isinstance(results[2], ValueError) and "receptive field" in str(results[2])
    assert isinstance(results[3], ValueError) and "float32" in str(results[3])
    assert np.allclose(results[0].scores, results[4].scores)


@pytest.mark.parametrize("favor", ["angry", "neutral"])
def test_favoured_test_model_always_picks_its_label(test_models, favor):
    """A --favor checkpoint gives its label > 0.99 on speech, silence and noise alike."""
    model = Emotion2vecModel.load(test_models[favor], threads=1)
    rng = np.random.default_rng(3)
    inputs = [np.zeros(16000, np.float32), rng.normal(0, 0.3, 24000).astype(np.float32),
              to_model_input(read_wav(str(CUSTOMER_WAV)).samples[:, 0], 16000)]
    for result in model.score_batch(inputs):
        assert model.labels[int(np.argmax(result.scores))] == favor
        assert result.scores.max() > 0.99
    assert f"favor={favor}" in model.name


def test_missing_files_are_reported(tmp_path):
    """A directory without funasr's files is refused with the names of the missing files."""
    (tmp_path / "config.yaml").write_text("model: Emotion2vec\n")
    with pytest.raises(ModelLoadError, match="model.pt, tokens.txt"):
        Emotion2vecModel.load(str(tmp_path))


def test_incomplete_checkpoint_is_refused(test_models, tmp_path):
    """A checkpoint missing parameters is refused instead of running with random weights."""
    target = tmp_path / "broken"
    shutil.copytree(test_models["random"], target)
    state = torch.load(target / "model.pt", map_location="cpu")
    del state["model"]["blocks.0.attn.qkv.weight"]
    torch.save(state, target / "model.pt")
    with pytest.raises(ModelLoadError, match="lacks 1 parameters"):
        Emotion2vecModel.load(str(target))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_request_without_cuda_is_an_error(test_models):
    """Asking for CUDA where there is none fails loudly instead of silently running on the CPU."""
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        Emotion2vecModel.load(test_models["random"], device="cuda")


def test_unknown_favor_label_is_refused(tmp_path):
    """make-test-model refuses a --favor label the model does not have."""
    with pytest.raises(ValueError, match="not a label"):
        make_test_model(str(tmp_path / "m"), favor="furious")


def test_sizes_match_the_published_models():
    """tiny is a few hundred thousand parameters; base has emotion2vec_plus_base's ~94 M."""
    from funasr.models.emotion2vec.model import Emotion2vec

    tiny = sum(p.numel() for p in Emotion2vec(model_conf=model_conf("tiny"), vocab_size=9).parameters())
    base = sum(p.numel() for p in Emotion2vec(model_conf=model_conf("base"), vocab_size=9).parameters())
    assert 100_000 < tiny < 500_000
    assert 90_000_000 < base < 97_000_000


def test_builtin_constant_model_is_named_and_recognises_nothing():
    """`--model builtin:constant` loads the benchmark-only model, which says so and returns uniform scores."""
    from service.app import load_emotion_model
    from service.config import InferenceConfig, ServiceConfig

    model = load_emotion_model(ServiceConfig(inference=InferenceConfig(model="builtin:constant", speech_check=0.0)))
    assert model.name.startswith("CONSTANT MODEL") and "benchmark only" in model.name
    result = model.score_batch([np.zeros(16000, np.float32)])[0]
    assert np.allclose(result.scores, 1 / len(model.labels)) and result.frame_logits.shape == (49, len(model.labels))
