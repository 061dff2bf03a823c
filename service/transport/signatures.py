"""Request signatures of the telephony platforms on the WebSocket upgrade: Twilio's X-Twilio-Signature and
AudioHook's HTTP message signature. Both prove that a connection comes from the platform account that
holds the shared secret, whatever credential the call then presents.

Twilio (https://www.twilio.com/docs/usage/security#validating-requests): base64 HMAC-SHA1, keyed with
the account's auth token, of the full URL Twilio requested followed by the POST parameters sorted by
name (a Media Streams upgrade is a GET: the URL alone). Twilio's own validators accept the URL with or
without the scheme's default port, and so does this one.

AudioHook (https://developer.genesys.cloud/devapps/audiohook/protocol-reference, after the IETF HTTP
message signatures draft): `Signature-Input: sig1=("@request-target" "@authority" ...);keyid=...;
nonce=...;alg="hmac-sha256";created=...;expires=...` and `Signature: sig1=:BASE64:`, an HMAC-SHA256
keyed with the base64-decoded client secret over one line `"name": value` per covered component and
a last line `"@signature-params": <the Signature-Input value>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}

AUDIOHOOK_COVERED = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
                     "audiohook-correlation-id", "x-api-key")
"""What an AudioHook signature must cover (what Genesys Cloud signs), so it cannot be replayed for
another endpoint, session or key."""
AUDIOHOOK_CLOCK_SKEW_S = 60
"""A signature `created` this far in the future is still accepted (clocks differ)."""


class SignatureError(Exception):
    """A request signature is missing, malformed, expired or does not match."""


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The X-Twilio-Signature Twilio sends for a request to `url` with these POST parameters."""
    data = url + "".join(name + value for name, value in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _port_variants(url: str) -> list[str]:
    """`url` as given, without its port when that is the scheme's default, and with the default port added."""
    parts = urlsplit(url)
    default = DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    variants = [url]
    if parts.port is not None:
        variants.append(urlunsplit(parts._replace(netloc=prefix + host)))
    elif default is not None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return variants


def verify_twilio(auth_token: str, signature: str | None, url: str) -> None:
    """Raise SignatureError unless `signature` is Twilio's for a GET of `url` (with or without its port)."""
    if not signature:
        raise SignatureError("the X-Twilio-Signature header is missing")
    for candidate in _port_variants(url):
        if hmac.compare_digest(twilio_signature(auth_token, candidate).encode(), signature.encode()):
            return
    raise SignatureError("X-Twilio-Signature does not match this URL and the configured Twilio auth token")


def decode_client_secret(secret: str) -> bytes:
    """The AudioHook client secret as the key bytes (Genesys Cloud takes it base64-encoded); ValueError if it is not base64."""
    try:
        key = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the AudioHook client secret must be base64, as entered in Genesys Cloud") from None
    if not key:
        raise ValueError("the AudioHook client secret is empty")
    return key


_LABELLED = re.compile(r"^\s*([A-Za-z0-9_.*-]+)=(.*)$", re.S)


def _signature_base(components: list[str], params: str, request_target: str, authority: str, headers: Mapping[str, str]) -> str:
    lines = []
    for name in components:
        if name == "@request-target":
            value = request_target
        elif name == "@authority":
            value = authority.lower()
        elif name.startswith("@"):
            raise SignatureError(f"Signature-Input covers {name!r}, which is not supported")
        else:
            if name not in headers:
                raise SignatureError(f"Signature-Input covers the {name} header, which the request does not have")
            value = headers[name].strip()
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines)


def sign_audiohook(key: bytes, request_target: str, authority: str, headers: Mapping[str, str], *, keyid: str,
                   nonce: str, created: int, expires: int, components: tuple[str, ...] = AUDIOHOOK_COVERED) -> dict[str, str]:
    """The Signature and Signature-Input headers an AudioHook client sends (header names in `headers` lower-case)."""
    inner = " ".join(f'"{name}"' for name in components)
    params = f'({inner});keyid="{keyid}";nonce="{nonce}";alg="hmac-sha256";created={created};expires={expires}'
    base = _signature_base(list(components), params, request_target, authority, headers)
    digest = base64.b64encode(hmac.new(key, base.encode(), hashlib.sha256).digest()).decode()
    return {"Signature-Input": f"sig1={params}", "Signature": f"sig1=:{digest}:"}


