"""Strict wire parsers of the WebSocket protocols: bounded JSON, typed getters, Twilio Media Streams, Genesys AudioHook
and the native start/transcript/stop messages refuse every malformed message with the protocol's own error."""

import base64
import copy
import json

import pytest

from service.domain import Role, TranscriptSegment
from service.errors import InvalidArgument
from service.transport import twilio_wire
from service.transport.audiohook_wire import (
    AudioHookProtocolError,
    ClientMessage,
    close_reason,
    discarded_ms,
    duration_ms,
    error_code,
    open_parameters,
    parse_client_message,
    select_media,
)
from service.transport.json_events import native_message, start_from_json, stop_from_json, transcript_from_json
from service.transport.twilio_wire import TwilioMedia, TwilioOther, TwilioStart, TwilioStop, parse_twilio
from service.transport.wire_json import (
    MAX_JSON_DEPTH,
    JsonTooDeep,
    JsonTooLarge,
    boolean,
    digits,
    integer,
    obj,
    parse_json,
    roles_list,
    string,
    string_list,
)

DEEP = 200_000
BIG = 10**7
SECRET = "+15551230000"  # stands for personal data that must never reach an error text


def parse(text, max_chars=BIG):
    return parse_json(text, max_chars=max_chars, what="message")


def nested(depth, inner="0"):
    """`depth` levels of alternating arrays and objects around `inner`."""
    text = inner
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k":{text}}}'
    return text


# -- bounded JSON ------------------------------------------------------------------------------------------------------

def test_depth_limit_is_exact():
    """JSON nested exactly MAX_JSON_DEPTH (32) levels parses; 33 levels is refused as too deep before parsing."""
    assert MAX_JSON_DEPTH == 32
    assert parse(nested(32)) is not None
    assert parse("[" * 32 + "]" * 32) == json.loads("[" * 32 + "]" * 32)
    with pytest.raises(JsonTooDeep, match="^message is nested more than 32 levels deep$"):
        parse(nested(33))
    with pytest.raises(JsonTooDeep):
        parse("[" * 33 + "]" * 33)


def test_depth_limit_counts_siblings_as_one_level():
    """Many brackets side by side are shallow: 1000 sibling arrays inside one array parse."""
    assert parse("[" + ",".join(["[[]]"] * 1000) + "]") == [[[]]] * 1000


def test_brackets_inside_strings_are_not_counted():
    """Brackets inside JSON strings, including after escaped quotes and backslashes, do not count as nesting."""
    assert parse('["' + "[{" * 100 + '"]') == ["[{" * 100]
    assert parse('["\\"' + "[" * 100 + '"]') == ['"' + "[" * 100]
    assert parse('{"a\\"[[[[": "\\u0022' + "{" * 40 + '"}') == {'a"[[[[': '"' + "{" * 40}
    # an escaped backslash ends the string: the brackets after it are real
    with pytest.raises(JsonTooDeep):
        parse('["\\\\", ' + "[" * 33 + "]" * 33 + "]")


def test_unterminated_strings_with_many_escaped_quotes_are_refused_in_linear_time():
    """A long unterminated string of escaped quotes and brackets is refused as invalid JSON in about a millisecond
    (scanning it once per quote would take seconds)."""
    import time

    text = '"' + '\\"[' * 20_000
    began = time.perf_counter()
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse(text)
    assert time.perf_counter() - began < 1.0


def test_size_limit_is_checked_before_parsing():
    """A text of max_chars characters is parsed; one more character is refused as too long, naming only the sizes."""
    text = json.dumps({"x": "a" * 90})
    assert parse(text, max_chars=len(text)) == {"x": "a" * 90}
    with pytest.raises(JsonTooLarge) as caught:
        parse(text + " ", max_chars=len(text))
    assert str(caught.value) == f"message is too long: {len(text) + 1} characters, at most {len(text)}"


def test_5000_digit_integers_are_refused_as_invalid_json():
    """An integer past Python's digit limit is an InvalidArgument about digits, not a ValueError."""
    for text in ("9" * 5000, '{"audio": {"sample_rate_hz": ' + "9" * 5000 + "}}", "[-" + "1" * 5000 + "]"):
        with pytest.raises(InvalidArgument, match="^message is not valid JSON: a number has too many digits$"):
            parse(text)


def test_nan_and_infinity_are_not_json():
    """NaN, Infinity and -Infinity, which json.loads accepts, are refused."""
    for text in ("NaN", "[Infinity]", '{"a": -Infinity}'):
        with pytest.raises(InvalidArgument, match="NaN and Infinity"):
            parse(text)


def test_syntax_errors_name_the_position_and_never_echo_the_text():
    """A syntax error starts with `what`, gives the position, and does not quote the caller's text."""
    with pytest.raises(InvalidArgument) as caught:
        parse_json('{"phone": "' + SECRET + '" oops}', max_chars=100, what="Twilio message")
    text = str(caught.value)
    assert text.startswith("Twilio message is not valid JSON: ") and "(position " in text and SECRET not in text


