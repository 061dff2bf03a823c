"""Security: per-tenant credentials on every transport, tenant channels, TLS for gRPC and WSS, Redis ACL and TLS, no secrets in logs."""

import asyncio
import datetime
import ipaddress
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.bridge import CallPlan, run_call
from tests.conftest import CALL_WAV, CUSTOMER_WAV, RedisServer, service_config

ACME = "acme-token-0123456789abcdef"
GLOBEX = "globex-token-0123456789abcdef"
TOKENS = (f"acme:{ACME}", f"globex:{GLOBEX}")


def secured(config, **server):
    return replace(config, server=replace(config.server, auth_tokens=TOKENS, **server))


def plan(call_id, **kw):
    return CallPlan(call_id=call_id, agent_id=kw.pop("agent_id", "ag"), team=kw.pop("team", "tm"),
                    roles=kw.pop("roles", ("customer", "agent")), speed=kw.pop("speed", 0), **kw)


@pytest.fixture
def auth_server(redis_server, test_models, start_server):
    return start_server(secured(service_config(redis_server.url, test_models["angry"])))


def test_grpc_refuses_missing_and_unknown_credentials_and_other_tenants(auth_server):
    """No token or an unknown one is UNAUTHENTICATED; a valid token naming another tenant is PERMISSION_DENIED."""
    target = auth_server.target
    assert run_call(target, str(CUSTOMER_WAV), plan("g0", roles=("customer",))).error["code"] == "UNAUTHENTICATED"
    bad = run_call(target, str(CUSTOMER_WAV), plan("g1", roles=("customer",), token="not-a-known-token-123456"))
    assert bad.error == {"code": "UNAUTHENTICATED", "message": "the credential is not valid"}
    other = run_call(target, str(CUSTOMER_WAV), plan("g2", roles=("customer",), token=ACME, tenant="globex"))
    assert other.error["code"] == "PERMISSION_DENIED"


def test_a_tenant_call_alerts_only_on_that_tenants_channels(auth_server, subscribe, redis_server):
    """With acme's token the call belongs to acme: its alert is on {prefix}:acme:agent:..., the acme stream and calls
    channel, and nothing reaches the unprefixed channels."""
    p = auth_server.prefix
    sub = subscribe([f"{p}:acme:agent:ag", f"{p}:agent:ag", f"{p}:acme:calls", f"{p}:calls"])
    result = run_call(auth_server.target, str(CALL_WAV), plan("t1", token=ACME))
    assert result.error is None and len(result.of("alert")) == 1
    alert_id = result.of("alert")[0]["alert_id"]
    agent = sub.wait_for(lambda m: m[0].endswith(":agent:ag"))
    assert [(m[0], m[1]["alert_id"], m[1]["tenant"]) for m in agent] == [(f"{p}:acme:agent:ag", alert_id, "acme")]
    summaries = sub.wait_for(lambda m: m[1].get("type") == "call_summary")
    assert [m[0] for m in summaries] == [f"{p}:acme:calls"]
    client = redis_server.client()
    assert [e[1]["alert_id"] for e in client.xrange(f"{p}:acme:alerts")] == [alert_id]
    assert client.xlen(f"{p}:alerts") == 0


