"""CUDA graph bookkeeping: which captured (length, batch) shape a group of windows pads to, each shape's static
state, capture under a time budget, and when a group falls back to the eager forward.

No torch here. A shape's static state (input buffers, the graph, its output) is whatever the model's `capture`
callable returns, so this class is exercised on the CPU with a fake capture; the real torch.cuda.CUDAGraph
capture lives in emotion2vec.py and is covered by the `gpu`-marked tests.

Padding follows vLLM: a group of n windows runs in the smallest captured batch size >= n (the extra rows are
dummies whose outputs are dropped) and every row is padded to the smallest captured length >= its longest
window. A group longer than every captured length, larger than the largest captured batch, asking for another
output variant (embeddings) or of a shape whose capture failed or ran out of time runs eagerly; each reason is
counted and logged once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

log = logging.getLogger(__name__)

CAPTURE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Batch sizes captured (up to max_batch); batches of more windows than the largest run eagerly."""
MAX_CONSECUTIVE_FAILURES = 3
"""Captures that fail in a row, none having succeeded, before the rest are not tried (a broken capture fails every shape)."""

REASONS = {
    "off": "CUDA graphs are off or none were captured",
    "variant": "the graphs were captured for another output variant (embeddings on or off)",
    "too_long": "a window is longer than every captured length",
    "too_many": "the group has more windows than the largest captured batch size",
    "not_captured": "this shape's capture failed or did not fit in the capture time budget",
    "replay_failed": "a replay of this shape failed; it runs eagerly from now on",
}
"""Why a group runs eagerly instead of in a captured graph."""


