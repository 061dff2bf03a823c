"""WebSocket server: one port for the native protocol (/), Twilio Media Streams (/twilio) and Genesys AudioHook
(/audiohook), plus /healthz and /readyz. Checks what can be checked at the HTTP upgrade (platform
signatures, credentials, the bound on connections waiting to start) and hands each connection to its
protocol's adapter (ws_native, ws_twilio, ws_audiohook).

Close codes (documented in README.md, "WebSocket"; kinds map to codes in status.py):
  1000 call ended normally        1003 binary frame where only text is defined (Twilio)
  1007 a text frame that is not UTF-8 (sent by the websockets library)
  1008 invalid input / protocol violation      1009 message larger than max_message_bytes
  1011 internal error             1013 server full, not ready or shutting down (try again later)
  4408 idle timeout, maximum call duration or handshake timeout   4409 call_id already streaming
"""

from __future__ import annotations

import hmac
import logging
import ssl
import time
from http import HTTPStatus
from typing import Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve

from service import metrics
from service.auth import credential_from
from service.calls import CallRegistry
from service.config import IngestConfig, ServerConfig
from service.domain import Role
from service.errors import ConfigError, Unauthenticated
from service.redact import redact
from service.transport.signatures import NonceCache, SignatureError, decode_client_secret, verify_audiohook, verify_twilio
from service.transport.ws_audiohook import AudioHookCall
from service.transport.ws_native import NativeCall
from service.transport.ws_twilio import TwilioCall

log = logging.getLogger(__name__)
# The websockets library traces every frame at DEBUG, and frames carry transcripts and caller details:
# our connections log through a logger that never goes below INFO, whatever the service's level.
_CONNECTION_LOG = logging.getLogger("callpulse.websockets")

NATIVE_PATHS = ("/", "/calls")
TWILIO_PATH = "/twilio"
AUDIOHOOK_PATH = "/audiohook"


class WebSocketServer:
    """One websockets server for all protocols, on its own port, sharing the call registry with gRPC."""

    def __init__(self, config: ServerConfig, calls: CallRegistry, ingest: IngestConfig, ready: Callable[[], bool],
                 degraded: Callable[[], str | None] = lambda: None) -> None:
        """`ready`: calls are accepted; `degraded`: why the service runs with a dependency away (None: it does not)."""
        self._config = config
        self._calls = calls
        self._ingest = ingest
        self._ready = ready
        self._degraded = degraded
        self._inbound_role = Role(config.twilio_inbound_role)
        self._audiohook_key = decode_client_secret(config.audiohook_client_secret) if config.audiohook_client_secret else None
        self._audiohook_nonces = NonceCache()
        self._server = None
        self.port = 0

    async def start(self) -> int:
        _CONNECTION_LOG.setLevel(logging.INFO)
        self._server = await serve(
            self._handle,
            self._config.host,
            self._config.ws_port,
            process_request=self._process_request,
            max_size=self._config.max_message_bytes,
            max_queue=32,
            ssl=self._tls_context(),
            logger=_CONNECTION_LOG,
            reuse_port=self._config.reuse_port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _tls_context(self) -> ssl.SSLContext | None:
        """WSS when a certificate is configured."""
        if not self._config.tls_cert_file:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self._config.tls_cert_file, self._config.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate and key: {exc}") from None
        return context

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request):
        path = urlsplit(request.path).path
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self._ready():
                # Still 200 when degraded: calls are served (alerts wait in the buffer), so the
                # instance must stay in rotation.
                why = self._degraded()
                return connection.respond(HTTPStatus.OK, f"degraded: {why}\n" if why else "ready\n")
            why = self._degraded() if self._calls.accepting else None  # accepting calls, yet not ready: alerts are being lost
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"not ready: {why}\n" if why else "not ready: the model is loading or the service is stopping\n")
        if path not in NATIVE_PATHS + (TWILIO_PATH, AUDIOHOOK_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, "no such endpoint; use /, /twilio or /audiohook\n")
        refused = self._check_signature(path, request) or self._check_credential(path, request)
        if refused is not None:
            metrics.error("unauthenticated")
            log.info("refused a %s connection: %s", path, redact(refused[1]))
            return connection.respond(refused[0], f"{refused[1]}\n")
        if self._calls.handshakes_full:
            metrics.handshake_ended("busy", self._calls.handshakes)
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections are waiting to start a call; try again\n")
        return None

    def _check_credential(self, path: str, request) -> tuple[HTTPStatus, str] | None:
        """The caller's credential, wherever the platform sends it with the upgrade: the native protocol's
        Authorization / X-API-Key headers and AudioHook's X-API-KEY. (Twilio cannot set headers: its
        token comes in `start`, within the handshake timeout; its X-Twilio-Signature is checked above.)"""
        headers = request.headers
        if path == AUDIOHOOK_PATH:
            key = headers.get("X-API-KEY", "")
            if not key:
                return HTTPStatus.UNAUTHORIZED, "Missing X-API-KEY"
            keys = self._config.audiohook_api_keys
            if keys and not any(hmac.compare_digest(key, k) for k in keys):
                return HTTPStatus.UNAUTHORIZED, "Unknown X-API-KEY"
            credential = key
        elif path in NATIVE_PATHS:
            credential = credential_from(headers.get("Authorization"), headers.get("X-API-Key"))
        else:
            return None
        if self._calls.auth_required:
            try:
                self._calls.check_credential(credential)
            except Unauthenticated as exc:
                return HTTPStatus.UNAUTHORIZED, str(exc)
        return None

    def _check_signature(self, path: str, request) -> tuple[HTTPStatus, str] | None:
        """The platform's request signature where one is configured: None when valid (or not required),
        else the HTTP status and reason to refuse the upgrade with."""
        headers = {name.lower(): value for name, value in request.headers.raw_items()}
        host = headers.get("host", "")
        if path == TWILIO_PATH and self._config.twilio_auth_token:
            # Twilio signs the URL of its <Stream>; without public_ws_url that is this Host, and behind a
            # TLS-terminating proxy the scheme Twilio used is not known here, so both are tried.
            bases = [self._config.public_ws_url.rstrip("/")] if self._config.public_ws_url else [f"wss://{host}", f"ws://{host}"]
            errors = []
            for base in bases:
                try:
                    verify_twilio(self._config.twilio_auth_token, headers.get("x-twilio-signature"), base + request.path)
                    break
                except SignatureError as exc:
                    errors.append(str(exc))
            else:
                return HTTPStatus.FORBIDDEN, errors[0]
        if path == AUDIOHOOK_PATH and self._audiohook_key is not None:
            try:
                verify_audiohook(self._audiohook_key, request.path, host, headers, time.time(), self._audiohook_nonces)
            except SignatureError as exc:
                return HTTPStatus.UNAUTHORIZED, str(exc)
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        path = urlsplit(connection.request.path).path
        timeout = self._config.handshake_timeout_s
        if path == TWILIO_PATH:
            await TwilioCall(connection, self._calls, self._ingest, timeout, self._inbound_role).run()
        elif path == AUDIOHOOK_PATH:
            await AudioHookCall(connection, self._calls, self._ingest, timeout).run()
        else:
            await NativeCall(connection, self._calls, self._ingest, timeout).run()
