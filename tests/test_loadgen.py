"""The load generator and the bridge pool: calls over several connections and processes, merged figures, CPU of a process tree."""

import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

from agentassist.v1 import agent_assist_pb2 as pb
from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc
from clients.bridge import CallPlan
from clients.bridge_pool import run_calls
from clients.loadgen import ProcessTreeCPU, default_channels, plan_shares, run_load
from tests.conftest import CALL_WAV, CUSTOMER_WAV, run, service_config


class PeerRecorder(pb_grpc.AgentAssistServicer):
    """A stand-in AgentAssist service that records the peer (client address and port) of every call and can
    refuse the first calls with UNAVAILABLE."""

    def __init__(self, refuse_first: int = 0, handshake_s: float | None = None) -> None:
        self.peers: list[str] = []
        self.refuse_first = refuse_first
        self.handshake_s = handshake_s
        self.audio_messages = 0
        self.lock = threading.Lock()

    def StreamCall(self, request_iterator, context):
        opened = time.monotonic()
        first = next(request_iterator)
        if self.handshake_s is not None and time.monotonic() - opened > self.handshake_s:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no CallConfig within the handshake timeout")
        with self.lock:
            self.peers.append(context.peer())
            refuse = len(self.peers) <= self.refuse_first
        if refuse:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        yield pb.CallEvent(started=pb.SessionStarted(call_id=first.config.call_id))
        for request in request_iterator:
            if request.WhichOneof("payload") == "end":
                break
            if request.WhichOneof("payload") == "audio":
                with self.lock:
                    self.audio_messages += 1
        yield pb.CallEvent(summary=pb.CallSummary(call_id=first.config.call_id, speakers=[
            pb.SpeakerSummary(speaker=pb.ROLE_CUSTOMER, windows_scored=1)]))


@pytest.fixture
def peer_server():
    """Factory: peer_server(refuse_first=0, handshake_s=None) -> (servicer, grpc://127.0.0.1:PORT), stopped after the
    test; with handshake_s, a stream whose CallConfig comes later than that after it opened is refused."""
    servers = []

    def start(refuse_first: int = 0, handshake_s: float | None = None):
        servicer = PeerRecorder(refuse_first, handshake_s)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        pb_grpc.add_AgentAssistServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"grpc://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def test_loadgen_reports_latency_concurrency_and_loss(redis_server, test_models, start_server):
    """Two paced calls produce a report with both calls active at once, update latencies and no loss or errors."""
    server = start_server(service_config(redis_server.url, test_models["angry"]))
    # the customer fixture is near-continuous speech: any 12 s stretch of it holds the 5 s the default rule needs
    report = run(run_load(server.target, calls=2, wav=str(CUSTOMER_WAV), duration_s=12.0, speed=1.0, ramp_s=0.5))
    assert report["errors"] == [] and report["achieved_concurrency"] == 2
    assert report["updates"] > 10 and report["windows_scored"] == report["updates"]
    assert 0 < report["update_latency_ms"]["p50"] <= report["update_latency_ms"]["p99"] <= report["update_latency_ms"]["max"]
    assert report["alerts"] == 2 and report["drop_ratio"] == 0.0
    assert 11.0 <= report["wall_s"] < 30.0  # paced in real time, not replayed


def test_loadgen_in_two_processes_over_three_channels_merges_all_calls(redis_server, test_models, start_server):
    """Five calls run by two spawned processes over three channels against a real server come back as one report of
    five calls, with every call's updates, its windows and each process's CPU."""
    server = start_server(service_config(redis_server.url, test_models["angry"]))
    report = run(run_load(server.target, calls=5, wav=str(CUSTOMER_WAV), duration_s=4.0, ramp_s=0.2, channels=3, processes=2))
    assert report["errors"] == [] and report["calls"] == 5
    assert report["processes"] == 2 and report["channels"] == 3
    assert sorted(p["calls"] for p in report["client_processes"]) == [2, 3]  # channels 0, 2 in one; channel 1 in the other
    assert len({p["pid"] for p in report["client_processes"]}) == 2
    assert report["achieved_concurrency"] == 5
    assert report["call_seconds"] == 5 * 4.0
    assert report["updates"] >= 5 and report["windows_scored"] == report["updates"]
    assert report["update_latency_ms"]["p99"] is not None and report["client_cpu_ms_per_call_s"] > 0


