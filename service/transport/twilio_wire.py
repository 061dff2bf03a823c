"""Twilio Media Streams wire shapes: one JSON text message in, one typed message out (strict, pure, no I/O).

Message formats: https://www.twilio.com/docs/voice/media-streams/websocket-messages
Twilio sends connected, start, media, mark, dtmf and stop; numbers inside `media` (chunk, timestamp) come as strings.
Every refusal is an InvalidArgument naming the field; custom parameter values and ids are never echoed.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from service.errors import InvalidArgument
from service.transport.wire_json import digits, kind, obj, parse_json, string

MAX_MESSAGE_CHARS = 256 * 1024
"""A suggested `max_chars`: a start message with 64 custom parameters of 1024 characters fits, escapes included."""
MAX_CUSTOM_PARAMETERS = 64
MAX_PARAMETER_NAME = 64
MAX_PARAMETER_VALUE = 1024
MAX_SID = 64
MAX_EVENT_SHOWN = 40
TRACKS = ("inbound", "outbound")
MAX_JS_INTEGER = 2**53 - 1
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class TwilioStart:
    """`start`: the stream's ids, its tracks in channel order, and the <Parameter> custom parameters."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    """"inbound" and/or "outbound", distinct; media messages name one of them."""
    custom: Mapping[str, str] = field(repr=False)
    """customParameters, read-only; values may be personal data and stay out of the repr."""


@dataclass(frozen=True)
class TwilioMedia:
    """`media`: one chunk of base64-decoded mu-law audio of one track."""

    track: str
    """As sent (a string); the adapter checks it was announced in start.tracks."""
    chunk: int
    """Chunk number, from 1."""
    timestamp_ms: int
    """Offset of the chunk from the start of the stream."""
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class TwilioStop:
    """`stop`: the stream ended."""


@dataclass(frozen=True)
class TwilioOther:
    """Any other event (connected, mark, dtmf, or one this service does not know); nothing to do."""

    event: str
    """The event name, cut to 40 characters."""


TwilioMessage = TwilioStart | TwilioMedia | TwilioStop | TwilioOther


def parse_twilio(text: str, *, max_chars: int, max_payload_bytes: int) -> TwilioMessage:
    """Parse one Twilio Media Streams text message; raises InvalidArgument naming the field that is wrong.

    `max_chars` bounds the text (MAX_MESSAGE_CHARS is a fair value), `max_payload_bytes` a media payload after
    base64 decoding (checked on the encoded length first, so nothing large is decoded)."""
    doc = parse_json(text, max_chars=max_chars, what="message")
    if type(doc) is not dict:
        raise InvalidArgument("a Twilio message must be a JSON object")
    event = doc.get("event")
    if type(event) is not str:
        raise InvalidArgument("event is required" if event is None else f"event: expected a string, got {kind(event)}")
    if event == "media":
        return _media(doc.get("media"), max_payload_bytes)
    if event == "start":
        return _start(doc.get("start"))
    if event == "stop":
        return TwilioStop()
    return TwilioOther(event[:MAX_EVENT_SHOWN])


def _media(media: Any, max_payload_bytes: int) -> TwilioMedia:
    if type(media) is not dict:
        raise InvalidArgument("media: the media object is missing" if media is None
                              else f"media: expected an object, got {kind(media)}")
    track = string(media.get("track", "inbound"), "media.track", max_len=16)
    chunk = digits(media.get("chunk"), "media.chunk", lo=1, hi=MAX_JS_INTEGER)
    timestamp = digits(media.get("timestamp"), "media.timestamp", lo=0, hi=MAX_JS_INTEGER)
    payload = media.get("payload")
    if type(payload) is not str:
        raise InvalidArgument("media.payload: a base64 payload is required" if payload is None
                              else f"media.payload: expected a base64 payload string, got {kind(payload)}")
    if len(payload) > 4 * -(-max_payload_bytes // 3):
        raise InvalidArgument(f"media.payload: more than {max_payload_bytes} bytes of audio")
    try:
        audio = base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII characters
        raise InvalidArgument("media.payload: not a valid base64 payload") from None
    if len(audio) > max_payload_bytes:
        raise InvalidArgument(f"media.payload: {len(audio)} bytes of audio, at most {max_payload_bytes}")
    return TwilioMedia(track, chunk, timestamp, audio)


def _start(start: Any) -> TwilioStart:
    if type(start) is not dict:
        raise InvalidArgument("start: the start object is missing" if start is None
                              else f"start: expected an object, got {kind(start)}")
    media_format = start.get("mediaFormat")
    if not (type(media_format) is dict and media_format.get("encoding") == "audio/x-mulaw"
            and _number_is(media_format.get("sampleRate"), 8000) and _number_is(media_format.get("channels", 1), 1)):
        raise InvalidArgument("start.mediaFormat: expected audio/x-mulaw 8000 Hz mono")
    tracks = start.get("tracks", ["inbound"])
    if not (type(tracks) is list and 1 <= len(tracks) <= 2 and all(type(t) is str and t in TRACKS for t in tracks)
            and len(set(tracks)) == len(tracks)):
        raise InvalidArgument("start.tracks: expected a list of inbound and/or outbound, each once")
    return TwilioStart(
        stream_sid=string(start.get("streamSid", ""), "start.streamSid", required=False, max_len=MAX_SID),
        call_sid=string(start.get("callSid", ""), "start.callSid", required=False, max_len=MAX_SID),
        account_sid=string(start.get("accountSid", ""), "start.accountSid", required=False, max_len=MAX_SID),
        tracks=tuple(tracks),
        custom=MappingProxyType(_custom(start.get("customParameters", {}))),
    )


def _number_is(value: Any, expected: int) -> bool:
    """A JSON integer (not a boolean or a float) or its digit string equal to `expected`."""
    return (type(value) is int and value == expected) or value == str(expected)


def _custom(value: Any) -> dict[str, str]:
    custom = obj(value, "start.customParameters")
    if len(custom) > MAX_CUSTOM_PARAMETERS:
        raise InvalidArgument(f"start.customParameters: {len(custom)} parameters, at most {MAX_CUSTOM_PARAMETERS}")
    for name, item in custom.items():
        if len(name) > MAX_PARAMETER_NAME:
            raise InvalidArgument(f"start.customParameters: a parameter name is longer than {MAX_PARAMETER_NAME} characters")
        where = f"start.customParameters.{name if _PLAIN_NAME.fullmatch(name) else ascii(name)}"
        string(name, where, required=False, max_len=MAX_PARAMETER_NAME)  # a lone surrogate in the name
        string(item, where, required=False, max_len=MAX_PARAMETER_VALUE)
    return dict(custom)
