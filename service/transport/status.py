"""The one table from the core's error kinds to what each transport answers: gRPC status, WebSocket close code
and the native protocol's error event code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    """How one error kind is reported on the wire."""

    grpc: str
    """grpc.StatusCode member name."""
    close: int
    """WebSocket close code."""

    @property
    def code(self) -> str:
        """The native protocol's error event code (mirrors the gRPC status name)."""
        return self.grpc


CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_TIMEOUT = 4408
CLOSE_DUPLICATE = 4409

ANSWERS: dict[str, Answer] = {
    "invalid_argument": Answer("INVALID_ARGUMENT", CLOSE_POLICY),
    "already_exists": Answer("ALREADY_EXISTS", CLOSE_DUPLICATE),
    "resource_exhausted": Answer("RESOURCE_EXHAUSTED", CLOSE_TRY_AGAIN),
    "unavailable": Answer("UNAVAILABLE", CLOSE_TRY_AGAIN),
    "deadline_exceeded": Answer("DEADLINE_EXCEEDED", CLOSE_TIMEOUT),
    "unauthenticated": Answer("UNAUTHENTICATED", CLOSE_POLICY),
    "permission_denied": Answer("PERMISSION_DENIED", CLOSE_POLICY),
}
INTERNAL = Answer("INTERNAL", CLOSE_INTERNAL)


def answer(kind: str) -> Answer:
    """What to answer for an error of this kind (INTERNAL / 1011 for kinds a caller should never see)."""
    return ANSWERS.get(kind, INTERNAL)