def test_same_call_id_in_two_tenants_does_not_collide(auth_server):
    """Call ids are unique per tenant: acme and globex can both stream call 'same' at once."""
    import threading

    results = {}

    def call(name, token):
        results[name] = run_call(auth_server.target, str(CUSTOMER_WAV), plan("same", roles=("customer",), token=token, speed=2))

    threads = [threading.Thread(target=call, args=(n, t)) for n, t in (("acme", ACME), ("globex", GLOBEX))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["acme"].error is None and results["globex"].error is None


def test_websocket_endpoints_need_credentials(auth_server):
    """Native and AudioHook: refused with HTTP 401 before the upgrade without a tenant token (AudioHook's X-API-KEY),
    admitted with one (AudioHook: for that tenant's organization); Twilio: the token custom parameter."""
    ws = auth_server.ws_target
    with pytest.raises(Exception) as refused:
        asyncio.run(_native_handshake(ws + "/"))
    assert "401" in str(refused.value)
    assert run_call(ws, str(CUSTOMER_WAV), plan("w1", roles=("customer",), token=ACME)).error is None
    twilio_without = run_call(ws, str(CUSTOMER_WAV), plan("w2", roles=("customer",), protocol="twilio"))
    assert twilio_without.close_code == 1008 and "credential is required" in twilio_without.error["message"]
    twilio = run_call(ws, str(CUSTOMER_WAV), plan("w3", roles=("customer",), protocol="twilio", token=ACME, tenant="acme"))
    assert twilio.error is None
    with pytest.raises(InvalidStatus) as hook_refused:
        run_call(ws, str(CUSTOMER_WAV), plan("w4", roles=("customer",), protocol="audiohook"))
    assert hook_refused.value.response.status_code == 401
    hook_other = run_call(ws, str(CUSTOMER_WAV), plan("w4b", roles=("customer",), protocol="audiohook", token=ACME, organization_id="globex"))
    assert hook_other.error["code"] == "DISCONNECT_UNAUTHORIZED"
    hook = run_call(ws, str(CUSTOMER_WAV), plan("w5", roles=("customer",), protocol="audiohook", token=ACME, organization_id="acme"))
    assert hook.error is None


async def _native_handshake(url):
    async with connect(url):
        pass


def _certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost (also its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callpulse-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_grpc_and_websocket_over_tls(redis_server, test_models, start_server, tmp_path):
    """With a certificate configured, grpcs:// and wss:// calls work with the CA; a plaintext client gets nowhere."""
    cert, key = _certificate(tmp_path)
    server = start_server(secured(service_config(redis_server.url, test_models["angry"]), tls_cert_file=cert, tls_key_file=key))
    port, ws_port = server.app.grpc_port, server.app.ws_port
    ok = run_call(f"grpcs://localhost:{port}", str(CALL_WAV), plan("tls1", token=ACME, ca_file=cert))
    assert ok.error is None and len(ok.of("alert")) == 1
    wss = run_call(f"wss://localhost:{ws_port}", str(CUSTOMER_WAV), plan("tls2", roles=("customer",), token=ACME, ca_file=cert))
    assert wss.error is None and wss.of("summary")
    plain = run_call(f"grpc://localhost:{port}", str(CUSTOMER_WAV), plan("tls3", roles=("customer",), token=ACME))
    assert plain.error["code"] == "UNAVAILABLE"
    untrusted = run_call(f"grpcs://localhost:{port}", str(CUSTOMER_WAV), plan("tls4", roles=("customer",), token=ACME))
    assert untrusted.error["code"] == "UNAVAILABLE"  # the system's CAs do not know the test certificate


class AclRedis(RedisServer):
    """A redis-server with ACL users and, optionally, TLS only."""

    def __init__(self, workdir: Path, tls: tuple[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.tls = tls

    def arguments(self) -> list[str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        acl = self.workdir / "users.acl"
        acl.write_text(
            "user default off\n"
            "user callpulse on >service-secret-pw ~* &* +@all\n"
            "user acme-desk on >acme-desk-pw resetchannels &sec:acme:* -@all +subscribe +psubscribe +ping\n"
        )
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--aclfile", str(acl)]
        if self.tls:
            cert, key = self.tls
            return args + ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                           "--tls-ca-cert-file", cert, "--tls-auth-clients", "no"]
        return args + ["--port", str(self.port)]

    def ping_client(self) -> redis.Redis:
        return self.client("callpulse", "service-secret-pw")

    def client(self, user, password):
        kwargs = {"ssl": True, "ssl_ca_certs": self.tls[0]} if self.tls else {}
        return redis.Redis(port=self.port, username=user, password=password, decode_responses=True, **kwargs)

    def url(self, user, password):  # noqa: D401 - overrides the plain property
        return f"{'rediss' if self.tls else 'redis'}://{user}:{password}@localhost:{self.port}/0"


@pytest.mark.parametrize("tls", [False, True], ids=["acl", "acl+tls"])
def test_redis_acl_user_and_tls_with_tenant_restricted_subscribers(tls, test_models, start_server, tmp_path, caplog):
    """The service publishes as an ACL user (over TLS with rediss:// and a CA file); a desk user limited to acme's channels
    receives acme's alert and is refused another tenant's channel; no secret reaches the log."""
    cert_key = _certificate(tmp_path) if tls else None
    own = AclRedis(tmp_path / "redis", tls=cert_key)
    own.start()
    try:
        config = service_config("redis://unused", test_models["angry"])
        config = replace(config, redis=replace(config.redis, url=own.url("callpulse", "service-secret-pw"), prefix="sec",
                                               tls_ca_file=cert_key[0] if tls else ""))
        with caplog.at_level(logging.DEBUG):
            server = start_server(secured(config))
            desk = own.client("acme-desk", "acme-desk-pw").pubsub(ignore_subscribe_messages=True)
            desk.subscribe("sec:acme:agent:ag")
            with pytest.raises(redis.exceptions.NoPermissionError):
                other = own.client("acme-desk", "acme-desk-pw").pubsub()
                other.subscribe("sec:globex:agent:ag")
                other.get_message(timeout=2)
            result = run_call(server.target, str(CALL_WAV), plan("acl1", token=ACME))
            assert result.error is None
            received = None
            deadline = time.monotonic() + 10
            while received is None and time.monotonic() < deadline:
                message = desk.get_message(timeout=0.2)
                if message:
                    received = json.loads(message["data"])
            desk.close()
            server.stop()
        assert received is not None and received["alert_id"] == result.of("alert")[0]["alert_id"]
        log_text = "\n".join(r.getMessage() for r in caplog.records)
        for secret in ("service-secret-pw", ACME, GLOBEX):
            assert secret not in log_text
        assert "starting with" in log_text and "<2 secrets>" in log_text
    finally:
        own.stop()


def _grpc_refusals(target, metadata, tenant="", count=50):
    """`count` concurrent calls with this metadata, each sending its CallConfig and streaming audio at once (the sync
    client, as clients.bridge does); returns the status codes."""
    from agentassist.v1 import agent_assist_pb2 as pb
    from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc

    codes = []

    def one(channel, index):
        def requests():
            yield pb.CallRequest(config=pb.CallConfig(call_id=f"wrong-{index}", agent_id="a", team="t", tenant=tenant,
                                                      audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=8000, channels=1)))
            for seq in range(1, 200):
                yield pb.CallRequest(audio=pb.AudioChunk(seq=seq, data=bytes(320)))

        try:
            list(pb_grpc.AgentAssistStub(channel).StreamCall(requests(), metadata=metadata, timeout=20))
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)

    import threading

    with grpc.insecure_channel(target.split("://")[1]) as channel:
        threads = [threading.Thread(target=one, args=(channel, i)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    return codes


async def _aio_refusals(target, metadata, count=50):
    """`count` concurrent asyncio-client calls that wait for the answer to their CallConfig before streaming audio (the
    pattern the README gives for asyncio bridges: grpcio's asyncio client can report INTERNAL instead of the server's
    status when it is still writing as the server ends the call, grpc/grpc#36066)."""
    from agentassist.v1 import agent_assist_pb2 as pb
    from agentassist.v1 import agent_assist_pb2_grpc as pb_grpc

    async def one(stub, index):
        call = stub.StreamCall(metadata=metadata)
        await call.write(pb.CallRequest(config=pb.CallConfig(call_id=f"aio-{index}", agent_id="a", team="t",
                                                             audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16LE, sample_rate_hz=8000,
                                                                                  channels=1))))
        try:
            first = await call.read()
            return first.WhichOneof("event")
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    async with grpc.aio.insecure_channel(target.split("://")[1]) as channel:
        stub = pb_grpc.AgentAssistStub(channel)
        return await asyncio.gather(*(one(stub, i) for i in range(count)))


def test_fifty_concurrent_wrong_credentials_are_all_refused_precisely(auth_server):
    """50 concurrent gRPC calls with an unknown token (streaming audio at once, and from asyncio clients that wait for the
    answer to their CallConfig) all get UNAUTHENTICATED, never INTERNAL; 50 with a valid token naming another tenant all
    get PERMISSION_DENIED."""
    target = auth_server.target
    wrong = [("authorization", "Bearer not-a-known-token-0123456789")]
    assert _grpc_refusals(target, wrong) == ["UNAUTHENTICATED"] * 50
    assert asyncio.run(_aio_refusals(target, wrong)) == ["UNAUTHENTICATED"] * 50
    assert _grpc_refusals(target, [("authorization", f"Bearer {ACME}")], tenant="globex") == ["PERMISSION_DENIED"] * 50
    assert auth_server.app.calls.active == 0 and auth_server.app.calls.handshakes == 0


PHONE_IDS = ("+14155550123", "+14155550124", "4155550125", "+14155550126", "+14155550127", "+14155550128")


def test_no_caller_identifiers_reach_the_log(redis_server, test_models, start_server, caplog):
    """Phone numbers used as call and agent ids, in Twilio custom parameters and in a refused score_roles never appear in
    the service's log, even where the refusal sent to the bridge quotes them (a duplicate call_id)."""
    import threading

    call_id, agent_id, twilio_call, twilio_agent, bad_roles, extra = PHONE_IDS
    with caplog.at_level(logging.DEBUG):
        server = start_server(service_config(redis_server.url, test_models["angry"]))
        first = {}
        running = threading.Thread(target=lambda: first.update(r=run_call(
            server.target, str(CALL_WAV), plan(call_id, agent_id=agent_id, speed=1))))
        running.start()
        deadline = time.monotonic() + 10
        while server.app.calls.active == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        duplicate = run_call(server.target, str(CALL_WAV), plan(call_id, agent_id=agent_id))
        native_duplicate = run_call(server.ws_target, str(CALL_WAV), plan(call_id, agent_id=agent_id))
        twilio_bad = asyncio.run(_twilio_custom(server.ws_target, {"agent_id": twilio_agent, "team": "t", "call_id": twilio_call,
                                                                  "score_roles": bad_roles, "caller": extra}))
        twilio_ok = run_call(server.ws_target, str(CALL_WAV), plan(twilio_call, agent_id=twilio_agent, protocol="twilio"))
        running.join(60)
        server.stop()
    assert duplicate.error["code"] == "ALREADY_EXISTS" and call_id in duplicate.error["message"]  # the bridge is told
    assert native_duplicate.error["code"] == "ALREADY_EXISTS"
    assert twilio_bad == 1008 and twilio_ok.close_code == 1000 and first["r"].error is None
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    log_text = "\n".join(r.getMessage() for r in server_side)
    assert "already_exists" in log_text and "invalid_argument" in log_text  # the refusals were logged...
    for identifier in PHONE_IDS:  # ...without the identifiers
        assert identifier not in log_text and identifier.lstrip("+") not in log_text, identifier


async def _twilio_custom(url, custom):
    start = {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"], "customParameters": custom,
             "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    try:
        async with connect(url + "/twilio") as ws:
            await ws.send(json.dumps({"event": "connected"}))
            await ws.send(json.dumps({"event": "start", "start": start}))
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
