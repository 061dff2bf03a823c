"""CUDA graph bookkeeping on the CPU: captured sizes, padding to a captured shape, fallbacks, capture budget and
failures (fake captures), and the model's static-shape path with an emulated graph (an eager replay)."""

import logging

import numpy as np
import pytest

from service.errors import ModelLoadError
from service.inference.emotion2vec import Emotion2vecModel
from service.inference.graphs import GraphCache, Shape, capture_sizes

SECOND = 16000


def fake_capture(order=None, fail=()):
    """A capture that records the order of shapes and raises for those in `fail`."""

    def capture(shape):
        if order is not None:
            order.append(shape)
        if shape in fail:
            raise RuntimeError(f"cannot capture {shape}")
        return f"graph {shape.samples}x{shape.batch}"

    return capture


def eager_reasons(caplog):
    return [r.getMessage() for r in caplog.records if "runs eagerly instead of in a CUDA graph" in r.getMessage()]


def test_capture_sizes_are_powers_of_two_up_to_max_batch():
    """Captured batch sizes are the powers of two below max_batch plus max_batch itself, never above 256."""
    assert capture_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert capture_sizes(48) == (1, 2, 4, 8, 16, 32, 48)
    assert capture_sizes(1) == (1,)
    assert capture_sizes(1000) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert capture_sizes(0) == ()


