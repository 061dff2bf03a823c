"""Genesys AudioHook v2 wire shapes: client text messages and the parameters the server reads (strict, pure, no I/O).

Protocol: https://developer.genesys.cloud/devapps/audiohook/protocol-reference
Reference implementation (error texts kept): https://github.com/purecloudlabs/audiohook-reference-implementation
Every refusal is an AudioHookProtocolError whose `info` goes into the `disconnect` message (reason "error");
texts name the parameter and never echo a caller's value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

from service.errors import InvalidArgument
from service.transport.wire_json import JsonTooDeep, boolean, integer, kind as json_kind, parse_json, roles_list, string

MAX_TEXT_CHARS = 65535
CLIENT_TYPES = ("open", "ping", "paused", "resumed", "discarded", "update", "error", "close")
MAX_SEQ = 2**53 - 1
MAX_DURATION_S = 10**9
"""Largest duration parsed (about 31 years); the session bounds gaps in the audio itself."""
MAX_ID_CHARS = 128
_DURATION = re.compile(r"PT([0-9]+(?:\.[0-9]*)?|\.[0-9]+)S")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class AudioHookProtocolError(Exception):
    """A client message the protocol does not allow; `info` is the disconnect message's info text."""

    reason = "error"
    """The disconnect message's reason: always "error" for a malformed message."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


@dataclass(frozen=True)
class ClientMessage:
    """A well-formed client message; its parameters are checked by the accessors below, per type."""

    type: str
    """At most 64 characters; not necessarily one of CLIENT_TYPES (the adapter answers unknown types)."""
    seq: int
    serverseq: int
    id: str
    position: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class OpenParameters:
    """What `open` carries that the server uses."""

    organization_id: str
    """May be empty; the adapter compares it with the Audiohook-Organization-Id header."""
    conversation_id: str
    media: dict[str, Any] | None
    """The offer selected by select_media, or None when nothing offered is supported."""
    custom: dict[str, Any]
    """customConfig, typed: agent_id and team (str, "" when absent), score_roles (tuple of Role, () when absent),
    realtime (bool, True when absent). Other customConfig keys are ignored."""


def parse_client_message(text: str, *, max_chars: int = MAX_TEXT_CHARS) -> ClientMessage:
    """Parse one client text message: size, JSON, depth and the common fields (version "2", id, type, seq and
    serverseq as non-negative integers, position, parameters object)."""
    if len(text) > max_chars:
        raise AudioHookProtocolError(f"Text message too large (>{(max_chars + 1) // 1024}K). Length: {len(text)}")
    try:
        doc = parse_json(text, max_chars=max_chars, what="Text message")
    except JsonTooDeep:
        raise AudioHookProtocolError("Text message nested too deeply") from None
    except InvalidArgument:
        raise AudioHookProtocolError("Text message not valid JSON") from None
    if type(doc) is not dict:
        _malformed(f"expected an object, got {json_kind(doc)}")
    if doc.get("version") != "2":
        _malformed('version must be "2"')
    for name, max_len in (("id", MAX_ID_CHARS), ("type", 64), ("position", 64)):
        try:
            string(doc.get(name), name, required=False, max_len=max_len)
        except InvalidArgument:
            _malformed(f"{name} must be a string of at most {max_len} characters")
    for name in ("seq", "serverseq"):
        value = doc.get(name)
        if type(value) is not int or not 0 <= value <= MAX_SEQ:
            _malformed(f"{name} must be a whole number from 0 to {MAX_SEQ}")
    if type(doc.get("parameters")) is not dict:
        _malformed("parameters must be an object")
    return ClientMessage(doc["type"], doc["seq"], doc["serverseq"], doc["id"], doc["position"], doc["parameters"])


def _malformed(why: str) -> NoReturn:
    raise AudioHookProtocolError(f"Message not a well-formed client message: {why}")


def _checked(check: Any, value: Any, where: str, **limits: Any) -> Any:
    """Run a wire_json getter, turning its InvalidArgument into the protocol's error."""
    try:
        return check(value, where, **limits)
    except InvalidArgument as exc:
        raise AudioHookProtocolError(f"Invalid Message: {exc}") from None


