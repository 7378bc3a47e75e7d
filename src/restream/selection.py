"""Pure: which destinations go live (enabled ones, narrowed by --only / --skip), within the five-at-once limit."""

from __future__ import annotations

from restream.errors import NotFoundError, UsageError
from restream.profile import MAX_LIVE, Destination, Profile


def split_names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _get(p: Profile, name: str) -> Destination:
    dest = p.find(name)
    if dest is None:
        raise NotFoundError(f"no destination named {name!r} in profile {p.name!r} (see: restream list)")
    return dest


def select(p: Profile, only: str | None = None, skip: str | None = None, allow_empty: bool = False
           ) -> tuple[Destination, ...]:
    """``--only a,b`` picks by name (enabled or not); ``--skip c`` drops from the enabled ones.

    ``allow_empty``: for a running broadcast re-reading its profile, where names may come and go.
    """
    if only and skip:
        raise UsageError("--only and --skip cannot be used together")
    if only:
        found = (p.find(n) if allow_empty else _get(p, n) for n in dict.fromkeys(split_names(only)))
        chosen = tuple(d for d in found if d is not None)
    else:
        skipped = {d.name for d in (p.find(n) if allow_empty else _get(p, n) for n in split_names(skip)) if d}
        chosen = tuple(d for d in p.enabled() if d.name not in skipped)
    if not chosen and not allow_empty:
        if not p.destinations:
            raise UsageError(f"profile {p.name!r} has no destinations: add one first (restream add youtube --key-stdin)")
        raise UsageError(f"no destination selected: all of profile {p.name!r}'s destinations are disabled or "
                         "skipped (see: restream list; restream enable NAME)")
    if len(chosen) > MAX_LIVE:
        names = ", ".join(d.name for d in chosen)
        raise UsageError(f"{len(chosen)} destinations selected ({names}); at most {MAX_LIVE} can go live at once: "
                         "choose with --only a,b,c or --skip x, or disable some (restream disable NAME)")
    return chosen
