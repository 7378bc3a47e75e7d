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


def url_secrets(url: str | None) -> list[str]:
    """The credentials in a URL's userinfo (``rtmp://user:password@host/…``): the password, or a lone user name
    (``rtmp://TOKEN@host``), as written and percent-decoded. Empty when the URL has none."""
    from urllib.parse import unquote, urlsplit

    if not url or "@" not in url:
        return []
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    secret = password if password is not None else user
    if not secret:
        return []
    return list(dict.fromkeys([secret, unquote(secret)]))


def mask_url(url: str | None) -> str:
    """``rtmp://user:pw@host/live`` -> ``rtmp://user:••••@host/live``; a lone user name is masked whole."""
    from urllib.parse import urlsplit

    if not url or "@" not in url:
        return url or ""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:{MASK}" if password is not None and user else MASK
    return parts._replace(netloc=f"{masked}@{hostport}").geturl()