def open_parameters(params: dict[str, Any]) -> OpenParameters:
    """The parameters of `open`: organizationId (optional string), conversationId (required string), the media
    offer (selected, None when nothing is supported) and customConfig (optional object; see OpenParameters)."""
    organization = _checked(string, params.get("organizationId", ""), "open.parameters.organizationId", required=False,
                            max_len=MAX_ID_CHARS)
    conversation = _checked(string, params.get("conversationId"), "open.parameters.conversationId", max_len=MAX_ID_CHARS)
    config = params.get("customConfig")
    if config is None:  # absent, or null as the earlier adapter allowed
        config = {}
    elif type(config) is not dict:
        raise AudioHookProtocolError(f"Invalid Message: open.parameters.customConfig must be an object, got {json_kind(config)}")
    custom = {
        "agent_id": _checked(string, config.get("agent_id", ""), "open.parameters.customConfig.agent_id", required=False, max_len=128),
        "team": _checked(string, config.get("team", ""), "open.parameters.customConfig.team", required=False, max_len=128),
        "score_roles": _checked(roles_list, config.get("score_roles"), "open.parameters.customConfig.score_roles"),
        "realtime": _checked(boolean, config.get("realtime", True), "open.parameters.customConfig.realtime"),
    }
    return OpenParameters(organization, conversation, select_media(params.get("media")), custom)


def select_media(offered: Any) -> dict[str, Any] | None:
    """The offer to accept from `open`'s media list: PCMU 8 kHz stereo (external + internal, in the offered order),
    then external only, then internal only; None when nothing offered is supported (or the list is malformed)."""
    if type(offered) is not list:
        return None
    candidates = []
    for m in offered:
        if type(m) is not dict or m.get("type") != "audio" or m.get("format") != "PCMU":
            continue
        rate, channels = m.get("rate"), m.get("channels")
        if type(rate) is not int or rate != 8000 or type(channels) is not list or not 1 <= len(channels) <= 2:
            continue
        if all(type(c) is str and c in ("external", "internal") for c in channels) and len(set(channels)) == len(channels):
            candidates.append(channels)
    for wanted in (2, ["external"], ["internal"]):
        for channels in candidates:
            if (wanted == 2 and len(channels) == 2) or channels == wanted:
                return {"type": "audio", "format": "PCMU", "channels": list(channels), "rate": 8000}
    return None


def duration_ms(value: Any, where: str) -> int:
    """An ISO 8601 duration in seconds ("PT1.5S") as whole milliseconds, at most MAX_DURATION_S seconds."""
    match = _DURATION.fullmatch(value) if type(value) is str and len(value) <= 64 else None
    if not match:
        raise AudioHookProtocolError(f"Invalid Message: {where} must be an ISO 8601 duration like PT1.5S")
    seconds = float(match.group(1))
    if seconds > MAX_DURATION_S:
        raise AudioHookProtocolError(f"Invalid Message: {where} is longer than {MAX_DURATION_S} s")
    return int(round(seconds * 1000))


def discarded_ms(params: dict[str, Any], kind: str) -> int | None:
    """The `discarded` duration of a `resumed` or `discarded` message (`kind`) in ms; None when absent."""
    if "discarded" not in params:
        return None
    return duration_ms(params["discarded"], f"{kind}.parameters.discarded")


def close_reason(params: dict[str, Any]) -> str:
    """The `reason` of a `close` message: a token of letters, digits, "_" and "-" up to 64 characters; "end" when absent."""
    reason = params.get("reason", "end")
    if type(reason) is not str or not _TOKEN.fullmatch(reason):
        raise AudioHookProtocolError("Invalid Message: close.parameters.reason must be a word of at most 64 letters, "
                                     "digits, '_' or '-'")
    return reason


def error_code(params: dict[str, Any]) -> int | None:
    """The `code` of an `error` message (an HTTP-like status, 0 to 999); None when absent."""
    if "code" not in params:
        return None
    return _checked(integer, params["code"], "error.parameters.code", lo=0, hi=999)
