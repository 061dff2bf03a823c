"""Composition root: configuration -> model -> batcher -> rules -> publisher -> sessions -> servers."""

from __future__ import annotations

import asyncio
import logging
import signal

from service import metrics
from service.alerts import AlertPublisher
from service.calls import CallRegistry
from service.config import ServiceConfig, config_as_dict
from service.inference.base import EmotionModel
from service.inference.batcher import InferenceBatcher
from service.rules import RuleEngine, load_rules
from service.session import CallSession, SessionContext
from service.transport.grpc_server import GrpcServer
from service.transport.ws_server import WebSocketServer

log = logging.getLogger(__name__)


def load_emotion_model(config: ServiceConfig) -> EmotionModel:
    """Load the configured emotion2vec model through funasr (blocking, seconds to minutes)."""
    from service.inference.constant import BUILTIN_CONSTANT, ConstantEmotionModel
    from service.inference.emotion2vec import Emotion2vecModel

    inf = config.inference
    if inf.model == BUILTIN_CONSTANT:
        log.warning("running with the benchmark-only constant model: no emotion is recognised")
        return ConstantEmotionModel()
    return Emotion2vecModel.load(inf.model, hub=inf.hub, device=inf.device, threads=inf.threads, bucket_ms=inf.bucket_ms,
                                 precision=inf.precision, warm_lengths_ms=_warm_lengths(config))


def _warm_lengths(config: ServiceConfig) -> tuple[int, ...]:
    """Window lengths the service will send, one per length bucket, for warm-up before readiness."""
    w, inf = config.windows, config.inference
    longest = w.window_ms + (w.context_ms if w.scoring == "incremental" else 0)
    return tuple(range(inf.bucket_ms, longest + inf.bucket_ms, inf.bucket_ms))


class App:
    """Builds and runs the service. Nothing heavy happens until `start`."""

    def __init__(self, config: ServiceConfig, model: EmotionModel | None = None) -> None:
        self.config = config
        self._given_model = model
        self.model: EmotionModel | None = None
        self.batcher: InferenceBatcher | None = None
        self.publisher: AlertPublisher | None = None
        self.calls: CallRegistry | None = None
        self.grpc: GrpcServer | None = None
        self.ws: WebSocketServer | None = None
        self.rule_engine: RuleEngine | None = None
        self.grpc_port = 0
        self.ws_port = -1
        self.metrics_port = -1

    async def start(self) -> None:
        """Bind the servers (not ready), load rules and the model, then accept calls."""
        cfg = self.config
        log.info("starting with %s", config_as_dict(cfg))
        rules = load_rules(cfg.rules_path)
        self.rule_engine = RuleEngine(rules)
        self.publisher = AlertPublisher(cfg.redis)
        await self.publisher.start()
        self.calls = CallRegistry(cfg.server.max_calls, self._new_session)
        self.grpc = GrpcServer(cfg.server, self.calls, cfg.ingest.idle_timeout_s)
        self.grpc_port = await self.grpc.start()
        if cfg.server.ws_port >= 0:
            self.ws = WebSocketServer(cfg.server, self.calls, cfg.ingest, ready=lambda: bool(self.calls and self.calls.accepting))
            self.ws_port = await self.ws.start()
        if cfg.server.metrics_port >= 0:
            self.metrics_port = metrics.serve(cfg.server.metrics_port, cfg.server.host)
        loop = asyncio.get_running_loop()
        model = self._given_model or await loop.run_in_executor(None, load_emotion_model, cfg)
        rules.check_labels(model.labels)
        await loop.run_in_executor(None, model.warm_up)  # before readiness: lazy initialisation, CUDA kernels per bucket
        self.model = model
        inf = cfg.inference
        self.batcher = InferenceBatcher(model, inf.effective_max_batch, inf.max_wait_ms, inf.queue_size)
        self.batcher.start()
        self.calls.accepting = True
        await self.grpc.set_serving(True)
        log.info("ready: grpc port %d, websocket port %d, metrics port %d, model %s", self.grpc_port, self.ws_port, self.metrics_port, model.name)

    def _new_session(self, call_config) -> CallSession:
        assert self.batcher and self.publisher and self.model and self.rule_engine
        ctx = SessionContext(
            vad=self.config.vad,
            windows=self.config.windows,
            ingest=self.config.ingest,
            batcher=self.batcher,
            rules=lambda: self.rule_engine,
            publisher=self.publisher,
            model_name=self.model.name,
            labels=self.model.labels,
            deadline_s=self.config.inference.deadline_ms / 1000,
        )
        return CallSession(call_config, ctx)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let streams finish for `grace` seconds, then stop the worker and publisher."""
        if self.calls is not None:
            self.calls.accepting = False
        if self.ws is not None:
            await self.ws.stop()
        if self.grpc is not None:
            await self.grpc.stop(grace)
        if self.batcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
        if self.publisher is not None:
            await self.publisher.stop()
        if self.model is not None:
            self.model.close()
        log.info("stopped")

    async def run_until_signalled(self, on_ready=None) -> None:
        """Start, call `on_ready(app)`, serve until SIGTERM or SIGINT, then stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            if on_ready is not None:
                on_ready(self)
            await stop.wait()
        finally:
            await self.stop()