def test_a_group_pads_to_the_smallest_captured_length_and_batch_size():
    """A group runs in the smallest captured batch size and length that hold it."""
    cache = GraphCache(lengths=(SECOND, SECOND // 2, 3 * SECOND), sizes=(1, 2, 4, 8))
    assert cache.shape_for(3, 12000) == Shape(SECOND, 4)
    assert cache.shape_for(8, SECOND) == Shape(SECOND, 8)
    assert cache.shape_for(1, 400) == Shape(SECOND // 2, 1)
    assert cache.shape_for(5, SECOND + 1) == Shape(3 * SECOND, 8)
    assert cache.shape_for(9, SECOND) is None and cache.shape_for(1, 3 * SECOND + 1) is None
    cache.capture(fake_capture(), budget_s=60)
    assert cache.select(3, 12000) == (Shape(SECOND, 4), f"graph {SECOND}x4")
    assert cache.replays == 1


def test_capture_goes_largest_first_and_reports_every_shape():
    """Shapes are captured longest and largest first (the first capture sizes the shared pool); the report counts them."""
    order = []
    cache = GraphCache(lengths=(SECOND, 3 * SECOND), sizes=(1, 2, 4))
    report = cache.capture(fake_capture(order), budget_s=60)
    assert order == [Shape(3 * SECOND, 4), Shape(3 * SECOND, 2), Shape(3 * SECOND, 1), Shape(SECOND, 4),
                     Shape(SECOND, 2), Shape(SECOND, 1)]
    assert report["shapes"] == 6 and report["captured"] == 6 and report["failed"] == {} and report["skipped"] == 0
    assert cache.active and len(cache.captured) == 6


def test_groups_beyond_the_captured_shapes_run_eagerly_each_reason_logged_once(caplog):
    """Too many windows, a window too long, or another output variant run eagerly; each reason is counted and logged once."""
    cache = GraphCache(lengths=(SECOND,), sizes=(1, 2, 4), variant=False)
    cache.capture(fake_capture(), budget_s=60)
    with caplog.at_level(logging.INFO, logger="service.inference.graphs"):
        for _ in range(3):
            assert cache.select(5, SECOND, variant=False) is None
            assert cache.select(1, SECOND + 1, variant=False) is None
            assert cache.select(1, SECOND, variant=True) is None
    assert cache.fallbacks == {"too_many": 3, "too_long": 3, "variant": 3}
    messages = eager_reasons(caplog)
    assert len(messages) == 3
    assert any("more windows than the largest captured batch" in m for m in messages)
    assert any("longer than every captured length" in m for m in messages)
    assert cache.replays == 0


def test_without_captured_graphs_everything_runs_eagerly_silently(caplog):
    """A cache with nothing captured (graphs off, or the CPU) sends every group to the eager path without logging."""
    cache = GraphCache()
    with caplog.at_level(logging.INFO, logger="service.inference.graphs"):
        assert cache.select(1, SECOND) is None
    assert cache.fallbacks == {"off": 1} and not eager_reasons(caplog) and not cache.active


def test_a_shape_whose_capture_fails_runs_eagerly_and_the_failure_is_logged_once(caplog):
    """A failed capture leaves that shape to the eager path; other shapes are still captured; one warning."""
    cache = GraphCache(lengths=(SECOND,), sizes=(1, 2, 4))
    with caplog.at_level(logging.WARNING, logger="service.inference.graphs"):
        report = cache.capture(fake_capture(fail={Shape(SECOND, 4), Shape(SECOND, 2)}), budget_s=60)
    assert report["captured"] == 1 and set(report["failed"]) == {f"{SECOND}x4", f"{SECOND}x2"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "capture failed" in warnings[0].getMessage()
    assert cache.select(3, SECOND) is None and cache.fallbacks["not_captured"] == 1
    assert cache.select(1, SECOND) == (Shape(SECOND, 1), f"graph {SECOND}x1")


def test_a_capture_that_keeps_failing_is_given_up():
    """After three failures in a row with nothing captured, the remaining shapes are not tried."""
    order = []
    cache = GraphCache(lengths=(SECOND, 2 * SECOND), sizes=(1, 2, 4))
    report = cache.capture(fake_capture(order, fail=set(GraphCache(lengths=(SECOND, 2 * SECOND), sizes=(1, 2, 4)).shapes())), budget_s=60)
    assert len(order) == 3 and report["captured"] == 0 and report["skipped"] == 3


def test_capture_stops_at_its_time_budget(caplog):
    """Shapes left when the budget is spent are skipped (eager), and the warm-up says so."""
    now = [0.0]

    def capture(shape):
        now[0] += 1.0
        return "graph"

    cache = GraphCache(lengths=(SECOND, 2 * SECOND), sizes=(1, 2, 4))
    with caplog.at_level(logging.WARNING, logger="service.inference.graphs"):
        report = cache.capture(capture, budget_s=2.5, clock=lambda: now[0])
    assert report["captured"] == 3 and report["skipped"] == 3 and report["seconds"] == 3.0
    assert any("budget" in r.getMessage() for r in caplog.records)


def test_a_replay_that_fails_drops_its_shape(caplog):
    """After a replay raised, that shape runs eagerly from then on, with one warning."""
    cache = GraphCache(lengths=(SECOND,), sizes=(1, 2))
    cache.capture(fake_capture(), budget_s=60)
    with caplog.at_level(logging.WARNING, logger="service.inference.graphs"):
        cache.fail(Shape(SECOND, 2), RuntimeError("boom"))
        cache.fail(Shape(SECOND, 1), RuntimeError("boom again"))
    assert [r.getMessage().count("boom") for r in caplog.records] == [1]
    assert cache.select(2, SECOND) is None and not cache.active
    assert "replay" in cache.report()["failed"][f"{SECOND}x2"]


# --- the model's static-shape path, with an emulated graph (the captured computation run eagerly) ---

LENGTHS_MS = (500, 1000, 1500, 3000)


@pytest.fixture(scope="module")
def eager_model(test_models):
    return Emotion2vecModel.load(test_models["random"], threads=1, warm_lengths_ms=LENGTHS_MS)


@pytest.fixture
def graph_model(test_models):
    model = Emotion2vecModel.load(test_models["random"], threads=1, warm_lengths_ms=LENGTHS_MS)
    report = model.capture_graphs(8, emulate=True)
    assert report["self_check"] == "passed"
    return model


def noise(*lengths, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, n).astype(np.float32) for n in lengths]


def assert_same(got, expected, tolerance=1e-5):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.frame_logits.shape == b.frame_logits.shape
        assert np.abs(a.scores - b.scores).max() <= tolerance
        assert np.abs(a.frame_logits - b.frame_logits).max() <= tolerance


def test_capture_builds_every_shape_and_reports_it(graph_model):
    """capture_graphs captures each warm-up length x each batch size up to max_batch and passes its self-check."""
    report = graph_model.graph_report
    assert report["lengths"] == [ms * 16 for ms in LENGTHS_MS] and report["sizes"] == [1, 2, 4, 8]
    assert report["captured"] == 16 and report["backend"].startswith("emulated") and report["seconds"] >= 0


def test_a_group_padded_to_a_captured_shape_scores_as_the_eager_path(graph_model, eager_model):
    """Five windows of one bucket run in the 8-row shape of that bucket; dummy rows are dropped and each window's
    scores and frame logits equal the eager path's."""
    windows = noise(SECOND, 12000, 9000, SECOND, 10000)
    before = graph_model.padded_samples
    got = graph_model.score_batch(windows)
    assert graph_model.graphs.replays == 1 and graph_model.largest_forward == 5
    assert graph_model.padded_samples - before == 8 * SECOND - sum(len(w) for w in windows)
    assert_same(got, eager_model.score_batch(windows))
    assert_same(got, [eager_model.score_batch([w])[0] for w in windows], tolerance=1e-4)


def test_shapes_that_were_not_captured_run_eagerly(graph_model, eager_model):
    """A window longer than every captured length and a group larger than the largest captured size run eagerly."""
    long_window = noise(4 * SECOND)
    assert_same(graph_model.score_batch(long_window), eager_model.score_batch(long_window))
    many = noise(*([SECOND] * 9), seed=2)
    assert_same(graph_model.score_batch(many), eager_model.score_batch(many))
    assert graph_model.graphs.fallbacks == {"too_long": 1, "too_many": 1} and graph_model.graphs.replays == 0


def test_embeddings_follow_the_captured_variant(graph_model, eager_model, test_models):
    """Asking for embeddings after a capture without them runs eagerly; graphs captured with them return them."""
    windows = noise(SECOND, 9000)
    graph_model.return_embeddings = True
    eager_model.return_embeddings = True
    try:
        got = graph_model.score_batch(windows)
        assert graph_model.graphs.fallbacks["variant"] == 1 and all(r.embedding is not None for r in got)
        graph_model.capture_graphs(4, emulate=True)
        replayed = graph_model.score_batch(windows)
        expected = eager_model.score_batch(windows)
    finally:
        eager_model.return_embeddings = False
    assert graph_model.graphs.replays == 1
    for a, b in zip(replayed, expected):
        assert np.abs(a.embedding - b.embedding).max() <= 1e-5


def test_a_shape_whose_capture_raises_runs_eagerly(test_models, eager_model, monkeypatch, caplog):
    """If capturing the 4-row shape of one bucket raises, three windows of that bucket still score (eagerly)."""
    model = Emotion2vecModel.load(test_models["random"], threads=1, warm_lengths_ms=LENGTHS_MS)
    original = model._static_forward

    def failing(source, sizes, embeddings, hold):
        if tuple(source.shape) == (4, SECOND):
            raise RuntimeError("capture broke")
        return original(source, sizes, embeddings, hold)

    monkeypatch.setattr(model, "_static_forward", failing)
    with caplog.at_level(logging.WARNING, logger="service.inference.graphs"):
        report = model.capture_graphs(8, emulate=True)
    assert report["captured"] == 15 and list(report["failed"]) == [f"{SECOND}x4"]
    windows = noise(SECOND, 12000, 9000)
    assert_same(model.score_batch(windows), eager_model.score_batch(windows))
    assert model.graphs.fallbacks["not_captured"] == 1
    assert sum("capture failed" in r.getMessage() for r in caplog.records) == 1


def test_a_replay_that_raises_falls_back_to_eager_for_good(graph_model, eager_model):
    """A replay error costs no window: the group is scored eagerly and the shape is not replayed again."""
    shape = Shape(SECOND, 4)

    def broken():
        raise RuntimeError("replay broke")

    graph_model.graphs.get(shape).replay = broken
    windows = noise(SECOND, 12000, 9000)
    assert_same(graph_model.score_batch(windows), eager_model.score_batch(windows))
    assert graph_model.graphs.get(shape) is None and "replay" in graph_model.graphs.failed[shape]
    assert_same(graph_model.score_batch(windows), eager_model.score_batch(windows))
    assert graph_model.graphs.fallbacks["replay_failed"] == 1 and graph_model.graphs.fallbacks["not_captured"] == 1


def test_graphs_whose_replay_disagrees_with_eager_are_dropped(test_models, monkeypatch, caplog):
    """The post-capture self-check compares a replay with the eager forward and drops every graph on a mismatch."""
    model = Emotion2vecModel.load(test_models["random"], threads=1, warm_lengths_ms=LENGTHS_MS)
    original = model._static_forward

    def wrong_on_replay(source, sizes, embeddings, hold):
        out = original(source, sizes, embeddings, hold)
        return out if hold is not None else out + 0.5  # captures are right, replays are off

    monkeypatch.setattr(model, "_static_forward", wrong_on_replay)
    with caplog.at_level(logging.ERROR, logger="service.inference.emotion2vec"):
        report = model.capture_graphs(4, emulate=True)
    assert report["self_check"].startswith("failed") and not model.graphs.active
    assert any("CUDA graphs disabled" in r.getMessage() for r in caplog.records)
    model.score_batch(noise(SECOND))
    assert model.graphs.fallbacks == {"off": 1}


def test_warm_up_on_the_cpu_captures_nothing(test_models):
    """On the CPU, warm_up with cuda_graphs does not capture, and a real capture is refused."""
    model = Emotion2vecModel.load(test_models["random"], threads=1, warm_lengths_ms=LENGTHS_MS)
    model.warm_up(max_batch=8, cuda_graphs=True)
    assert not model.graphs.active and model.graph_report is None
    with pytest.raises(ModelLoadError, match="need a CUDA device"):
        model.capture_graphs(8)


def test_normalisation_on_the_device_equals_the_host_layer_norm(test_models, eager_model):
    """The in-forward waveform normalisation (CUDA's) scores as the host numpy one, eagerly and in a graph."""
    model = Emotion2vecModel.load(test_models["random"], threads=1, warm_lengths_ms=LENGTHS_MS)
    model._normalize_on_device = True
    windows = noise(SECOND, 12000, 9000, 2 * SECOND, seed=5)
    windows = [w + 0.05 for w in windows]
    assert_same(model.score_batch(windows), eager_model.score_batch(windows), tolerance=1e-6)
    assert model.capture_graphs(4, emulate=True)["self_check"] == "passed"
    assert_same(model.score_batch(windows), eager_model.score_batch(windows), tolerance=1e-6)
    assert model.graphs.replays == 2


def test_the_service_warms_the_model_up_with_its_batch_size_and_graph_setting(redis_server, start_server):
    """App.start calls warm_up before readiness with the effective max batch and the cuda_graphs setting."""
    from dataclasses import replace

    from service.config import InferenceConfig
    from tests.conftest import service_config
    from tests.fakes import FakeEmotionModel

    class Recording(FakeEmotionModel):
        def warm_up(self, max_batch: int = 1, cuda_graphs: bool = False) -> None:
            self.warmed = (max_batch, cuda_graphs)

    for inference, expected in ((InferenceConfig(model="fake", max_batch=12), (12, True)),
                                (InferenceConfig(model="fake", cuda_graphs=False), (4, False))):
        model = Recording()
        config = replace(service_config(redis_server.url, "fake"), inference=inference)
        server = start_server(config, model=model)
        assert server.app.ready() and model.warmed == expected
