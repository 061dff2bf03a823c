"""Caller authentication: bearer tokens / API keys, each bound to one tenant.

A call is admitted only with a known credential (gRPC metadata `authorization: Bearer TOKEN` or
`x-api-key: TOKEN`; the same WebSocket headers; Twilio's `token` custom parameter), and belongs to
that credential's tenant: a call that names another tenant is refused, one that names none gets
it. Its alerts and events then go to channels under `{prefix}:{tenant}:` only, so Redis ACLs can
keep each tenant's subscribers to their own channels. With no credentials configured the service
accepts any caller (development only; logged at start).

Tokens are kept as SHA-256 digests and compared in constant time; none is ever logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from typing import Iterable

from service.domain import CallConfig
from service.errors import ConfigError, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_token_entries(entries: Iterable[str], where: str) -> dict[str, str]:
    """'tenant:token' entries -> {token: tenant}; raises ConfigError naming the bad entry (never the token)."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        tenant, sep, token = entry.partition(":")
        tenant, token = tenant.strip(), token.strip()
        if not sep or not tenant or not token:
            raise ConfigError(f"{where}: entry {number} must be tenant:token")
        if len(token) < 16:
            raise ConfigError(f"{where}: entry {number} (tenant {tenant!r}): the token must be at least 16 characters")
        if any(c.isspace() or c in ":*?[]" for c in tenant) or len(tenant) > 128:
            raise ConfigError(f"{where}: entry {number}: tenant {tenant!r} must be at most 128 characters without spaces or ':*?[]'")
        if token in tokens:
            raise ConfigError(f"{where}: entry {number} (tenant {tenant!r}) repeats a token")
        tokens[token] = tenant
    return tokens


def load_tokens(inline: Iterable[str], path: str) -> dict[str, str]:
    """Tokens from the configuration: inline 'tenant:token' entries plus a file of one entry per line."""
    tokens = parse_token_entries(inline, "CALLPULSE_AUTH_TOKENS")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the auth tokens file {path!r}: {exc.strerror}") from None
        from_file = parse_token_entries(lines, path)
        clash = set(from_file) & set(tokens)
        if clash:
            raise ConfigError(f"{path}: a token is also given in CALLPULSE_AUTH_TOKENS")
        tokens.update(from_file)
    return tokens


def credential_from(authorization: str | None, api_key: str | None) -> str | None:
    """The caller's credential from an `authorization: Bearer X` or an `x-api-key: X` header."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None


class Authenticator:
    """Maps credentials to tenants; disabled (everyone admitted) when it holds no token."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._by_digest = {_digest(token): tenant for token, tenant in tokens.items()}
        self.tenants = frozenset(tokens.values())

    @property
    def enabled(self) -> bool:
        return bool(self._by_digest)

    def tenant_for(self, credential: str | None) -> str | None:
        """The credential's tenant (None when authentication is off); raises Unauthenticated."""
        if not self.enabled:
            return None
        if not credential:
            raise Unauthenticated("a credential is required: send 'authorization: Bearer TOKEN' or 'x-api-key: TOKEN'")
        digest = _digest(credential)
        found = None
        for known, tenant in self._by_digest.items():  # every entry is compared: no early exit to time
            if hmac.compare_digest(digest, known):
                found = tenant
        if found is None:
            raise Unauthenticated("the credential is not valid")
        return found

    def bind(self, config: CallConfig, credential: str | None) -> CallConfig:
        """The call as admitted: its tenant is the credential's; naming another tenant is PermissionDenied."""
        tenant = self.tenant_for(credential)
        if tenant is None:
            return config
        if config.tenant and config.tenant != tenant:
            raise PermissionDenied(f"the call names tenant {config.tenant!r} but the credential belongs to another tenant")
        return dataclasses.replace(config, tenant=tenant)
