"""The Kubernetes manifests and the Dockerfile agree with the service: variables it reads, probes it answers, grace it needs."""

import yaml

from service.config import ENV_VARS, ServerConfig
from tests.conftest import ROOT


def _documents():
    with open(ROOT / "deploy" / "k8s" / "callpulse.yaml") as fh:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(fh)}


def test_deployment_uses_only_variables_the_service_reads_and_its_probes():
    """Every CALLPULSE_* variable in the Deployment exists, the probes hit /readyz and /healthz on the WebSocket port,
    and the pod's grace period is longer than the service's shutdown grace."""
    docs = _documents()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    unknown = sorted(name for name in env if name not in ENV_VARS)
    assert unknown == []
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ws"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ws"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "ws": ServerConfig().ws_port, "metrics": 9100}
    assert pod["terminationGracePeriodSeconds"] > float(env["CALLPULSE_SHUTDOWN_GRACE_S"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["CALLPULSE_RULES"].startswith(mounts["rules"] + "/")
    assert env["CALLPULSE_AUTH_TOKENS_FILE"].startswith(mounts["auth"] + "/")
    assert env["CALLPULSE_SPILL_DIR"] == mounts["spill"]
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} == set(ports)


def test_dockerfile_exposes_every_port_the_service_opens():
    """The image exposes the gRPC, WebSocket and metrics ports."""
    text = (ROOT / "Dockerfile").read_text()
    exposed = next(line for line in text.splitlines() if line.startswith("EXPOSE")).split()[1:]
    assert sorted(exposed) == sorted(["50051", str(ServerConfig().ws_port), "9100"])
