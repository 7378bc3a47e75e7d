"""Redaction: every stream key, in every spelling ffmpeg or a server may print it, becomes a mask."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "••••"


def backslash_escape(text: str) -> str:
    """A backslash before every character that is not a letter or digit (tee-spec escaping, one level)."""
    return "".join(c if c.isalnum() and c.isascii() else "\\" + c for c in text)


def spellings(secret: str) -> set[str]:
    """The forms a key can take in logs: as is, URL-encoded, tee-escaped, cut at the first space."""
    forms = {secret, quote(secret, safe=""), quote(secret, safe="/:?&="), quote_plus(secret),
             backslash_escape(secret), backslash_escape(backslash_escape(secret)), secret.replace(" ", "%20")}
    head = secret.split(" ", 1)[0]
    if head != secret and len(head) >= 4:
        forms.add(head)
    return {f for f in forms if f}


SHORT = 8  # keys shorter than this are masked only where they stand alone, not inside other words


def _pattern(form: str) -> str:
    escaped = re.escape(form)
    if len(form) >= SHORT:
        return escaped
    return rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"


class Redactor:
    """Replace every known secret in a text. Cheap when there are no secrets.

    A key of 8 characters or more is masked wherever it appears; a shorter one only where it is not part of a
    longer word (so a one-letter test key does not shred every log line).
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= spellings(secret)
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(_pattern, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)
