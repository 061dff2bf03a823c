"""Bounded JSON parsing and strict typed field access shared by the WebSocket protocols' message parsers.

Everything here is pure (no I/O) and raises only `InvalidArgument`. Error texts name the field (`where`) and
the JSON type found; they never echo a caller's string (ids, phone numbers and custom values get logged), at most a
number, shortened.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from service.domain import Role
from service.errors import InvalidArgument

MAX_JSON_DEPTH = 32
"""Most nested arrays/objects a message may have; real messages of every protocol use fewer than 5."""

MAX_DIGITS_STRING = 15
"""Longest digit string `digits` converts (Twilio sends chunk numbers and timestamps as strings)."""

# One JSON string literal, escapes included. An unterminated literal runs to the end of the text, so every quote
# matches and the substitution stays linear (the text is invalid JSON anyway, json.loads says where).
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonTooLarge(InvalidArgument):
    """The text is longer than the protocol allows; nothing was parsed."""


class JsonTooDeep(InvalidArgument):
    """The text nests arrays/objects deeper than MAX_JSON_DEPTH; nothing was parsed."""


class _NotJson(ValueError):
    """NaN, Infinity or -Infinity, which json.loads accepts and JSON does not have."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(name)


# One decoder for every call: json.loads with keyword arguments would build a new one per message.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def json_depth(text: str) -> int:
    """How deeply `text` nests arrays and objects, brackets inside strings not counted (linear time).

    For invalid JSON the figure is only an estimate, but never below the depth json.loads would reach before
    it finds the error."""
    brackets = _NOT_BRACKET.sub("", _STRING_LITERAL.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse_json(text: str, *, max_chars: int, what: str) -> Any:
    """Parse one JSON message of at most `max_chars` characters and MAX_JSON_DEPTH levels.

    Every failure is an InvalidArgument whose message starts with `what` ("message", "Text message"):
    JsonTooLarge and JsonTooDeep (refused before parsing), otherwise a syntax error with its position,
    a number with too many digits, or NaN/Infinity (not JSON)."""
    if type(text) is not str:
        raise InvalidArgument(f"{what} is not text (got {type(text).__name__})")
    if len(text) > max_chars:
        raise JsonTooLarge(f"{what} is too long: {len(text)} characters, at most {max_chars}")
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise JsonTooDeep(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc.msg} (position {exc.pos})") from None
    except _NotJson:
        raise InvalidArgument(f"{what} is not valid JSON: NaN and Infinity are not JSON values") from None
    except ValueError:  # an integer past sys.get_int_max_str_digits()
        raise InvalidArgument(f"{what} is not valid JSON: a number has too many digits") from None
    except RecursionError:  # not reachable within MAX_JSON_DEPTH; kept so it can never escape as an internal error
        raise JsonTooDeep(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None


def kind(value: Any) -> str:
    """The JSON type of a parsed value, for error texts ("null", "boolean", "number", "string", "list", "object")."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "list"
    if type(value) is dict:
        return "object"
    return type(value).__name__


def short_number(value: int | float) -> str:
    """A number for an error text, never longer than about 40 characters."""
    if type(value) is int and not -10**39 < value < 10**39:
        return "a number of 40 digits or more"
    return repr(value)


def _required(where: str) -> InvalidArgument:
    return InvalidArgument(f"{where} is required")


def obj(value: Any, where: str) -> dict[str, Any]:
    """`value` as a JSON object; null is "required"."""
    if type(value) is dict:
        return value
    if value is None:
        raise _required(where)
    raise InvalidArgument(f"{where}: expected an object, got {kind(value)}")


def _unicode(value: str, where: str) -> str:
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # JSON's "\ud800" escape: a string no encoder, log or Redis channel accepts
            raise InvalidArgument(f"{where}: not valid Unicode text (a lone surrogate)") from None
    return value


def string(value: Any, where: str, *, required: bool = True, max_len: int = 256) -> str:
    """`value` as a string of at most `max_len` characters; `required`: not empty (null is "required").

    Lone surrogates ("\\ud800") are refused: they cannot be encoded, logged or published."""
    if type(value) is not str:
        if value is None and required:
            raise _required(where)
        raise InvalidArgument(f"{where}: expected a string, got {kind(value)}")
    if not value and required:
        raise _required(where)
    if len(value) > max_len:
        raise InvalidArgument(f"{where}: {len(value)} characters, at most {max_len}")
    return _unicode(value, where)


def integer(value: Any, where: str, *, lo: int, hi: int) -> int:
    """`value` as an integer from `lo` to `hi`: a JSON integer, never a boolean or a float (not even 2.0)."""
    if type(value) is not int:
        if value is None:
            raise _required(where)
        got = short_number(value) if type(value) is float else kind(value)
        raise InvalidArgument(f"{where}: expected a whole number from {lo} to {hi}, got {got}")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{where}: expected a whole number from {lo} to {hi}, got {short_number(value)}")
    return value


def digits(value: Any, where: str, *, lo: int, hi: int) -> int:
    """`value` as an integer from `lo` to `hi`: a JSON integer, or a string of 1 to 15 ASCII digits (no sign,
    space, underscore or decimal point), as Twilio sends numbers."""
    if type(value) is str:
        if 0 < len(value) <= MAX_DIGITS_STRING and value.isascii() and value.isdigit():
            value = int(value)
            if lo <= value <= hi:
                return value
        else:
            raise InvalidArgument(f"{where}: expected a whole number from {lo} to {hi}, "
                                  f"got a string other than 1 to {MAX_DIGITS_STRING} digits")
    return integer(value, where, lo=lo, hi=hi)


def boolean(value: Any, where: str) -> bool:
    """`value` as true or false (not 0/1, not "true")."""
    if value is True or value is False:
        return value
    if value is None:
        raise _required(where)
    raise InvalidArgument(f"{where}: expected true or false, got {kind(value)}")


def string_list(value: Any, where: str, *, max_items: int, max_len: int = 64) -> list[str]:
    """`value` as a list of at most `max_items` strings of at most `max_len` characters each (empty ones allowed)."""
    if type(value) is not list:
        if value is None:
            raise _required(where)
        raise InvalidArgument(f"{where}: expected a list of strings, got {kind(value)}")
    if len(value) > max_items:
        raise InvalidArgument(f"{where}: {len(value)} items, at most {max_items}")
    for i, item in enumerate(value):
        string(item, f"{where}[{i}]", required=False, max_len=max_len)
    return value


def roles_list(value: Any, where: str) -> tuple[Role, ...]:
    """Roles from a comma-separated string ("customer,agent") or a list of strings, in order, without repeats;
    null, "" and [] give (), for the caller's default. Unknown roles are refused without echoing them."""
    if value is None or value == "":
        return ()
    if type(value) is str:
        items = string(value, where, max_len=64).split(",")
    elif type(value) is list:
        items = string_list(value, where, max_items=4, max_len=16)
    else:
        raise InvalidArgument(f"{where}: expected customer and/or agent as a string or a list of strings, got {kind(value)}")
    roles: dict[Role, None] = {}
    for item in items:
        name = item.strip()
        if not name:
            continue
        try:
            roles[Role(name)] = None
        except ValueError:
            raise InvalidArgument(f"{where}: unknown role; expected customer and/or agent") from None
    return tuple(roles)