def capture_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to capture for batches of at most `max_batch` windows: the powers of two below it and
    max_batch itself, capped at the largest of CAPTURE_SIZES."""
    top = min(max_batch, CAPTURE_SIZES[-1])
    if top < 1:
        return ()
    return tuple(s for s in CAPTURE_SIZES if s < top) + (top,)


@dataclass(frozen=True, order=True)
class Shape:
    """The static shape of one captured forward pass."""

    samples: int
    """Every row is zero-padded to this many 16 kHz samples (a length bucket's upper bound)."""
    batch: int
    """Rows in the pass; a group of fewer windows gets dummy rows whose outputs are dropped."""


class GraphCache:
    """The captured shapes of one model and the decision, per group of windows, between a replay and eager."""

    def __init__(self, lengths: Sequence[int] = (), sizes: Sequence[int] = (), variant: Hashable = None) -> None:
        self.lengths = tuple(sorted(set(lengths)))
        """Captured row lengths in samples, ascending."""
        self.sizes = tuple(sorted(set(sizes)))
        """Captured batch sizes, ascending."""
        self.variant = variant
        """What the captured graphs output besides scores and frame logits (the model: whether embeddings)."""
        self.failed: dict[Shape, str] = {}
        """Shapes whose capture (or a later replay) failed, with the error."""
        self.skipped: list[Shape] = []
        """Shapes not captured because the time budget was spent."""
        self.fallbacks: Counter[str] = Counter()
        """Groups that ran eagerly, by reason (see REASONS)."""
        self.replays = 0
        """Groups that ran in a captured graph."""
        self.capture_seconds = 0.0
        """Wall time of the last capture, seconds."""
        self._entries: dict[Shape, Any] = {}
        self._logged: set[str] = set()

    @property
    def active(self) -> bool:
        """At least one shape is captured."""
        return bool(self._entries)

    @property
    def captured(self) -> tuple[Shape, ...]:
        """The captured shapes, ascending."""
        return tuple(sorted(self._entries))

    def get(self, shape: Shape) -> Any | None:
        """The static state captured for `shape`, or None."""
        return self._entries.get(shape)

    def shapes(self) -> list[Shape]:
        """Every shape to capture, in capture order: longest and largest first, so that the first capture sizes
        the shared memory pool and the later, smaller ones reuse it (as vLLM does)."""
        return [Shape(n, b) for n in reversed(self.lengths) for b in reversed(self.sizes)]

    def shape_for(self, rows: int, longest: int) -> Shape | None:
        """The shape a group of `rows` windows whose longest has `longest` samples pads to, captured or not;
        None when it is longer or larger than every captured length or size."""
        samples = next((n for n in self.lengths if n >= longest), None)
        batch = next((b for b in self.sizes if b >= rows), None)
        if samples is None or batch is None:
            return None
        return Shape(samples, batch)

    def select(self, rows: int, longest: int, variant: Hashable = None) -> tuple[Shape, Any] | None:
        """The captured shape and its static state for a group, or None to run it eagerly (the reason is
        counted, and logged the first time it occurs)."""
        if not self._entries:
            return self._eager("off", log_it=False)
        if variant != self.variant:
            return self._eager("variant")
        if rows > self.sizes[-1]:
            return self._eager("too_many")
        if longest > self.lengths[-1]:
            return self._eager("too_long")
        shape = self.shape_for(rows, longest)
        entry = self._entries.get(shape) if shape is not None else None
        if entry is None:
            return self._eager("not_captured")
        self.replays += 1
        return shape, entry

    def capture(self, capture_one: Callable[[Shape], Any], budget_s: float,
                clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
        """Capture every shape with `capture_one(shape) -> static state` until `budget_s` is spent; a shape whose
        capture raises runs eagerly (the first failure is logged with its error). Returns `report()`."""
        started = clock()
        failures_in_a_row = 0
        for shape in self.shapes():
            if clock() - started > budget_s or (failures_in_a_row >= MAX_CONSECUTIVE_FAILURES and not self._entries):
                self.skipped.append(shape)
                continue
            try:
                self._entries[shape] = capture_one(shape)
                failures_in_a_row = 0
            except Exception as exc:  # noqa: BLE001 - a shape that cannot be captured runs eagerly
                failures_in_a_row += 1
                self.failed[shape] = f"{type(exc).__name__}: {exc}"
                if len(self.failed) == 1:
                    log.warning("CUDA graph capture failed for %d windows of %d samples (%s: %s); shapes that cannot "
                                "be captured run eagerly", shape.batch, shape.samples, type(exc).__name__, exc)
        self.capture_seconds = clock() - started
        if self.skipped:
            log.warning("CUDA graph capture stopped after %.1f s (budget %.0f s): %d of %d shapes run eagerly",
                        self.capture_seconds, budget_s, len(self.skipped), len(self.shapes()))
        log.info("captured %d CUDA graphs (lengths %s samples x batch sizes %s) in %.1f s; %d failed",
                 len(self._entries), ",".join(map(str, self.lengths)), ",".join(map(str, self.sizes)),
                 self.capture_seconds, len(self.failed))
        return self.report()

    def fail(self, shape: Shape, exc: BaseException) -> None:
        """A replay of `shape` raised: drop it, so that its groups run eagerly from now on (logged once)."""
        self._entries.pop(shape, None)
        self.failed[shape] = f"replay: {type(exc).__name__}: {exc}"
        self._eager("replay_failed", detail=f"{type(exc).__name__}: {exc}")

    def release(self) -> None:
        """Drop every captured shape (their graphs and buffers go with the last reference)."""
        self._entries.clear()

    def report(self) -> dict[str, Any]:
        """What was captured, what failed, what the budget left out, and how long it took."""
        return {
            "lengths": list(self.lengths),
            "sizes": list(self.sizes),
            "shapes": len(self.lengths) * len(self.sizes),
            "captured": len(self._entries),
            "failed": {f"{s.samples}x{s.batch}": error for s, error in sorted(self.failed.items())},
            "skipped": len(self.skipped),
            "seconds": round(self.capture_seconds, 3),
        }

    def _eager(self, reason: str, log_it: bool = True, detail: str = "") -> None:
        self.fallbacks[reason] += 1
        if log_it and reason not in self._logged:
            self._logged.add(reason)
            level = logging.WARNING if reason == "replay_failed" else logging.INFO
            log.log(level, "a batch runs eagerly instead of in a CUDA graph: %s%s (logged once)", REASONS[reason],
                    f" ({detail})" if detail else "")
        return None