@pytest.mark.parametrize("text", [
    "[" * DEEP + "]" * DEEP, "[" * DEEP, '{"a":' * DEEP + "1" + "}" * DEEP, ('[{"a":' * DEEP)[:DEEP * 2],
], ids=["arrays", "unclosed", "objects", "mixed"])
def test_recursion_error_never_escapes_parse_json(text):
    """200,000 levels of nesting are refused as too deep, never a RecursionError."""
    with pytest.raises(JsonTooDeep):
        parse(text)


def test_non_text_is_refused():
    """Bytes where text is expected are refused with the type named."""
    with pytest.raises(InvalidArgument, match="^message is not text"):
        parse_json(b"{}", max_chars=10, what="message")


# -- typed getters -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [True, False, 2.0, 1.5, "2", None, [], {}, 10**30, -1, 3])
def test_integer_refuses_booleans_floats_strings_and_out_of_range(value):
    """integer() takes JSON integers from lo to hi only: never a boolean, a float (even 2.0) or a digit string."""
    with pytest.raises(InvalidArgument, match="^audio.channels"):
        integer(value, "audio.channels", lo=0, hi=2)


def test_integer_accepts_the_bounds_and_shortens_huge_numbers():
    """integer() returns lo and hi themselves; a huge number is described, not printed."""
    assert integer(0, "n", lo=0, hi=2) == 0 and integer(2, "n", lo=0, hi=2) == 2
    with pytest.raises(InvalidArgument) as caught:
        integer(10**4000, "n", lo=0, hi=2)
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize("value, expected", [("7", 7), (7, 7), ("007", 7), ("0", 0), ("9" * 15, 10**15 - 1)])
def test_digits_accepts_integers_and_digit_strings(value, expected):
    """digits() takes a JSON integer or a string of 1 to 15 ASCII digits, as Twilio sends numbers."""
    assert digits(value, "media.chunk", lo=0, hi=10**16) == expected


@pytest.mark.parametrize("value", ["1.5", "-1", " 7", "7 ", "+7", "1_000", "", "\u0663", "\u00b2", "9" * 16, "0x1f",
                                   True, False, 1.5, 2.0, -1, None, [], {}])
def test_digits_refuses_anything_but_plain_digits(value):
    """digits() refuses signs, spaces, underscores, decimals, non-ASCII digits, booleans, floats and negatives."""
    with pytest.raises(InvalidArgument, match="^media.chunk"):
        digits(value, "media.chunk", lo=0, hi=10**16)


@pytest.mark.parametrize("value", [1, 0, "true", "false", None, [], 1.0])
def test_boolean_refuses_everything_but_true_and_false(value):
    """boolean() accepts only JSON true and false."""
    with pytest.raises(InvalidArgument, match="^realtime"):
        boolean(value, "realtime")
    assert boolean(True, "realtime") is True and boolean(False, "realtime") is False


@pytest.mark.parametrize("value, required, message", [
    (5, True, "expected a string, got number"), (None, True, "is required"), ("", True, "is required"),
    (None, False, "expected a string, got null"), (["a"], False, "got list"), ("x" * 11, False, "11 characters, at most 10"),
    ("a\ud800", False, "lone surrogate"),
])
def test_string_refuses_other_types_empty_long_and_unencodable_text(value, required, message):
    """string() names the field and the problem: wrong type, missing, too long, or a lone surrogate."""
    with pytest.raises(InvalidArgument, match=f"^call_id.*{message}"):
        string(value, "call_id", required=required, max_len=10)
    assert string("", "tenant", required=False) == ""


def test_getters_never_echo_strings():
    """A wrong-typed or malformed value's text (personal data) never appears in the error."""
    for check in (lambda: integer(SECRET, "x", lo=0, hi=1), lambda: digits(SECRET, "x", lo=0, hi=1),
                  lambda: boolean(SECRET, "x"), lambda: obj(SECRET, "x"), lambda: string_list([SECRET, 5], "x", max_items=5),
                  lambda: roles_list(SECRET, "x"), lambda: roles_list([SECRET], "x"), lambda: string(SECRET * 30, "x")):
        with pytest.raises(InvalidArgument) as caught:
            check()
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize("value", ["a", ["a", 1], ["a", None], ["a"] * 5, ["x" * 65], None, {}])
def test_string_list_refuses_other_shapes(value):
    """string_list() takes a list of at most max_items strings of at most max_len characters."""
    with pytest.raises(InvalidArgument, match="^score_roles"):
        string_list(value, "score_roles", max_items=4)


def test_obj_refuses_non_objects():
    """obj() returns a dict and refuses lists, strings and null."""
    assert obj({"a": 1}, "media") == {"a": 1}
    for value in ([], "x", None, 1):
        with pytest.raises(InvalidArgument, match="^media"):
            obj(value, "media")


@pytest.mark.parametrize("value, expected", [
    ("customer,agent", (Role.CUSTOMER, Role.AGENT)), (" agent , customer ,", (Role.AGENT, Role.CUSTOMER)),
    (["agent", "agent"], (Role.AGENT,)), ("", ()), (None, ()), ([], ()),
])
def test_roles_list_accepts_a_comma_separated_string_or_a_list_of_strings(value, expected):
    """roles_list() reads "customer,agent" or ["customer", "agent"], in order and without repeats."""
    assert roles_list(value, "score_roles") == expected


