"""Platform request signatures: Twilio's X-Twilio-Signature and AudioHook's HTTP message signature, checked against the
platforms' published examples and on the live WebSocket server's upgrade."""

import asyncio
import time
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clients.bridge import CallPlan, run_call
from clients.bridge import main as bridge_main
from service.config import ConfigError, ServerConfig, config_as_dict, ServiceConfig
from service.transport.signatures import (
    NonceCache,
    SignatureError,
    decode_client_secret,
    sign_audiohook,
    twilio_signature,
    verify_audiohook,
    verify_twilio,
)
from tests.conftest import CUSTOMER_WAV, service_config

# The example request of Genesys' AudioHook documentation (session walkthrough), with its published signature.
GENESYS_SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
GENESYS_HEADERS = {
    "host": "audiohook.example.com",
    "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
    "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
    "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
    "x-api-key": "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh",
    "signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
    "signature-input": 'sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
                       '"audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
                       'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=3282026430',
}
GENESYS_TARGET = "/api/v1/voicebiometrics/ws"
GENESYS_NOW = 1641013260.0


def test_twilio_signature_matches_twilios_published_examples():
    """The signature of Twilio's own validator test (token 12345, a URL with POST parameters) is reproduced, and the
    same URL with the default port gives the other published value."""
    uri = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
              "Caller": "+14158675309"}
    assert twilio_signature("12345", uri, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", uri.replace(".com", ".com:443"), params) == "kvajT1Ptam85bY51eRf/AJRuM3w="


def test_verify_twilio_accepts_the_url_with_or_without_the_default_port_and_nothing_else():
    """A stream URL signed with or without :443 verifies either way; another token, URL or no header is refused."""
    signed = twilio_signature("tok", "wss://callpulse.example.com/twilio")
    verify_twilio("tok", signed, "wss://callpulse.example.com:443/twilio")
    verify_twilio("tok", twilio_signature("tok", "wss://callpulse.example.com:443/twilio"), "wss://callpulse.example.com/twilio")
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio("other", signed, "wss://callpulse.example.com/twilio")
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio("tok", signed, "wss://callpulse.example.com/audiohook")
    with pytest.raises(SignatureError, match="missing"):
        verify_twilio("tok", None, "wss://callpulse.example.com/twilio")


def test_audiohook_signature_matches_genesys_published_example():
    """Genesys' example request verifies with its client secret, and signing the same fields reproduces its headers."""
    key = decode_client_secret(GENESYS_SECRET)
    verify_audiohook(key, GENESYS_TARGET, "audiohook.example.com", GENESYS_HEADERS, GENESYS_NOW)
    signed = sign_audiohook(key, GENESYS_TARGET, "audiohook.example.com", GENESYS_HEADERS,
                            keyid=GENESYS_HEADERS["x-api-key"], nonce="VGhpc0lzQVVuaXF1ZU5vbmNl",
                            created=1641013200, expires=3282026430)
    assert signed == {"Signature": GENESYS_HEADERS["signature"], "Signature-Input": GENESYS_HEADERS["signature-input"]}


@pytest.mark.parametrize("change, message", [
    ({"audiohook-session-id": "00000000-84d3-4570-ac13-9a62d8f514c0"}, "does not match"),
    ({"x-api-key": "another-key"}, "keyid is not the request's X-API-KEY"),
    ({"signature": None}, "not signed"),
    ({"signature-input": GENESYS_HEADERS["signature-input"].replace(' "audiohook-session-id"', "")}, "does not cover audiohook-session-id"),
    ({"signature-input": GENESYS_HEADERS["signature-input"].replace("hmac-sha256", "rsa-pss-sha512")}, "not hmac-sha256"),
    ({"signature": "sig2=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"}, "no 'sig1' entry"),
])
def test_audiohook_signatures_that_do_not_hold_are_refused_with_the_reason(change, message):
    """An altered header, a keyid that is not the API key, a missing signature, too little coverage, another
    algorithm or a label mismatch is refused, saying which."""
    headers = {k: v for k, v in {**GENESYS_HEADERS, **change}.items() if v is not None}
    with pytest.raises(SignatureError, match=message):
        verify_audiohook(decode_client_secret(GENESYS_SECRET), GENESYS_TARGET, "audiohook.example.com", headers, GENESYS_NOW)


def test_audiohook_signature_time_window():
    """A signature past its expires is refused, one created more than a minute ahead of our clock is refused."""
    key = decode_client_secret(GENESYS_SECRET)
    with pytest.raises(SignatureError, match="expired"):
        verify_audiohook(key, GENESYS_TARGET, "audiohook.example.com", GENESYS_HEADERS, 3282026431.0)
    with pytest.raises(SignatureError, match="in the future"):
        verify_audiohook(key, GENESYS_TARGET, "audiohook.example.com", GENESYS_HEADERS, 1641013200.0 - 61)


def test_a_replayed_audiohook_signature_is_refused_until_it_expires():
    """The same signed request a second time is refused as a replay; a nonce is forgotten once its signature expired,
    and the cache never holds more than its bound."""
    key = decode_client_secret(GENESYS_SECRET)
    nonces = NonceCache()
    verify_audiohook(key, GENESYS_TARGET, "audiohook.example.com", GENESYS_HEADERS, GENESYS_NOW, nonces)
    with pytest.raises(SignatureError, match="replayed"):
        verify_audiohook(key, GENESYS_TARGET, "audiohook.example.com", GENESYS_HEADERS, GENESYS_NOW + 5, nonces)
    small = NonceCache(max_entries=3, max_age_s=100)
    small.use("a", expires=50, now=0)
    with pytest.raises(SignatureError):
        small.use("a", expires=50, now=49)
    small.use("a", expires=150, now=51)  # the first use expired at 50
    for nonce in "bcde":
        small.use(nonce, expires=None, now=60)
    assert len(small) == 3


def test_secrets_are_validated_and_never_shown():
    """A client secret that is not base64 is a ConfigError; both platform secrets are masked in the start-up config."""
    with pytest.raises(ConfigError, match="base64"):
        ServerConfig(audiohook_client_secret="not base64!")
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        ServerConfig(public_ws_url="https://callpulse.example.com")
    shown = config_as_dict(ServiceConfig(server=ServerConfig(audiohook_client_secret=GENESYS_SECRET, twilio_auth_token="tw-secret")))
    assert shown["server.audiohook_client_secret"] == "<secret>" and shown["server.twilio_auth_token"] == "<secret>"


def _plan(call_id, **kw):
    return CallPlan(call_id=call_id, agent_id="ag", team="tm", roles=("customer",), speed=0, **kw)


def test_the_server_refuses_unsigned_platform_upgrades_and_admits_signed_ones(redis_server, test_models, start_server, subscribe,
                                                                              capsys):
    """With a Twilio auth token and an AudioHook client secret configured, an unsigned or wrongly signed upgrade is refused
    before the WebSocket opens (Twilio 403, AudioHook 401) and a call signed as the platform signs goes through."""
    secret = "c2VjcmV0LWNsaWVudC1rZXktZm9yLWNhbGxwdWxzZQ=="
    config = service_config(redis_server.url, test_models["angry"])
    server = start_server(replace(config, server=replace(config.server, twilio_auth_token="tw-token", audiohook_client_secret=secret)))
    ws = server.ws_target
    sub = subscribe([f"{server.prefix}:calls"])

    for kw, status in [({}, 403), ({"twilio_auth_token": "wrong"}, 403)]:
        with pytest.raises(InvalidStatus) as refused:
            run_call(ws, str(CUSTOMER_WAV), _plan("sig-t0", protocol="twilio", **kw))
        assert refused.value.response.status_code == status
    assert bridge_main(["--target", ws, "--protocol", "twilio", "--wav", str(CUSTOMER_WAV), "--call-id", "sig-t0",
                        "--agent-id", "ag", "--team", "tm", "--speed", "0"]) == 3
    assert "refused the connection: HTTP 403 the X-Twilio-Signature header is missing" in capsys.readouterr().err
    twilio = run_call(ws, str(CUSTOMER_WAV), _plan("sig-t1", protocol="twilio", twilio_auth_token="tw-token"))
    assert twilio.error is None

    for kw in ({}, {"audiohook_client_secret": "d3Jvbmctc2VjcmV0"}):
        with pytest.raises(InvalidStatus) as refused:
            run_call(ws, str(CUSTOMER_WAV), _plan("sig-a0", protocol="audiohook", **kw))
        assert refused.value.response.status_code == 401
    replayed = asyncio.run(_upgrade_twice(ws + "/audiohook", secret))
    assert replayed == [None, 401]
    hook = run_call(ws, str(CUSTOMER_WAV), _plan("sig-a1", protocol="audiohook", audiohook_client_secret=secret))
    assert hook.error is None and any(e.get("type") == "closed" for e in hook.events)
    summaries = sub.wait_for(lambda m: m[1]["type"] == "call_summary" and m[1]["call_id"] in ("sig-t1", "sig-a1")
                             and len({x[1]["call_id"] for x in sub.messages if x[1]["type"] == "call_summary"}) >= 2)
    assert sorted(m[1]["call_id"] for m in summaries) == ["sig-a1", "sig-t1"]  # only the signed calls ever started
    started = [m[1]["call_id"] for m in sub.messages if m[1]["type"] == "call_started"]
    assert sorted(started) == ["sig-a1", "sig-t1"]


async def _upgrade_twice(url, secret):
    """Open the same signed AudioHook upgrade twice, closing at once; the HTTP status of each refusal (None: opened)."""
    target = urlsplit(url)
    headers = {"Audiohook-Organization-Id": "org", "Audiohook-Correlation-Id": "corr", "Audiohook-Session-Id": "sess",
               "X-API-KEY": "key-1"}
    now = int(time.time())
    headers.update(sign_audiohook(decode_client_secret(secret), target.path, target.netloc,
                                  {k.lower(): v for k, v in headers.items()}, keyid="key-1", nonce="n-1",
                                  created=now, expires=now + 60))
    outcomes = []
    for _ in range(2):
        try:
            async with connect(url, additional_headers=headers):
                outcomes.append(None)
        except InvalidStatus as exc:
            outcomes.append(exc.response.status_code)
    return outcomes
