"""A reader for the plain TOML that restream writes, so that `list` and `show` need not import tomllib.

Importing tomllib costs about 13 ms (it pulls in typing, datetime and string), a sixth of what issue 16 allows
`restream list`. ``loads`` reads exactly the shapes tomli_w writes for a profile, and nothing else:

    version = 1
    [[destinations]]
    key = "text" (with TOML 1.0's escapes)
    key = true | false | 123 | 12.5 | ["string", ...] | [ (then one "string", per line, then) ]

Anything else (a comment, a dotted or quoted key, a date, an array of anything but strings, another table, a repeated
key, a control character, an escape TOML 1.0 has not) returns ``None``, and the caller parses the text with tomllib,
which gives the verdict and the error message. So this is never a second opinion on what TOML means: where it
answers, tomllib gives the same answer (tests/test_quicktoml.py fuzzes that claim), and where it could differ it does
not answer.
"""

from __future__ import annotations

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGITS = frozenset("0123456789")
_WS = " \t"
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}
_HEX = frozenset("0123456789abcdefABCDEF")


def _unicode(digits: str) -> str | None:
    """The character of a ``\\uXXXX`` or ``\\UXXXXXXXX`` escape: a Unicode scalar value, else None."""
    if not set(digits) <= _HEX:
        return None
    code = int(digits, 16)
    return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else None


def _scan(text: str, start: int) -> tuple[str, int] | None:
    """The basic string that opens at ``text[start]`` (TOML 1.0's escapes decoded) and the index after it."""
    if text[start:start + 1] != '"':
        return None
    out = []
    i = start + 1
    while True:
        quote, slash = text.find('"', i), text.find("\\", i)
        if quote < 0:
            return None
        if 0 <= slash < quote:
            out.append(text[i:slash])
            kind = text[slash + 1:slash + 2]
            if kind in _ESCAPES:
                out.append(_ESCAPES[kind])
                i = slash + 2
                continue
            size = {"u": 4, "U": 8}.get(kind)
            digits = text[slash + 2:slash + 2 + size] if size else ""
            char = _unicode(digits) if size and len(digits) == size else None
            if char is None:
                return None
            out.append(char)
            i = slash + 2 + size
            continue
        out.append(text[i:quote])
        return "".join(out), quote + 1


def _string(text: str) -> str | None:
    """``text`` if it is one basic string, whole; else None."""
    scanned = _scan(text, 0)
    return scanned[0] if scanned and scanned[1] == len(text) else None


def _inline_array(text: str) -> list[str] | None:
    """``["a", "b"]``: basic strings only, on one line, one trailing comma allowed; else None."""
    out: list[str] = []
    i = 1
    while True:
        i = _skip_ws(text, i)
        if text[i:] == "]":
            return out
        scanned = _scan(text, i)
        if scanned is None:
            return None
        out.append(scanned[0])
        i = _skip_ws(text, scanned[1])
        if text[i:i + 1] == ",":
            i += 1
        elif text[i:] != "]":
            return None


def _skip_ws(text: str, i: int) -> int:
    while text[i:i + 1] in (" ", "\t"):
        i += 1
    return i


def _number(text: str) -> int | float | None:
    """A decimal integer or ``digits.digits`` without sign, underscores, exponent or leading zero."""
    if len(text) > 100:
        return None  # no setting is that long; past 4300 digits int() raises (sys.set_int_max_str_digits)
    whole, dot, frac = text.partition(".")
    if not whole or not set(whole) <= _DIGITS or (len(whole) > 1 and whole[0] == "0"):
        return None
    if not dot:
        return int(whole)
    if not frac or not set(frac) <= _DIGITS:
        return None
    return float(text)


def _value(text: str):
    if text == "true":
        return True
    if text == "false":
        return False
    if text.startswith('"'):
        return _string(text)
    if text.startswith("["):
        return _inline_array(text)
    return _number(text)


def loads(text: str) -> dict | None:
    """The document, or None: not in the subset (the caller asks tomllib)."""
    if any((c < " " and c not in "\t\n") or c == "\x7f" for c in text):
        return None  # a carriage return or another control character: tomllib's to judge
    doc: dict = {}
    table = doc
    array_key: str | None = None
    array: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip(_WS)
        if array_key is not None:  # inside a multi-line array of strings, one item per line
            if line == "]":
                table[array_key] = array
                array_key = None
                continue
            if not line.endswith(","):
                return None
            item = _string(line[:-1].rstrip(_WS))
            if item is None:
                return None
            array.append(item)
            continue
        if not line:
            continue
        if line.startswith("["):
            if line != "[[destinations]]" or ("destinations" in doc and table is doc):
                return None  # another table, or an array of tables after `destinations = []`
            table = {}
            doc.setdefault("destinations", []).append(table)
            continue
        key, eq, value = line.partition("=")
        key, value = key.rstrip(_WS), value.strip(_WS)
        if not eq or not key or not set(key) <= _BARE or key in table:
            return None
        if value == "[":
            array_key, array = key, []
            continue
        parsed = _value(value)
        if parsed is None:
            return None
        table[key] = parsed
    return None if array_key is not None else doc