@pytest.mark.parametrize("value", [5, True, {"customer": 1}, ["customer", 1], [["agent"]], "customer,caller", ["cust"]])
def test_roles_list_refuses_other_types_and_unknown_roles(value):
    """roles_list() refuses numbers, objects, nested lists and unknown roles, naming the field."""
    with pytest.raises(InvalidArgument, match="^score_roles"):
        roles_list(value, "score_roles")


# -- Twilio Media Streams ------------------------------------------------------------------------------------------------

TWILIO_START = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
    "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound", "outbound"],
    "customParameters": {"agent_id": "a", "team": "t", "phone": SECRET},
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
AUDIO = bytes(range(160))
TWILIO_MEDIA = {"event": "media", "sequenceNumber": "2", "streamSid": "MZ1",
                "media": {"track": "outbound", "chunk": "1", "timestamp": "20", "payload": base64.b64encode(AUDIO).decode()}}


def twilio(doc, max_payload_bytes=1024):
    return parse_twilio(json.dumps(doc), max_chars=twilio_wire.MAX_MESSAGE_CHARS, max_payload_bytes=max_payload_bytes)


def with_field(doc, path, value):
    """A copy of `doc` with the field at `path` set to `value` (deleted when value is ...)."""
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def test_twilio_start_and_media_are_parsed():
    """A valid start gives its ids, tracks and read-only custom parameters; a media message its decoded audio."""
    start = twilio(TWILIO_START)
    assert start == TwilioStart("MZ1", "CA1", "AC1", ("inbound", "outbound"), start.custom)
    assert dict(start.custom) == {"agent_id": "a", "team": "t", "phone": SECRET} and SECRET not in repr(start)
    with pytest.raises(TypeError):
        start.custom["agent_id"] = "b"
    assert twilio(TWILIO_MEDIA) == TwilioMedia("outbound", 1, 20, AUDIO)


