"""Import and export of destinations: restream's TOML, and api.video's restreams JSON."""

from __future__ import annotations

import json
import re

from restream import profile as prof
from restream.errors import UsageError

FORMATS = ("toml", "apivideo")


def export(p: prof.Profile, fmt: str, include_keys: bool) -> tuple[str, int]:
    """Return (text, number of keys left out)."""
    from restream.redact import mask_url, url_secrets

    left_out = 0 if include_keys else sum(d.stream_key is not None or bool(url_secrets(d.server_url))
                                          for d in p.destinations)
    if fmt == "toml":
        text = prof.dumps(p, include_keys=include_keys)
        if left_out:
            text = (f"# {left_out} stream key(s) left out (and URL passwords masked): export with --show-keys to "
                    "include them\n" + text)
        return text, left_out
    if fmt == "apivideo":
        items = []
        for d in p.destinations:
            item = {"name": d.name, "serverUrl": d.server_url if include_keys else mask_url(d.server_url)}
            if include_keys and d.stream_key is not None:
                item["streamKey"] = d.stream_key
            items.append(item)
        return json.dumps({"restreams": items}, ensure_ascii=False, indent=2) + "\n", left_out
    raise UsageError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


def _safe_name(raw: object, index: int) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(raw or "")).strip("-")[:40]
    return name or f"restream-{index}"


def parse_import(text: str, where: str) -> tuple[prof.Destination, ...]:
    """Parse a TOML profile or an api.video restreams document (object or bare list)."""
    text = text.removeprefix("\ufeff")  # a byte-order mark, as Windows editors save UTF-8
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")) and not stripped.startswith("[["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON: {exc}") from None
        items = doc.get("restreams") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise UsageError(f"{where}: expected {{\"restreams\": [...]}} or a list of restreams")
        out = []
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict) or "serverUrl" not in item:
                raise UsageError(f"{where}: restream #{i} needs at least 'serverUrl'")
            key = item.get("streamKey") or None
            try:
                out.append(prof.make_destination(_safe_name(item.get("name"), i), item["serverUrl"], key))
            except UsageError as exc:
                raise UsageError(f"{where}: restream #{i}: {exc}") from None
        return tuple(out)
    try:
        return prof.parse(text, where)
    except prof.ProfileError as exc:
        raise UsageError(str(exc)) from None


def merge(p: prof.Profile, incoming: tuple[prof.Destination, ...], replace_all: bool) -> prof.Profile:
    if replace_all:
        result = p.with_destinations(())
    else:
        result = p
    for d in incoming:
        result = result.added(d)
    return result
