"""Composition root: configuration -> model -> batcher -> rules -> publisher -> sessions -> servers."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal

from service import metrics
from service.alerts import AlertPublisher
from service.auth import Authenticator, load_tokens
from service.calls import CallRegistry
from service.config import ServiceConfig, config_as_dict
from service.inference.base import EmotionModel
from service.inference.batcher import InferenceBatcher
from service.redact import redact
from service.rules import RuleEngine, RuleSet, load_rules
from service.rules.reloader import RulesReloader
from service.session import CallSession, SessionContext
from service.spill import check_spill_dir
from service.transport.grpc_server import GrpcServer
from service.transport.ws_server import WebSocketServer

log = logging.getLogger(__name__)

# Free space the spill directory needs at start (or spill_max_bytes, if smaller). Not the whole
# spill_max_bytes: the spill is empty most of the time, and 64 MiB already holds tens of thousands
# of events (an alert is about 1-4 KB, a summary a few KB), a long Redis outage's worth; a spill
# that fills the disk later is reported by readiness instead (App.degraded).
SPILL_MIN_FREE_BYTES = 64 << 20


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


def safe_file_name(name: str) -> str:
    """A bridge-chosen id as a file name that stays inside its directory."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[:128] or "call"


def write_report(directory: str, summary: dict) -> str | None:
    """Render a call summary's QA report to {directory}/{call_id}.html; returns the path (None on failure)."""
    from service.report import render_call_report

    path = os.path.join(directory, f"{safe_file_name(summary['call_id'])}.html")
    try:
        os.makedirs(directory, exist_ok=True)
        html = render_call_report(summary)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - a report failure must never affect calls
        metrics.report_written("failed")
        log.error("a QA report could not be written to %s: %s", directory, redact(exc))
        return None
    metrics.report_written("written")
    return path


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
        self.rules_reloader: RulesReloader | None = None
        self.grpc_port = 0
        self.ws_port = -1
        self.metrics_port = -1

    async def start(self) -> None:
        """Bind the servers (not ready), load rules and the model, then accept calls."""
        cfg = self.config
        log.info("starting with %s", config_as_dict(cfg))
        rules = load_rules(cfg.rules_path)
        self.rule_engine = RuleEngine(rules)
        metrics.rules_in_effect(len(rules.rules))
        authenticator = Authenticator(load_tokens(cfg.server.auth_tokens, cfg.server.auth_tokens_file))
        if authenticator.enabled:
            log.info("caller authentication on: %d tenant(s); alerts go to per-tenant channels", len(authenticator.tenants))
        else:
            log.warning("caller authentication is OFF (no CALLPULSE_AUTH_TOKENS): any caller is admitted - development only")
        if cfg.redis.spill_dir:
            check_spill_dir(cfg.redis.spill_dir, min(cfg.redis.spill_max_bytes, SPILL_MIN_FREE_BYTES))
        self.publisher = AlertPublisher(cfg.redis, tenant_channels=authenticator.enabled)
        await self.publisher.start()
        self.calls = CallRegistry(cfg.server.max_calls, self._new_session, authenticator, cfg.server.max_rss_mb,
                                  cfg.server.max_handshakes)
        self.grpc = GrpcServer(cfg.server, self.calls)
        self.grpc_port = await self.grpc.start()
        if cfg.server.ws_port >= 0:
            self.ws = WebSocketServer(cfg.server, self.calls, cfg.ingest, ready=self.ready, degraded=self.degraded)
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
        self.rules_reloader = RulesReloader(cfg.rules_path, model.labels, self._apply_rules, self.publisher.publish_call_event,
                                            cfg.analytics.rules_poll_s)
        self.rules_reloader.start()
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
            analytics=self.config.analytics,
            on_summary=self._write_report if self.config.analytics.reports_dir else None,
        )
        return CallSession(call_config, ctx)

    def ready(self) -> bool:
        """Calls are accepted and their alerts are not being lost (readiness; see `degraded` for why not)."""
        return bool(self.calls and self.calls.accepting) and not (self.publisher is not None and self.publisher.losing_events)

    def degraded(self) -> str | None:
        """Why the service runs degraded, or None: a dependency is away, alerts wait or, when both Redis
        and the disk spill fail, are being lost (then `ready` is False too)."""
        publisher = self.publisher
        if publisher is None:
            return None
        reasons = []
        if not publisher.connected:
            reasons.append(f"redis unreachable; {publisher.backlog} alert/call events waiting (memory and disk spill)")
        if publisher.spill_error is not None:
            reasons.append(f"disk spill failing: {publisher.spill_error}")
        if publisher.losing_events:
            reasons.append("new alert/call events are being dropped")
        return "; ".join(reasons) or None

    def _apply_rules(self, rules: RuleSet) -> None:
        self.rule_engine = RuleEngine(rules)

    def reload_rules(self) -> bool:
        """Reload the rules file now (what SIGHUP does); False if it was invalid and the old rules stay."""
        return self.rules_reloader is not None and self.rules_reloader.reload("signal")

    def _write_report(self, summary: dict) -> None:
        """Write the call's QA report off the event loop (a failure is logged and counted, never raised)."""
        asyncio.get_running_loop().run_in_executor(None, write_report, self.config.analytics.reports_dir, summary)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown within `grace` seconds (default: the configured shutdown grace): stop
        accepting calls and report not ready, end every active call as at EndOfCall (its open speech
        scored, its summary published) and tell its bridge UNAVAILABLE, then stop the servers, the
        inference worker and the publisher (which spills what Redis has not taken)."""
        grace = self.config.server.shutdown_grace_s if grace is None else grace
        deadline = asyncio.get_running_loop().time() + grace
        if self.calls is not None:
            self.calls.accepting = False
        if self.grpc is not None:
            await self.grpc.set_serving(False)
        if self.rules_reloader is not None:
            await self.rules_reloader.stop()
        if self.calls is not None and self.batcher is not None:
            active = self.calls.sessions()
            if active:
                log.info("shutting down: ending %d active call(s)", len(active))
                budget = max(0.1, 0.6 * (deadline - asyncio.get_running_loop().time()))
                done, pending = await asyncio.wait([asyncio.ensure_future(s.shut_down()) for s in active], timeout=budget)
                if pending:
                    log.error("%d call(s) could not be ended within the grace period", len(pending))
                    for task in pending:
                        task.cancel()
                # Let each connection end the protocol's way (an error event, AudioHook's disconnect and
                # close transaction) before the servers close whatever is left.
                budget = max(0.1, 0.6 * (deadline - asyncio.get_running_loop().time()))
                await self.calls.wait_idle(budget)
        if self.ws is not None:
            await self.ws.stop()
        if self.grpc is not None:
            await self.grpc.stop(max(0.1, 0.5 * (deadline - asyncio.get_running_loop().time())))
        if self.batcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
        if self.publisher is not None:
            await self.publisher.stop(timeout=max(0.5, deadline - asyncio.get_running_loop().time()))
        if self.model is not None:
            self.model.close()
        log.info("stopped")

    async def run_until_signalled(self, on_ready=None) -> None:
        """Start, call `on_ready(app)`, serve until SIGTERM or SIGINT, then stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_rules)
        try:
            await self.start()
            if on_ready is not None:
                on_ready(self)
            await stop.wait()
        finally:
            await self.stop()
