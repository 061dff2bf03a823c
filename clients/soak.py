"""`make soak`: N live calls for M minutes against one service process; reports RSS and open-file slopes.

    python -m clients.soak [--calls 20] [--minutes 10] [--model DIR | --size tiny] [--call-s 60] [--json OUT]

Starts its own redis-server and `python -m service serve` (the tiny untrained TEST MODEL unless
--model says otherwise), keeps `--calls` live calls running for `--minutes` (each call streams the
bundled sample call looped to `--call-s` seconds, then the next one starts), samples the server's
resident memory and open file descriptors from /proc every 5 s, and prints the least-squares
slopes (MB per minute, files per minute) over the second half of the run, after warm-up. A leak
shows as a slope that stays above zero however long the run; noise shows as one near zero. Not run
in CI: it takes as long as you ask.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from clients.bench import CALL, Service
from clients.loadgen import run_load

SAMPLE_S = 5.0


def _sample(pid: int) -> tuple[float, int]:
    """(resident MB, open file descriptors) of a process, from /proc."""
    with open(f"/proc/{pid}/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20, len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of values over time, per minute."""
    if len(times_s) < 2:
        return 0.0
    return float(np.polyfit(np.array(times_s) / 60.0, np.array(values), 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", help="model directory (default: a tiny untrained TEST MODEL)")
    parser.add_argument("--call-s", type=float, default=60.0, help="length of each call before the next starts")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.minutes <= 0:
        print("error: --calls must be >= 1 and --minutes > 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="callpulse-soak-") as tmp:
        model = args.model
        if model is None:
            from service.inference.testmodel import make_test_model

            model = str(Path(tmp) / "tiny")
            make_test_model(model, size="tiny", favor="angry")
        service = Service(model, Path(tmp))
        samples: list[tuple[float, float, int]] = []
        stop = threading.Event()
        began = time.monotonic()

        def sampler() -> None:
            while not stop.is_set():
                rss, fds = _sample(service.proc.pid)
                samples.append((time.monotonic() - began, rss, fds))
                stop.wait(SAMPLE_S)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        rounds = []
        try:
            end = began + args.minutes * 60
            while time.monotonic() < end:
                call_s = min(args.call_s, max(5.0, end - time.monotonic()))
                report = asyncio.run(run_load(service.target, args.calls, str(CALL), duration_s=call_s, ramp_s=2.0))
                rounds.append({"calls": args.calls, "errors": len(report["errors"]), "alerts": report["alerts"],
                               "update_p99_ms": report["update_latency_ms"]["p99"], "drop_ratio": report["drop_ratio"]})
                print(json.dumps({"round": len(rounds), **rounds[-1], "rss_mb": round(samples[-1][1], 1),
                                  "open_files": samples[-1][2]}), flush=True)
        finally:
            stop.set()
            thread.join(10)
            service.close()
    half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
    times = [s[0] for s in half]
    result = {
        "calls": args.calls,
        "minutes": args.minutes,
        "model": args.model or "TEST MODEL (untrained emotion2vec, tiny, favor=angry)",
        "rounds": len(rounds),
        "call_errors": sum(r["errors"] for r in rounds),
        "samples": len(samples),
        "rss_mb": {"start": round(samples[0][1], 1), "end": round(samples[-1][1], 1), "max": round(max(s[1] for s in samples), 1)},
        "open_files": {"start": samples[0][2], "end": samples[-1][2], "max": max(s[2] for s in samples)},
        "rss_mb_per_min_second_half": round(slope_per_minute(times, [s[1] for s in half]), 3),
        "open_files_per_min_second_half": round(slope_per_minute(times, [s[2] for s in half]), 3),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "rounds_detail": rounds, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