class NonceCache:
    """The nonces of signatures already accepted, so that a captured upgrade cannot be replayed.

    Bounded: each nonce is kept until its signature expires (at most `max_age_s`), and when `max_entries`
    are held the oldest is forgotten first (a replay of that one would then pass)."""

    def __init__(self, max_entries: int = 100_000, max_age_s: float = 3600.0) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max_entries = max_entries
        self._max_age_s = max_age_s

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, nonce: str, expires: float | None, now: float) -> None:
        """Record `nonce` as used until `expires`; SignatureError if it was used before and has not expired."""
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        if nonce in self._seen and self._seen[nonce] > now:
            raise SignatureError("the signature nonce was used before (a replayed request)")
        until = min(expires if expires is not None else now + self._max_age_s, now + self._max_age_s)
        self._seen.pop(nonce, None)
        self._seen[nonce] = until
        while len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)


def verify_audiohook(key: bytes, request_target: str, authority: str, headers: Mapping[str, str], now: float,
                     nonces: NonceCache | None = None) -> None:
    """Raise SignatureError unless the request carries a valid, unexpired AudioHook signature made with `key`
    over at least AUDIOHOOK_COVERED, whose keyid is the request's X-API-KEY, and (with `nonces`) whose nonce
    was not seen before. `headers`: lower-case names."""
    signature_input, signature = headers.get("signature-input"), headers.get("signature")
    if not signature_input or not signature:
        raise SignatureError("the request is not signed (Signature and Signature-Input headers are required)")
    matched = _LABELLED.match(signature_input)
    if matched is None:
        raise SignatureError("Signature-Input is malformed")
    label, params = matched.group(1), matched.group(2).strip()
    inner = re.match(r'^\(([^()]*)\)(.*)$', params, re.S)
    if inner is None:
        raise SignatureError("Signature-Input has no component list")
    components = re.findall(r'"([^"]*)"', inner.group(1))
    if len(components) != len(inner.group(1).split()):
        raise SignatureError("Signature-Input components must be quoted names")
    attributes: dict[str, str] = {}
    for item in inner.group(2).split(";"):
        if not item.strip():
            continue
        name, _, value = item.strip().partition("=")
        attributes[name.lower()] = value.strip('"')
    missing = [name for name in AUDIOHOOK_COVERED if name not in components]
    if missing:
        raise SignatureError(f"the signature does not cover {', '.join(missing)}")
    if attributes.get("alg", "hmac-sha256").lower() != "hmac-sha256":
        raise SignatureError(f"signature algorithm {attributes['alg']!r} is not hmac-sha256")
    if attributes.get("keyid") != headers.get("x-api-key", "").strip():
        raise SignatureError("the signature keyid is not the request's X-API-KEY")
    try:
        created = int(attributes["created"]) if "created" in attributes else None
        expires = int(attributes["expires"]) if "expires" in attributes else None
    except ValueError:
        raise SignatureError("signature created/expires must be integers") from None
    if expires is not None and now > expires:
        raise SignatureError("the signature has expired")
    if created is not None and created > now + AUDIOHOOK_CLOCK_SKEW_S:
        raise SignatureError("the signature was created in the future")
    values = dict(
        (m.group(1), m.group(2)) for m in re.finditer(r'([A-Za-z0-9_.*-]+)=:([A-Za-z0-9+/=]*):', signature)
    )
    given = values.get(label)
    if given is None:
        raise SignatureError(f"the Signature header has no {label!r} entry")
    base = _signature_base(components, params, request_target, authority, headers)
    expected = base64.b64encode(hmac.new(key, base.encode(), hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise SignatureError("the AudioHook signature does not match (wrong client secret, or the request was altered)")
    if nonces is not None:
        if not attributes.get("nonce"):
            raise SignatureError("the signature has no nonce")
        nonces.use(attributes["nonce"], expires, now)