def test_twilio_defaults():
    """Without tracks, ids or custom parameters a start has the inbound track, empty ids and no parameters;
    media without a track is inbound."""
    bare = {"event": "start", "start": {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    assert twilio(bare) == TwilioStart("", "", "", ("inbound",), {})
    assert twilio(with_field(TWILIO_MEDIA, ["media", "track"], ...)).track == "inbound"


@pytest.mark.parametrize("chunk, timestamp", [("1", "0"), (1, 0), ("42", "123456789012345"), (2**53 - 1, 2**53 - 1)])
def test_twilio_numbers_may_be_strings_or_integers(chunk, timestamp):
    """chunk and timestamp are accepted as JSON integers or digit strings."""
    media = twilio(with_field(with_field(TWILIO_MEDIA, ["media", "chunk"], chunk), ["media", "timestamp"], timestamp))
    assert (media.chunk, media.timestamp_ms) == (int(chunk), int(timestamp))


@pytest.mark.parametrize("event", ["connected", "mark", "dtmf", "clear", "x" * 500])
def test_twilio_other_events_are_passed_on_truncated(event):
    """connected, mark, dtmf and unknown events give TwilioOther with the name cut to 40 characters; stop gives TwilioStop."""
    assert twilio({"event": event, "mark": {"name": 5}}) == TwilioOther(event[:40])
    assert twilio({"event": "stop", "stop": "anything"}) == TwilioStop()


TWILIO_BAD = [
    ("not an object", None, ["event", "media"], "a Twilio message must be a JSON object"),
    ("event missing", ["event"], ..., "event is required"),
    ("event number", ["event"], 5, "event: expected a string, got number"),
    ("start missing", ["start"], ..., "start: the start object is missing"),
    ("start string", ["start"], "start", "start: expected an object, got string"),
    ("start list", ["start"], [], "start: expected an object, got list"),
    ("mediaFormat string", ["start", "mediaFormat"], "audio/x-mulaw", "start.mediaFormat: expected audio/x-mulaw 8000 Hz mono"),
    ("mediaFormat list", ["start", "mediaFormat"], ["audio/x-mulaw"], "start.mediaFormat: expected"),
    ("mediaFormat missing", ["start", "mediaFormat"], ..., "start.mediaFormat: expected"),
    ("mediaFormat null", ["start", "mediaFormat"], None, "start.mediaFormat: expected"),
    ("encoding", ["start", "mediaFormat", "encoding"], "audio/l16", "start.mediaFormat: expected"),
    ("encoding number", ["start", "mediaFormat", "encoding"], 1, "start.mediaFormat: expected"),
    ("sampleRate float", ["start", "mediaFormat", "sampleRate"], 8000.0, "start.mediaFormat: expected"),
    ("sampleRate 16k", ["start", "mediaFormat", "sampleRate"], 16000, "start.mediaFormat: expected"),
    ("channels true", ["start", "mediaFormat", "channels"], True, "start.mediaFormat: expected"),
    ("channels 2", ["start", "mediaFormat", "channels"], 2, "start.mediaFormat: expected"),
    ("tracks string", ["start", "tracks"], "inbound", "start.tracks: expected"),
    ("tracks empty", ["start", "tracks"], [], "start.tracks: expected"),
    ("tracks null", ["start", "tracks"], None, "start.tracks: expected"),
    ("tracks three", ["start", "tracks"], ["inbound", "outbound", "inbound"], "start.tracks: expected"),
    ("tracks twice", ["start", "tracks"], ["inbound", "inbound"], "start.tracks: expected"),
    ("tracks number", ["start", "tracks"], [1], "start.tracks: expected"),
    ("tracks unhashable", ["start", "tracks"], [["inbound"]], "start.tracks: expected"),
    ("tracks unknown", ["start", "tracks"], ["sideways"], "start.tracks: expected"),
    ("customParameters list", ["start", "customParameters"], ["agent_id"], "start.customParameters: expected an object, got list"),
    ("customParameters string", ["start", "customParameters"], "agent_id=a", "start.customParameters: expected an object"),
    ("customParameters null", ["start", "customParameters"], None, "start.customParameters is required"),
    ("parameter number", ["start", "customParameters", "agent_id"], 12345, "start.customParameters.agent_id: expected a string, got number"),
    ("parameter bool", ["start", "customParameters", "realtime"], False, "start.customParameters.realtime: expected a string, got boolean"),
    ("parameter null", ["start", "customParameters", "team"], None, "start.customParameters.team: expected a string, got null"),
    ("parameter object", ["start", "customParameters", "team"], {"x": SECRET}, "start.customParameters.team: expected a string, got object"),
    ("parameter long", ["start", "customParameters", "phone"], SECRET * 100, "start.customParameters.phone: 1200 characters, at most 1024"),
    ("parameter name long", ["start", "customParameters", "n" * 65], "v", "start.customParameters: a parameter name is longer than 64"),
    ("too many parameters", ["start", "customParameters"], {f"p{i}": "v" for i in range(65)}, "start.customParameters: 65 parameters, at most 64"),
    ("callSid number", ["start", "callSid"], 5, "start.callSid: expected a string, got number"),
    ("accountSid null", ["start", "accountSid"], None, "start.accountSid: expected a string, got null"),
    ("streamSid long", ["start", "streamSid"], "M" * 65, "start.streamSid: 65 characters"),
]
TWILIO_MEDIA_BAD = [
    ("media missing", ["media"], ..., "media: the media object is missing"),
    ("media string", ["media"], "payload", "media: expected an object, got string"),
    ("track number", ["media", "track"], 1, "media.track: expected a string, got number"),
    ("track null", ["media", "track"], None, "media.track is required"),
    ("chunk missing", ["media", "chunk"], ..., "media.chunk is required"),
    ("chunk 1.5", ["media", "chunk"], "1.5", "media.chunk: expected a whole number"),
    ("chunk -1", ["media", "chunk"], "-1", "media.chunk: expected a whole number"),
    ("chunk space", ["media", "chunk"], " 7", "media.chunk: expected a whole number"),
    ("chunk true", ["media", "chunk"], True, "media.chunk: expected a whole number from 1 to 9007199254740991, got boolean"),
    ("chunk float", ["media", "chunk"], 1.5, "media.chunk: expected a whole number from 1 to 9007199254740991, got 1.5"),
    ("chunk zero", ["media", "chunk"], "0", "media.chunk: expected a whole number from 1"),
    ("chunk 2**53", ["media", "chunk"], 2**53, "media.chunk: expected a whole number"),
    ("timestamp missing", ["media", "timestamp"], ..., "media.timestamp is required"),
    ("timestamp -1", ["media", "timestamp"], -1, "media.timestamp: expected a whole number from 0"),
    ("timestamp 1.5", ["media", "timestamp"], "1.5", "media.timestamp: expected a whole number"),
    ("timestamp true", ["media", "timestamp"], True, "media.timestamp: expected a whole number"),
    ("payload missing", ["media", "payload"], ..., "media.payload: a base64 payload is required"),
    ("payload number", ["media", "payload"], 255, "media.payload: expected a base64 payload string, got number"),
    ("payload list", ["media", "payload"], ["//8="], "media.payload: expected a base64 payload string, got list"),
    ("payload not base64", ["media", "payload"], "%%%", "media.payload: not a valid base64 payload"),
    ("payload not ascii", ["media", "payload"], "\u00ff\u00ff\u00ff\u00ff", "media.payload: not a valid base64 payload"),
    ("payload bad padding", ["media", "payload"], "//8", "media.payload: not a valid base64 payload"),
]


TWILIO_CASES = [(TWILIO_START, *case) for case in TWILIO_BAD] + [(TWILIO_MEDIA, *case) for case in TWILIO_MEDIA_BAD]


@pytest.mark.parametrize("base, name, path, value, message", TWILIO_CASES, ids=[c[1] for c in TWILIO_CASES])
def test_twilio_wrong_types_are_refused_naming_the_field(base, name, path, value, message):
    """Every wrong-typed or missing field of start and media is an InvalidArgument naming it, never echoing a value."""
    doc = value if path is None else with_field(base, path, value)
    with pytest.raises(InvalidArgument) as caught:
        twilio(doc)
    assert str(caught.value).startswith(message), str(caught.value)
    assert SECRET not in str(caught.value) and len(str(caught.value)) < 160


def test_twilio_parameter_names_are_shown_safely():
    """A custom parameter name with control characters is quoted in the error, not written raw into a log line."""
    with pytest.raises(InvalidArgument) as caught:
        twilio(with_field(TWILIO_START, ["start", "customParameters", "a\nb"], 1))
    assert "\n" not in str(caught.value) and "'a\\nb'" in str(caught.value)


def test_twilio_lone_surrogates_are_refused():
    """A custom parameter whose value or name is not encodable Unicode is refused."""
    for custom in ({"agent_id": "a\ud800"}, {"\udc00": "a"}):
        with pytest.raises(InvalidArgument, match="lone surrogate"):
            twilio(with_field(TWILIO_START, ["start", "customParameters"], custom))


def test_twilio_payload_limit_is_exact():
    """A payload of max_payload_bytes decodes; one byte more is refused."""
    for size in (159, 160, 161):
        doc = with_field(TWILIO_MEDIA, ["media", "payload"], base64.b64encode(bytes(size)).decode())
        if size <= 160:
            assert twilio(doc, max_payload_bytes=160).payload == bytes(size)
        else:
            with pytest.raises(InvalidArgument, match="^media.payload: 161 bytes of audio, at most 160$"):
                twilio(doc, max_payload_bytes=160)


def test_twilio_payload_over_the_limit_is_refused_without_decoding(monkeypatch):
    """A payload whose base64 text is longer than the limit allows is refused before anything is decoded."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("the payload must not be decoded")

    monkeypatch.setattr(twilio_wire.base64, "b64decode", no_decoding)
    doc = with_field(TWILIO_MEDIA, ["media", "payload"], "A" * 200_000)
    with pytest.raises(InvalidArgument, match="^media.payload: more than 1024 bytes of audio$"):
        twilio(doc, max_payload_bytes=1024)


def test_twilio_recursion_and_huge_numbers_are_refused():
    """200,000-deep JSON, and a 5000-digit chunk number, are InvalidArgument on Twilio's parser."""
    for text in ("[" * DEEP + "]" * DEEP, '{"event": "media", "media": ' + "[" * DEEP + "]" * DEEP + "}"):
        with pytest.raises(JsonTooDeep):
            parse_twilio(text, max_chars=BIG, max_payload_bytes=1024)
    with pytest.raises(JsonTooLarge):
        parse_twilio("[" * DEEP + "]" * DEEP, max_chars=twilio_wire.MAX_MESSAGE_CHARS, max_payload_bytes=1024)
    text = json.dumps(TWILIO_MEDIA).replace('"chunk": "1"', '"chunk": ' + "7" * 5000)
    with pytest.raises(InvalidArgument, match="too many digits"):
        parse_twilio(text, max_chars=BIG, max_payload_bytes=1024)


# -- Genesys AudioHook ---------------------------------------------------------------------------------------------------

def audiohook(kind="ping", parameters=None, **fields):
    doc = {"version": "2", "id": "e160e428-53e2-487c-977d-96989bf5c99d", "type": kind, "seq": 1, "serverseq": 0,
           "position": "PT0S", "parameters": {} if parameters is None else parameters}
    doc.update(fields)
    return doc


def test_audiohook_message_is_parsed():
    """A well-formed client message gives its type, sequence numbers, id, position and parameters."""
    message = parse_client_message(json.dumps(audiohook("paused", {"x": 1}, seq=7, serverseq=3)))
    assert message == ClientMessage("paused", 7, 3, "e160e428-53e2-487c-977d-96989bf5c99d", "PT0S", {"x": 1})


def test_audiohook_size_json_and_depth_errors_keep_the_reference_texts():
    """Too large, not JSON and too deep texts get the reference implementation's disconnect texts."""
    cases = [("x" * 65536, "Text message too large (>64K). Length: 65536"), ("{oops", "Text message not valid JSON"),
             ("9" * 5000, "Text message not valid JSON"), ("[" * 30_000 + "]" * 30_000, "Text message nested too deeply"),
             ("[" * DEEP + "]" * DEEP, f"Text message too large (>64K). Length: {2 * DEEP}")]
    for text, info in cases:
        with pytest.raises(AudioHookProtocolError) as caught:
            parse_client_message(text)
        assert caught.value.info == info and caught.value.reason == "error"
    with pytest.raises(AudioHookProtocolError, match="^Text message nested too deeply$"):
        parse_client_message("[" * DEEP + "]" * DEEP, max_chars=BIG)
    assert parse_client_message(" " * 65000 + json.dumps(audiohook())).type == "ping"


@pytest.mark.parametrize("field, value", [
    ("version", "1"), ("version", 2), ("version", ...), ("id", 5), ("id", None), ("id", "i" * 129), ("type", 1), ("type", "t" * 65),
    ("type", "\ud800"), ("seq", True), ("seq", -1), ("seq", 1.0), ("seq", "1"), ("seq", 2**53), ("seq", ...),
    ("serverseq", True), ("serverseq", False), ("serverseq", -1), ("serverseq", None), ("position", 0), ("position", ...),
    ("parameters", []), ("parameters", None), ("parameters", "x"), ("parameters", ...),
])
def test_audiohook_malformed_client_messages_are_refused(field, value):
    """A wrong version, id, type, seq (true is not 1), serverseq, position or parameters is not a well-formed client message."""
    doc = audiohook()
    if value is ...:
        del doc[field]
    else:
        doc[field] = value
    with pytest.raises(AudioHookProtocolError) as caught:
        parse_client_message(json.dumps(doc))
    assert caught.value.info.startswith("Message not a well-formed client message: ") and field in caught.value.info


def test_audiohook_top_level_must_be_an_object():
    """A JSON list or string is not a client message."""
    for doc in ([audiohook()], "open", None):
        with pytest.raises(AudioHookProtocolError, match="not a well-formed client message"):
            parse_client_message(json.dumps(doc))


OPEN = {"organizationId": "o-1", "conversationId": "c-1",
        "participant": {"id": "p", "ani": SECRET, "aniName": "", "dnis": ""},
        "media": [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}],
        "customConfig": {"agent_id": "ag", "team": "tm", "score_roles": ["customer", "agent"], "realtime": False}}


def test_audiohook_open_parameters_are_typed():
    """open's parameters give the organization, conversation, the selected offer and a typed customConfig."""
    params = open_parameters(OPEN)
    assert (params.organization_id, params.conversation_id) == ("o-1", "c-1")
    assert params.media == {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
    assert params.custom == {"agent_id": "ag", "team": "tm", "score_roles": (Role.CUSTOMER, Role.AGENT), "realtime": False}
    bare = open_parameters({"conversationId": "c", "customConfig": None})
    assert bare.organization_id == "" and bare.media is None
    assert bare.custom == {"agent_id": "", "team": "", "score_roles": (), "realtime": True}
    assert open_parameters(with_field(OPEN, ["customConfig", "score_roles"], "agent")).custom["score_roles"] == (Role.AGENT,)


@pytest.mark.parametrize("path, value, names", [
    (["organizationId"], 5, "open.parameters.organizationId"), (["conversationId"], ..., "open.parameters.conversationId is required"),
    (["conversationId"], 5, "open.parameters.conversationId"), (["conversationId"], "", "open.parameters.conversationId is required"),
    (["customConfig"], "agent_id=a", "open.parameters.customConfig must be an object"), (["customConfig"], [], "open.parameters.customConfig"),
    (["customConfig", "agent_id"], 7, "open.parameters.customConfig.agent_id"), (["customConfig", "agent_id"], None, "customConfig.agent_id"),
    (["customConfig", "team"], ["t"], "open.parameters.customConfig.team"), (["customConfig", "team"], "t" * 129, "customConfig.team"),
    (["customConfig", "score_roles"], 1, "customConfig.score_roles"), (["customConfig", "score_roles"], {"customer": True}, "customConfig.score_roles"),
    (["customConfig", "score_roles"], ["customer", 2], "customConfig.score_roles[1]"), (["customConfig", "score_roles"], "boss", "customConfig.score_roles"),
    (["customConfig", "realtime"], "false", "open.parameters.customConfig.realtime"), (["customConfig", "realtime"], 0, "customConfig.realtime"),
    (["customConfig", "realtime"], None, "customConfig.realtime"),
])
def test_audiohook_open_parameter_types_are_checked(path, value, names):
    """Each wrong-typed open parameter is an AudioHookProtocolError whose info starts "Invalid Message: " and names it."""
    with pytest.raises(AudioHookProtocolError) as caught:
        open_parameters(with_field(OPEN, path, value))
    assert caught.value.info.startswith("Invalid Message: ") and names in caught.value.info, caught.value.info


@pytest.mark.parametrize("offered, channels", [
    ([{"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000},
      {"type": "audio", "format": "PCMU", "channels": ["internal", "external"], "rate": 8000}], ["internal", "external"]),
    ([{"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000},
      {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}], ["external"]),
    ([{"type": "audio", "format": "PCMU", "channels": [{}, "external"], "rate": 8000}], None),
    ([{"type": "audio", "format": "PCMU", "channels": [["external"]], "rate": 8000}], None),
    ([{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000.0}], None),
    ([{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": True}], None),
    ([{"type": "audio", "format": "PCMU", "channels": ["external", "external"], "rate": 8000}], None),
    ([{"type": "audio", "format": "PCMU", "channels": "external", "rate": 8000}], None),
    ([{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}], None),
    ({"type": "audio"}, None), ("PCMU", None), ([5, None, []], None),
])
def test_audiohook_media_selection(offered, channels):
    """Stereo PCMU 8 kHz is preferred, then external, then internal; malformed offers (unhashable channels, a float or
    boolean rate, repeats) are skipped, never raise."""
    media = select_media(offered)
    assert (media and media["channels"]) == channels


@pytest.mark.parametrize("value, expected", [("PT1.5S", 1500), ("PT0S", 0), ("PT.5S", 500), ("PT2.S", 2000), ("PT1000000000S", 10**12)])
def test_audiohook_durations(value, expected):
    """ISO 8601 second durations give whole milliseconds."""
    assert duration_ms(value, "discarded.parameters.discarded") == expected


@pytest.mark.parametrize("value", ["3 seconds", "PT1.5S\n", "PT-1S", "PT\u0663S", "P1D", "PT1M", "PT1000000001S",
                                   "PT" + "9" * 30 + "S", "PT" + "9" * 400 + ".0S", 1.5, None, ["PT1S"], "PT1S" + " " * 100])
def test_audiohook_bad_durations_are_refused(value):
    """Anything but PTnS / PTn.nS up to 10**9 s is refused naming the parameter, never overflowing."""
    with pytest.raises(AudioHookProtocolError) as caught:
        duration_ms(value, "discarded.parameters.discarded")
    assert caught.value.info.startswith("Invalid Message: discarded.parameters.discarded ")


def test_audiohook_discarded_close_and_error_parameters():
    """discarded_ms, close_reason and error_code read their parameter, with None or "end" when absent."""
    assert discarded_ms({"start": "PT1S", "discarded": "PT2.25S"}, "resumed") == 2250
    assert discarded_ms({"start": "PT1S"}, "discarded") is None
    with pytest.raises(AudioHookProtocolError, match="^Invalid Message: resumed.parameters.discarded must be"):
        discarded_ms({"discarded": 3}, "resumed")
    assert close_reason({}) == "end" and close_reason({"reason": "disconnect"}) == "disconnect"
    assert error_code({}) is None and error_code({"code": 429, "message": "slow down"}) == 429


@pytest.mark.parametrize("reason", [5, None, True, "", "end of call", "x" * 65, "end\n", "\u00e9", ["end"]])
def test_audiohook_close_reason_must_be_a_short_token(reason):
    """close's reason is refused unless it is a token of letters, digits, '_' and '-' up to 64 characters."""
    with pytest.raises(AudioHookProtocolError, match="^Invalid Message: close.parameters.reason"):
        close_reason({"reason": reason})


@pytest.mark.parametrize("code", [True, "500", 500.0, -1, 1000, None, {}])
def test_audiohook_error_code_must_be_an_integer(code):
    """error's code is refused unless it is a JSON integer from 0 to 999."""
    with pytest.raises(AudioHookProtocolError, match="^Invalid Message: error.parameters.code"):
        error_code({"code": code})


# -- native protocol ---------------------------------------------------------------------------------------------------

NATIVE_START = {"type": "start", "call_id": "c1", "agent_id": "a1", "team": "t1", "tenant": "acme", "score_roles": ["customer"],
                "realtime": True, "framing": "seq64",
                "audio": {"encoding": "pcm16le", "sample_rate_hz": 16000, "channels": 2, "channel_roles": ["agent", "customer"]}}


def test_native_start_is_parsed():
    """A valid native start gives its configuration and framing; defaults fill what is absent."""
    config, framing = start_from_json(NATIVE_START)
    assert framing == "seq64" and config.audio.channel_roles == (Role.AGENT, Role.CUSTOMER) and config.tenant == "acme"
    config, framing = start_from_json({"type": "start", "call_id": "c", "agent_id": "a", "team": "t",
                                       "audio": {"encoding": "mulaw", "sample_rate_hz": 8000}})
    assert framing == "raw" and config.audio.channel_roles == (Role.CUSTOMER,) and config.score_roles == (Role.CUSTOMER,) and config.realtime


NATIVE_BAD = [
    (["audio"], "pcm16le", "audio: the audio format object is required"),
    (["audio", "encoding"], 5, "audio.encoding: expected a string, got number"),
    (["audio", "encoding"], ..., "audio.encoding is required"),
    (["audio", "encoding"], "opus" * 50, "audio.encoding: 200 characters"),
    (["audio", "sample_rate_hz"], "16000", "audio.sample_rate_hz: expected a whole number"),
    (["audio", "sample_rate_hz"], 16000.0, "audio.sample_rate_hz: expected a whole number"),
    (["audio", "sample_rate_hz"], True, "audio.sample_rate_hz: expected a whole number"),
    (["audio", "sample_rate_hz"], 10**30, "audio.sample_rate_hz: expected a whole number"),
    (["audio", "channels"], 2.0, "audio.channels: expected a whole number from 1 to 2, got 2.0"),
    (["audio", "channels"], True, "audio.channels: expected a whole number from 1 to 2, got boolean"),
    (["audio", "channels"], "2", "audio.channels: expected a whole number"),
    (["audio", "channels"], 3, "audio.channels: expected a whole number from 1 to 2, got 3"),
    (["audio", "channel_roles"], "agent,customer", "audio.channel_roles: expected a list of strings, got string"),
    (["audio", "channel_roles"], ["agent", 1], "audio.channel_roles[1]: expected a string, got number"),
    (["audio", "channel_roles"], ["agent", "boss"], "audio.channel_roles[1]: unknown role 'boss'"),
    (["audio", "channel_roles"], ["agent"], "audio.channel_roles: 1 roles given for 2 channel(s)"),
    (["score_roles"], "customer", "score_roles: expected a list of strings, got string"),
    (["score_roles"], [{"role": "customer"}], "score_roles[0]: expected a string, got object"),
    (["realtime"], "false", "realtime: expected true or false, got string"),
    (["realtime"], 0, "realtime: expected true or false, got number"),
    (["framing"], 64, "framing: expected a string, got number"),
    (["framing"], "seq32", "framing: expected raw or seq64, got 'seq32'"),
    (["call_id"], 5, "call_id: expected a string, got number"),
    (["call_id"], ..., "call_id is required"),
    (["agent_id"], ["a"], "agent_id: expected a string, got list"),
    (["team"], {"t": 1}, "team: expected a string, got object"),
    (["tenant"], 5, "tenant: expected a string, got number"),
    (["tenant"], None, "tenant: expected a string, got null"),
    (["colour" * 30], "red", "start: unknown field 'colourcolourcolourcolourcolourcolourcolo...'"),
]


@pytest.mark.parametrize("path, value, message", NATIVE_BAD, ids=[f"{'.'.join(c[0])[:20]}={str(c[1])[:10]}" for c in NATIVE_BAD])
def test_native_start_wrong_types_are_refused_naming_the_field(path, value, message):
    """Every wrong-typed native start field is an InvalidArgument naming it (2.0 and true are not integers)."""
    with pytest.raises(InvalidArgument) as caught:
        start_from_json(with_field(NATIVE_START, path, value))
    assert str(caught.value).startswith(message), str(caught.value)


def test_native_start_huge_and_deep_json_is_invalid_argument():
    """A 5000-digit sample rate and 200,000-deep nesting in a native start are InvalidArgument, never ValueError/RecursionError."""
    text = json.dumps(NATIVE_START).replace("16000", "1" * 5000)
    with pytest.raises(InvalidArgument, match="too many digits"):
        native_message(text, max_chars=BIG)
    with pytest.raises(JsonTooDeep):
        native_message('{"type": "start", "audio": ' + "[" * DEEP + "]" * DEEP + "}", max_chars=BIG)


def test_native_message_needs_an_object_with_a_string_type():
    """native_message returns (type, object) and refuses lists, and types that are not a short encodable string."""
    assert native_message('{"type": "stop"}', max_chars=100) == ("stop", {"type": "stop"})
    for text in ('["stop"]', '{"type": 5}', '{"kind": "stop"}', '"stop"', '{"type": ""}', json.dumps({"type": "t" * 65}),
                 '{"type": "\\ud800"}'):
        with pytest.raises(InvalidArgument, match='^a message must be a JSON object with a "type" string of at most 64 characters$'):
            native_message(text, max_chars=100)


TRANSCRIPT = {"type": "transcript", "speaker": "agent", "start_ms": 10, "end_ms": 900, "text": "ok"}


@pytest.mark.parametrize("key, value, message", [
    ("start_ms", 1.5, "transcript.start_ms: expected a whole number"), ("start_ms", True, "transcript.start_ms: expected a whole number"),
    ("start_ms", "10", "transcript.start_ms: expected a whole number"), ("start_ms", -1, "transcript.start_ms: expected a whole number"),
    ("end_ms", 900.0, "transcript.end_ms: expected a whole number"), ("end_ms", 10**30, "transcript.end_ms: expected a whole number"),
    ("end_ms", None, "transcript.end_ms is required"), ("text", 5, "transcript.text: expected a string, got number"),
    ("text", ["ok"], "transcript.text: expected a string, got list"), ("text", "x" * 10_001, "transcript.text: 10001 characters, at most 10000"),
    ("speaker", 1, "transcript.speaker: expected a string, got number"), ("speaker", "caller", "transcript.speaker: unknown role 'caller'"),
])
def test_native_transcript_wrong_types_are_refused_naming_the_field(key, value, message):
    """Every wrong-typed transcript field is an InvalidArgument naming it, never echoing the text."""
    with pytest.raises(InvalidArgument) as caught:
        transcript_from_json(TRANSCRIPT | {key: value})
    assert str(caught.value).startswith(message) and "x" * 50 not in str(caught.value)


def test_native_transcript_needs_an_object():
    """A transcript that is not an object is refused; a valid one gives its segment."""
    assert transcript_from_json(TRANSCRIPT) == TranscriptSegment(Role.AGENT, 10, 900, "ok")
    with pytest.raises(InvalidArgument, match="^transcript: expected an object$"):
        transcript_from_json(["transcript"])


def test_native_stop_reason():
    """stop's reason is an optional short token, "end_of_call" when absent; anything else is refused."""
    assert stop_from_json({"type": "stop"}) == "end_of_call" and stop_from_json({"type": "stop", "reason": "hangup"}) == "hangup"
    for reason in (5, None, "", "hung up", "x" * 65, {"r": 1}):
        with pytest.raises(InvalidArgument, match="^stop.reason"):
            stop_from_json({"type": "stop", "reason": reason})
    with pytest.raises(InvalidArgument, match="^stop: expected"):
        stop_from_json([])
