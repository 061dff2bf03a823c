"""The load generator against a real server: concurrency, latency figures and loss come back in its report."""

from clients.loadgen import run_load
from tests.conftest import CUSTOMER_WAV, run, service_config


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