def test_calls_ramped_over_longer_than_the_handshake_timeout_open_their_streams_when_they_start(peer_server):
    """With calls started over 2.5 s against a server that gives a stream 1 s to send its CallConfig, every call opens
    its stream at its own start, so none is refused (the 1500-call step of the H200 run failed so before)."""
    servicer, target = peer_server(handshake_s=1.0)
    report = run(run_load(target, calls=4, wav=str(CUSTOMER_WAV), duration_s=0.4, ramp_s=2.5, channels=1))
    assert report["errors"] == [] and len(servicer.peers) == 4


def test_the_load_can_send_100_ms_per_message_and_refuses_a_size_that_is_not_whole_10_ms(peer_server):
    """chunk_ms 100 sends the same seconds of call in a fifth of the messages (counted by a stand-in server); 15 or 0
    is refused before anything is sent."""
    servicer, target = peer_server()
    report = run(run_load(target, calls=2, wav=str(CUSTOMER_WAV), duration_s=1.0, ramp_s=0.1, channels=1, chunk_ms=100))
    assert report["errors"] == [] and report["chunk_ms"] == 100 and report["call_seconds"] == 2.0
    assert servicer.audio_messages == 2 * 10
    for bad in (15, 0):
        with pytest.raises(ValueError, match="chunk_ms"):
            run(run_load(target, calls=1, wav=str(CUSTOMER_WAV), duration_s=1.0, chunk_ms=bad))
    assert len(servicer.peers) == 2


@pytest.mark.parametrize("processes, channels", [(1, 3), (2, 3)])
def test_channels_open_one_connection_each(peer_server, processes, channels):
    """C channels reach the server as C distinct TCP connections (client ports), whether in one process or spread over two."""
    servicer, target = peer_server()
    report = run(run_load(target, calls=6, wav=str(CALL_WAV), duration_s=0.5, ramp_s=0.0, channels=channels, processes=processes))
    assert report["errors"] == [] and report["calls"] == 6
    assert len(servicer.peers) == 6 and len(set(servicer.peers)) == channels


def test_channel_plan_spreads_calls_and_channels():
    """Calls go round-robin over the channels and channels round-robin over the processes; impossible plans are refused."""
    shares = plan_shares(calls=10, channels=4, processes=2)
    assert shares == [[(0, 0), (2, 2), (4, 0), (6, 2), (8, 0)], [(1, 1), (3, 3), (5, 1), (7, 3), (9, 1)]]
    assert default_channels(1000) == 40 and default_channels(20) == 8 and default_channels(3) == 3
    assert default_channels(3, processes=4) == 4
    with pytest.raises(ValueError):
        plan_shares(calls=4, channels=2, processes=3)


BURN = """
import subprocess, sys, time
def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
if sys.argv[1] == "burn":
    burn(float(sys.argv[2]))
    sys.exit()
if sys.argv[1] == "middle":  # a child that runs a grandchild to its end, burns, then stays alive until stdin closes
    subprocess.run([sys.executable, "-c", sys.argv[3], "burn", sys.argv[2]], check=True)
    burn(float(sys.argv[2]))
    print("burnt", flush=True)
    sys.stdin.read()
    sys.exit()
sys.stdin.readline()  # the parent: wait for the go, then one child that exits and one that stays
subprocess.run([sys.executable, "-c", sys.argv[3], "burn", sys.argv[2]], check=True)
middle = subprocess.Popen([sys.executable, "-c", sys.argv[3], "middle", sys.argv[2], sys.argv[3]], stdout=subprocess.PIPE, text=True)
middle.stdout.readline()
print("done", flush=True)
sys.stdin.read()
"""


