"""Loading the configured emotion model (funasr checkpoint or the benchmark-only constant model); torch and
funasr are imported inside, so importing this module costs nothing."""

from __future__ import annotations

import logging

from service.config import ServiceConfig
from service.inference.base import EmotionModel

log = logging.getLogger(__name__)


def load_emotion_model(config: ServiceConfig) -> EmotionModel:
    """Load the configured emotion2vec model through funasr (blocking, seconds to minutes), behind the speech check
    when it is on."""
    from service.inference.constant import BUILTIN_CONSTANT, ConstantEmotionModel
    from service.inference.emotion2vec import Emotion2vecModel

    inf = config.inference
    if inf.model == BUILTIN_CONSTANT:
        log.warning("running with the benchmark-only constant model: no emotion is recognised")
        model: EmotionModel = ConstantEmotionModel()
    else:
        model = Emotion2vecModel.load(inf.model, hub=inf.hub, device=inf.device, threads=inf.threads, bucket_ms=inf.bucket_ms,
                                      precision=inf.precision, warm_lengths_ms=_warm_lengths(config))
    if inf.speech_check > 0:
        from service.inference.speech import SpeechCheckedModel, SpeechDetector

        model = SpeechCheckedModel(model, SpeechDetector(inf.device, refresh_s=inf.speech_check_refresh_ms / 1000),
                                   inf.speech_check)
    return model


def warm_up_model(model: EmotionModel, config: ServiceConfig) -> None:
    """Before readiness: lazy initialisation, CUDA kernels per length bucket, and the CUDA graphs of the
    batch sizes the batcher will form (blocking)."""
    model.warm_up(max_batch=config.inference.effective_max_batch, cuda_graphs=config.inference.cuda_graphs)


def _warm_lengths(config: ServiceConfig) -> tuple[int, ...]:
    """Window lengths the service will send, one per length bucket, for warm-up before readiness."""
    w, inf = config.windows, config.inference
    longest = w.window_ms + (w.context_ms if w.scoring == "incremental" else 0)
    return tuple(range(inf.bucket_ms, longest + inf.bucket_ms, inf.bucket_ms))
