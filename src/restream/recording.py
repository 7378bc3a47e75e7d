"""``--record``: the file's name (``{date}``, ``{time}``, ``{profile}``) and the checks that keep a recording from
ever destroying a file, all made before anything connects.

* A recording is never the input (same path after resolving links, or the same inode: a hard link).
* An existing file (or a link, even a dangling one) is never replaced unless ``--overwrite`` is given.
* The directory must exist and be writable.

ffmpeg opens the file only when the broadcast starts, so a file created in between is not protected; a cron job
whose ``--record`` holds ``{date}`` and ``{time}`` never meets its own old recordings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from restream.errors import UsageError

PLACEHOLDERS = {"date": "%Y-%m-%d", "time": "%H-%M-%S"}  # and {profile}
HELP = "{date} (2026-12-01), {time} (19-30-00) and {profile} are filled in when the broadcast starts"
_FIELD = re.compile(r"\{([^{}]*)\}")


def expand(template: str, profile: str, now: datetime | None = None) -> str:
    """``show-{date}_{time}.mkv`` -> ``show-2026-12-01_19-30-00.mkv`` (local time)."""
    now = now or datetime.now()

    def field(m: re.Match) -> str:
        name = m.group(1)
        if name == "profile":
            return profile
        if name in PLACEHOLDERS:
            return now.strftime(PLACEHOLDERS[name])
        raise UsageError(f"--record: unknown placeholder {{{name}}}: use {{date}}, {{time}} or {{profile}}")

    out = _FIELD.sub(field, template)
    if "{" in out or "}" in out:
        raise UsageError("--record: unmatched '{' or '}' in the file name (placeholders are {date}, {time}, "
                         "{profile})")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check(path: str, *, inputs: Iterable[str | None] = (), overwrite: bool = False) -> str:
    """The recording's path (``~`` expanded) if it is safe to write; UsageError naming the problem otherwise."""
    from restream.plan import record_slave

    if not path or not path.strip():
        raise UsageError("--record: empty file name")
    p = Path(path).expanduser()
    for inp in inputs:
        if inp and _same_file(p, Path(inp).expanduser()):
            raise UsageError(f"--record {path}: that is the input file; recording onto it would destroy it")
    record_slave(path)  # the file type
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"--record {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--record {path}: directory {folder} is not writable")
    if os.path.lexists(p):
        if p.is_dir():
            raise UsageError(f"--record {path}: is a directory; give a file name")
        if not overwrite:
            raise UsageError(f"--record {path}: file exists; add --overwrite to replace it, or put {{date}} and "
                             "{time} in the name")
        if not os.access(p, os.W_OK):
            raise UsageError(f"--record {path}: file exists and is not writable")
    return str(p)
