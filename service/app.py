"""Composition root of a serving process: configuration -> rules -> publisher -> servers -> scoring -> sessions.

In a pod's worker the scoring is the engine process's (RemoteScoringClient, given by service/pod.py);
in one process (tests, embedding) the model is loaded here behind an InferenceBatcher."""

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
from service.inference.loading import load_emotion_model, warm_up_model
from service.inference.batcher import InferenceBatcher
from service.inference.scoring import LocalScoringClient, ScoringClient
from service.redact import redact
from service.rules import RuleEngine, RuleSet, load_rules
from service.rules.reloader import RulesReloader
from service.session import CallSession, SessionContext
from service.spill import SPILL_MIN_FREE_BYTES, check_spill_dir
from service.transport.grpc_server import GrpcServer
from service.transport.ws_server import WebSocketServer

log = logging.getLogger(__name__)

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

    def __init__(self, config: ServiceConfig, model: EmotionModel | None = None, *, scorer: ScoringClient | None = None,
                 pod=None, publishes_reloads: bool = True) -> None:
        """`model`: score with this model in this process (else the configured one is loaded); `scorer`: score
        through it instead (a pod's engine); `pod`: the PodSlot of a pod's worker (calls and memory are counted
        across the pod); `publishes_reloads`: this process announces rules reloads (one worker of a pod does)."""
        self.config = config
        self._given_model = model
        self._pod = pod
        self._publishes_reloads = publishes_reloads
        self.model: EmotionModel | None = None
        self.scorer: ScoringClient | None = scorer
        self._remote = scorer is not None
        self._health: asyncio.Task | None = None
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
        metrics.preset(("customer", "agent"), [(rule.id, rule.severity.label) for rule in rules.rules])
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
                                  cfg.server.max_handshakes, pod=self._pod)
        self.grpc = GrpcServer(cfg.server, self.calls)
        self.grpc_port = await self.grpc.start()
        if cfg.server.ws_port >= 0:
            self.ws = WebSocketServer(cfg.server, self.calls, cfg.ingest, ready=self.ready, degraded=self.degraded)
            self.ws_port = await self.ws.start()
        if cfg.server.metrics_port >= 0:
            self.metrics_port = metrics.serve(cfg.server.metrics_port, cfg.server.host)
        scorer = await self._start_scoring()
        rules.check_labels(scorer.labels)
        announce = self.publisher.publish_call_event if self._publishes_reloads else (lambda document: None)
        self.rules_reloader = RulesReloader(cfg.rules_path, scorer.labels, self._apply_rules, announce, cfg.analytics.rules_poll_s)
        self.rules_reloader.start()
        self.calls.accepting = True
        await self.grpc.set_serving(True)
        self._health = asyncio.create_task(self._follow_readiness(), name="readiness")
        log.info("ready: grpc port %d, websocket port %d, metrics port %d, model %s", self.grpc_port, self.ws_port, self.metrics_port, scorer.name)

    async def _start_scoring(self) -> ScoringClient:
        """The pod's engine (wait until it has its model), or the model loaded and warmed here."""
        if self.scorer is not None:
            await self.scorer.start()
            await self.scorer.wait_ready()
            return self.scorer
        loop = asyncio.get_running_loop()
        model = self._given_model or await loop.run_in_executor(None, load_emotion_model, self.config)
        await loop.run_in_executor(None, warm_up_model, model, self.config)  # before readiness
        self.model = model
        inf = self.config.inference
        batcher = InferenceBatcher(model, inf.effective_max_batch, inf.max_wait_ms, inf.queue_size)
        batcher.start()
        self.scorer = LocalScoringClient(model, batcher)
        return self.scorer

    @property
    def batcher(self) -> InferenceBatcher | None:
        """The in-process batcher (None in a pod's worker)."""
        return self.scorer.batcher if isinstance(self.scorer, LocalScoringClient) else None

    async def _follow_readiness(self) -> None:
        """gRPC health follows readiness (the engine, the alert path) while the service runs."""
        serving = True
        while True:
            await asyncio.sleep(0.5)
            ready = self.ready()
            if ready != serving and self.grpc is not None and self.calls is not None and self.calls.accepting:
                serving = ready
                await self.grpc.set_serving(ready)

    def _new_session(self, call_config) -> CallSession:
        assert self.scorer and self.publisher and self.rule_engine
        ctx = SessionContext(
            vad=self.config.vad,
            windows=self.config.windows,
            ingest=self.config.ingest,
            scorer=self.scorer,
            rules=lambda: self.rule_engine,
            publisher=self.publisher,
            model_name=self.scorer.name,
            labels=self.scorer.labels,
            deadline_s=self.config.inference.deadline_ms / 1000,
            analytics=self.config.analytics,
            on_summary=self._write_report if self.config.analytics.reports_dir else None,
            speech_check=self.config.inference.speech_check > 0,  # the engine loads its model with the same setting
        )
        return CallSession(call_config, ctx)

    def ready(self) -> bool:
        """Calls are accepted, scored, and their alerts are not being lost (readiness; see `degraded` for why not)."""
        return (bool(self.calls and self.calls.accepting) and not (self.publisher is not None and self.publisher.losing_events)
                and (self.scorer is None or self.scorer.available))

    def degraded(self) -> str | None:
        """Why the service runs degraded, or None: a dependency is away, alerts wait or, when both Redis
        and the disk spill fail, are being lost (then `ready` is False too)."""
        publisher = self.publisher
        if publisher is None:
            return None
        reasons = []
        if self.scorer is not None and not self.scorer.available:
            reasons.append("the emotion engine is unavailable (restarting); windows are not scored")
        if self._pod is not None and (missing := self._pod.state.describe()):
            reasons.append(missing)
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
        if self._health is not None:
            self._health.cancel()
        if self.calls is not None and self.scorer is not None:
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
        if self.scorer is not None:
            await self.scorer.close()
        if self.publisher is not None:
            await self.publisher.stop(timeout=max(0.5, deadline - asyncio.get_running_loop().time()))
        if self.model is not None:
            self.model.close()
        log.info("stopped")

    async def run_until_signalled(self, on_ready=None) -> None:
        """Start, call `on_ready(app)`, serve until SIGTERM or SIGINT, then stop. A signal while starting (the
        engine still loading its model, say) stops at once."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_rules)
        starting = asyncio.create_task(self.start(), name="start")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a start that failed raises here
                if on_ready is not None:
                    on_ready(self)
                await stopping
        finally:
            for task in (starting, stopping):
                if not task.done():
                    task.cancel()
            await self.stop()
