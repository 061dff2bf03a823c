"""Typed errors of the core; each transport translates them once into its own status codes."""

from __future__ import annotations


class CallPulseError(Exception):
    """Base of every error the service reports to a caller; `kind` is a stable machine name."""

    kind = "internal"


class ConfigError(CallPulseError):
    """A configuration value is invalid."""

    kind = "config"


class InvalidArgument(CallPulseError):
    """The caller sent something malformed or unsupported; the message says what and where."""

    kind = "invalid_argument"


class CallAlreadyActive(CallPulseError):
    """A call with the same call_id is already streaming."""

    kind = "already_exists"


class CapacityExceeded(CallPulseError):
    """The server is at its concurrent-call limit."""

    kind = "resource_exhausted"


class CallLimitExceeded(CallPulseError):
    """A call went past a time limit (idle timeout, maximum duration); it is ended with its summary."""

    kind = "deadline_exceeded"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class HandshakeTimeout(CallPulseError):
    """A connection did not start its call (CallConfig, start, open) within the handshake timeout."""

    kind = "deadline_exceeded"


class ModelLoadError(CallPulseError):
    """The emotion model could not be loaded."""

    kind = "model_load"


class RulesError(CallPulseError):
    """A rules file is invalid; the message names the rule and the field."""

    kind = "rules"


class ServiceUnavailable(CallPulseError):
    """The service is not ready (model not loaded yet) or is shutting down."""

    kind = "unavailable"


class Unauthenticated(CallPulseError):
    """No credential, or one the service does not know."""

    kind = "unauthenticated"


class PermissionDenied(CallPulseError):
    """The credential is valid but does not allow this (another tenant's call)."""

    kind = "permission_denied"