def test_process_tree_cpu_counts_exited_and_living_descendants():
    """The tree measure of a parent that does nothing but runs one child that exits, and one that stays alive after its
    own child exited, is at least the CPU the three descendants burnt; the parent alone shows almost none of it."""
    seconds = 0.3
    parent = subprocess.Popen([sys.executable, "-c", BURN, "parent", str(seconds), BURN], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        tree = ProcessTreeCPU(parent.pid)
        before, _ = tree.sample()
        own_before = sum(tree.root.cpu_times()[:2])
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "done"
        after, processes = tree.sample()
        own_after = sum(tree.root.cpu_times()[:2])
    finally:
        parent.stdin.close()
        parent.wait(10)
    assert processes == 2  # the parent and the child still alive
    assert after - before >= 3 * seconds * 0.95  # /proc counts in clock ticks
    assert own_after - own_before < seconds


def test_bridge_pool_spreads_calls_over_connections_and_retries_refusals(peer_server):
    """The bridge pool streams six calls over two connections, and calls refused with UNAVAILABLE before they started
    are tried again (after a back-off) until they go through."""
    servicer, target = peer_server(refuse_first=2)
    plans = [CallPlan(f"pool-{i}", "agent", "team", speed=0) for i in range(6)]
    results = run_calls(target, str(CALL_WAV), plans, channels=2, backoff_s=0.01)
    assert [r.error for r in results] == [None] * 6
    assert all(r.of("summary") for r in results)
    assert sum(r.attempts for r in results) == 8
    assert len(servicer.peers) == 8 and len(set(servicer.peers)) == 2


def test_bench_passes_workers_only_to_a_server_that_has_the_option():
    """`make bench` leaves --workers out for one worker on a server without it, skips `auto` there, and passes the flag
    (`auto` itself, or the core count when the option does not mention auto) to a server that has it."""
    import argparse
    import os

    from clients.bench import workers_args

    def help_text(workers_help: str | None) -> str:
        parser = argparse.ArgumentParser(prog="python -m service serve")
        parser.add_argument("--grpc-port", type=int)
        if workers_help is not None:
            parser.add_argument("--workers", help=workers_help)
        parser.add_argument("--model", help="hub id or local funasr model directory; auto picks nothing")
        return parser.format_help()

    today = help_text(None)
    assert workers_args("1", today) == [] and workers_args("auto", today) is None
    pod = help_text("ingest worker processes: a number, or auto for one per core")
    assert workers_args("1", pod) == ["--workers", "1"] and workers_args("auto", pod) == ["--workers", "auto"]
    assert workers_args("auto", help_text("ingest worker processes")) == ["--workers", str(os.cpu_count())]


def test_bench_search_runs_a_noisy_failure_again():
    """The live-call search doubles then bisects to the largest passing load, and a load that fails a criterion below
    a load that passed it is run once more, the second run deciding."""
    from clients.bench import search

    class FakeTrials:
        """p99 = 10 ms per call, except the first run of 16 calls, which meets a stall of the machine."""

        def __init__(self) -> None:
            self.reports, self.runs = {}, []

        def __call__(self, calls: int, again: bool = False) -> dict:
            if again or calls not in self.reports:
                self.runs.append(calls)
                self.reports[calls] = {"p99": 700 if self.runs == [16] else calls * 10}
            return self.reports[calls]

    trials = FakeTrials()
    assert search(trials, 16, 512, lambda r: r["p99"] < 1000) == 96
    assert trials.runs == [16, 32, 64, 128, 96, 112, 104]
    assert search(trials, 16, 512, lambda r: r["p99"] < 500) == 48  # 16 failed under 500 ms where 32 passed: run again
    assert trials.runs[7:] == [16, 48, 56, 52]


def test_the_transport_floor_is_measured_from_a_bare_server_process():
    """bench_transport runs a bare server per transport in its own process and reports a positive CPU cost per
    call-second of the calls it was sent."""
    from clients.bench_transport import measure

    for transport in ("websocket", "grpc-aio"):
        # 8 call-seconds: the server's CPU is read in 10 ms clock ticks, and 2 call-seconds of a bare websocket server
        # (about 2 ms per call-second) could read as no tick at all
        result = measure(transport, calls=4, seconds=2.0, chunk_ms=20)
        assert result["transport"] == transport and result["calls"] == 4 and result["cpu_ms_per_call_s"] > 0
