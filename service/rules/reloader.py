"""Keeps the service's rules current: reloads the rules file when it changes or on SIGHUP.

A reload that fails (unreadable file, invalid YAML, a rule error, a label the model does not
produce) keeps the rules in effect and reports why: in the log, in a metric and on the calls
channel. Calls in progress keep running; each picks the new rules up at its next observation, and
a rule whose definition changed starts with fresh state.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Callable, Iterable

from service import metrics
from service.alerts import wall_time_iso
from service.errors import RulesError
from service.rules.model import RuleSet, load_rules

log = logging.getLogger(__name__)


class RulesReloader:
    """Watches one rules file (polling its size, time and content) and swaps rule sets atomically."""

    def __init__(self, path: str, labels: Iterable[str], apply: Callable[[RuleSet], None],
                 report: Callable[[dict], None], poll_s: float = 2.0) -> None:
        self.path = path
        self._labels = tuple(labels)
        self._apply = apply
        self._report = report
        self._poll_s = poll_s
        self._signature = self._stat()
        self._digest = self._read_digest()
        self._task: asyncio.Task | None = None
        self.version = 1
        self.last_error: str | None = None

    def start(self) -> None:
        if self._poll_s > 0:
            self._task = asyncio.create_task(self._poll(), name="rules-reloader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def reload(self, trigger: str = "signal") -> bool:
        """Load the file now; True if new rules are in effect."""
        try:
            rules = load_rules(self.path)
            rules.check_labels(self._labels)
        except RulesError as exc:
            self.last_error = str(exc)
            metrics.rules_reloaded("invalid")
            log.error("rules reload (%s) failed; the previous rules stay in effect:\n%s", trigger, exc)
            self._report({"type": "rules_reload_failed", "source": self.path, "trigger": trigger,
                          "errors": str(exc).splitlines(), "wall_time": wall_time_iso()})
            return False
        self._apply(rules)
        self.version += 1
        self.last_error = None
        metrics.rules_reloaded("loaded")
        metrics.rules_in_effect(len(rules.rules))
        log.info("rules reloaded (%s): %d rule(s) from %s", trigger, len(rules.rules), self.path)
        self._report({"type": "rules_reloaded", "source": self.path, "trigger": trigger, "version": self.version,
                      "rules": [r.id for r in rules.rules], "wall_time": wall_time_iso()})
        return True

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _read_digest(self) -> str | None:
        try:
            with open(self.path, "rb") as fh:
                return hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            return None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            signature = self._stat()
            if signature == self._signature:
                continue
            self._signature = signature
            digest = self._read_digest()
            if digest == self._digest and digest is not None:
                metrics.rules_reloaded("unchanged")
                continue
            self._digest = digest
            self.reload("file_changed")
