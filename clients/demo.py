"""`make demo`: Redis (started if none answers), the service, the sample call through the bridge, the alerts.

Everything the demo starts it stops again, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "clients" / "samples" / "call_stereo_8k.wav"
TRANSCRIPT = ROOT / "clients" / "samples" / "call_stereo_8k.transcript.json"  # the exact text the sample voices speak
RULES = ROOT / "clients" / "samples" / "demo_rules.yaml"  # the shipped rules and one the 20 s sample can show
REPORTS = ROOT / "reports"  # QA reports the demo service writes (CALLPULSE_REPORTS_DIR)
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="callpulse-demo-"))

    def say(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def spawn(self, args: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=ROOT, **kw)
        self.procs.append(proc)
        return proc

    def redis_url(self) -> str:
        url = self.args.redis_url
        if _redis_answers(url):
            self.say(f"using the Redis at {url}")
            return url
        if shutil.which("redis-server") is None:
            raise SystemExit("no Redis answers at {url} and redis-server is not installed (apt-get install redis-server)")
        port = _free_port()
        self.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(self.tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.1)
        self.say(f"no Redis answered at {self.args.redis_url}; started redis-server on port {port}")
        return url

    def model(self) -> str:
        model = Path(self.args.model)
        if (model / "config.yaml").exists() and (model / "model.pt").exists():
            self.say(f"using the emotion model in {model}")
            return str(model)
        self.say(f"no emotion model at {model} (run `make model` where a model hub is reachable); using an UNTRAINED "
                 "test model that scores every window as 'angry', to show the alert path - its scores mean nothing")
        out = self.tmp / "test-model-angry"
        subprocess.run([PY, "-m", "service", "make-test-model", str(out), "--favor", "angry"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return str(out)

    def start_service(self, redis_url: str, model: str) -> int:
        env = dict(os.environ, CALLPULSE_LOG_LEVEL="WARNING", CALLPULSE_REPORTS_DIR=str(REPORTS))
        proc = self.spawn(
            [PY, "-m", "service", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--ws-port", "0", "--metrics-port", "0",
             "--redis-url", redis_url, "--redis-prefix", self.args.prefix, "--model", model, "--rules", str(RULES)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.say("starting the service (loading the model); rules: the shipped ones and customer-angry-sustained "
                 f"({RULES.relative_to(ROOT)}: the shipped customer-upset-fast needs 10 s of the customer's speech first)...")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise SystemExit(f"the service exited:\n{proc.stderr.read()[-3000:]}")
            if line.startswith("{") and '"ready"' in line:
                ready = json.loads(line)
                self.say(f"service ready: gRPC port {ready['grpc_port']}, metrics http://127.0.0.1:{ready['metrics_port']}/metrics, model {ready['model']}")
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                threading.Thread(target=proc.stderr.read, daemon=True).start()
                return ready["grpc_port"]
        raise SystemExit("the service did not become ready in 10 minutes")

    def subscriber(self, redis_url: str, who: list[str], label: str) -> None:
        proc = self.spawn([PY, "-m", "clients.subscribe", "--redis-url", redis_url, "--prefix", self.args.prefix, *who],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def relay() -> None:
            for line in proc.stdout:
                alert = json.loads(line)
                print(f"[{label}] {json.dumps(alert)}", flush=True)

        threading.Thread(target=relay, daemon=True).start()

    def run(self) -> int:
        redis_url = self.redis_url()
        model = self.model()
        port = self.start_service(redis_url, model)
        self.subscriber(redis_url, ["--agent", "agent-42"], "agent desktop agent-42")
        self.subscriber(redis_url, ["--supervisor", "billing"], "supervisor billing")
        time.sleep(1.0)
        self.say(f"streaming {SAMPLE.name} (left: customer, right: agent) at {self.args.speed}x real time...")
        bridge = subprocess.Popen(
            [PY, "-m", "clients.bridge", "--target", f"grpc://127.0.0.1:{port}", "--wav", str(SAMPLE),
             "--roles", "customer,agent", "--call-id", f"demo-{int(time.time())}", "--agent-id", "agent-42",
             "--team", "billing", "--tenant", "demo", "--speed", str(self.args.speed), "--transcript", str(TRANSCRIPT)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        for line in bridge.stdout:
            event = json.loads(line)
            kind = event["type"]
            if kind == "emotion":
                prosody = " ".join(f"{name}={event[key]:.0f}" for name, key in
                                   (("pitch_hz", "pitch_hz"), ("syll/min", "speech_rate_spm"), ("chars/min", "speech_rate_cpm")) if event.get(key) is not None)
                self.say(f"bridge <- emotion {event['speaker']} "
                         f"{event['window_start_ms'] / 1000:5.1f}-{event['window_end_ms'] / 1000:5.1f}s "
                         f"top={event['top_label']} {event['top_score']:.2f} loudness={event['loudness_dbfs']:.0f}dBFS "
                         f"{prosody} latency={event['latency_ms']:.0f}ms")
            elif kind == "alert":
                reason = event["document"]["evidence"]["reason"]
                self.say(f"bridge <- ALERT {event['rule_id']} ({event['severity']}): {event['message']} [{reason}]")
            elif kind == "summary":
                rates = {s["speaker"]: s.get("prosody", {}).get("speech_rate_cpm") for s in event["document"]["speakers"]}
                speakers = ", ".join(f"{s['speaker']} {s['speech_ms'] / 1000:.1f}s speech"
                                     + (f" ({rates[s['speaker']]:.0f} chars/min by the transcript)" if rates.get(s["speaker"]) else "")
                                     for s in event["speakers"])
                self.say(f"bridge <- call summary: {speakers}; alerts {len(event['alert_ids'])}")
                report = REPORTS / f"{event['call_id']}.html"
                self.say(f"QA report of the call (written by the service): {report.relative_to(ROOT)}")
            else:
                self.say(f"bridge <- {kind}")
        bridge.wait()
        time.sleep(1.0)  # let the subscribers print what arrived
        self.say("done" if bridge.returncode == 0 else f"the bridge exited with {bridge.returncode}")
        return bridge.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.say("stopped everything the demo started")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--model", default="models/emotion2vec_plus_large")
    parser.add_argument("--prefix", default="agentassist")
    parser.add_argument("--speed", type=float, default=1.0)
    demo = Demo(parser.parse_args(argv))
    try:
        return demo.run()
    except KeyboardInterrupt:
        return 130
    finally:
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
