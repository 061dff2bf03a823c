"""Log text without caller data: error messages for the bridge quote what it sent (ids, parameters, phone
numbers); the log keeps the message's shape and drops those values."""

from __future__ import annotations

import re

# Quoted values (our messages quote what the caller sent with repr: 'x' or "x"), then runs of 6 or
# more digits with optional separators, as phone numbers are written (+1 415 555 0100, 4155550100).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r"\+?\d(?:[\d\-. ()]{4,}\d)")


def redact(text: object) -> str:
    """`text` with quoted values replaced by '…' and phone-number-like digit runs by <number>."""
    out = _QUOTED.sub("'…'", str(text))
    return _NUMBER.sub(lambda m: m.group(0) if sum(c.isdigit() for c in m.group(0)) < 6 else "<number>", out)
