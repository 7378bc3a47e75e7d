"""Scheduled broadcasts on top of the machine's own scheduler: the user's crontab.

restream writes one line per scheduled broadcast and marks it with a trailing ``# restream:<name>`` comment, so it
can find its own lines again. Every other line of the crontab (jobs, comments, blank lines, ``VAR=value`` lines) is
kept byte for byte. Building, parsing and merging lines are pure functions on strings; only ``read_crontab`` and
``write_crontab`` run the ``crontab`` command.

A line looks like::

    0 19 * * 1 RESTREAM_CONFIG_DIR=/home/me/.config/restream /usr/bin/python3 -m restream go /srv/show.mp4 --plain \
--log-file /home/me/.config/restream/logs/weekly.log -p default # restream:weekly
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from restream.errors import UsageError

MARK = "# restream:"
_MARK_RE = re.compile(r"\s#\s?restream:([A-Za-z0-9._-]{1,40})\s*$")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,40}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_NAMES = {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
          "sun", "mon", "tue", "wed", "thu", "fri", "sat"}
_FIELD_RE = re.compile(r"[0-9A-Za-z*,/-]+")


@dataclass(frozen=True)
class Entry:
    """One restream line found in a crontab."""

    name: str
    expr: str
    command: str  # the shell command as cron runs it (``\\%`` already turned back into ``%``)
    line: str  # the line as written, without its newline
    active: bool = True  # False when the line has been commented out by hand

    @property
    def env(self) -> dict[str, str]:
        """The ``VAR=value`` words the command starts with (``RESTREAM_CONFIG_DIR``, ``RESTREAM_FFMPEG``)."""
        try:
            words = shlex.split(self.command)
        except ValueError:
            return {}
        out = {}
        for word in words:
            var, eq, value = word.partition("=")
            if not eq or not _ENV_RE.fullmatch(var):
                break
            out[var] = value
        return out

    def config_dir(self, default: str) -> str:
        """The config directory the entry was made with (a line without one was made with ``default``)."""
        return self.env.get("RESTREAM_CONFIG_DIR") or default

    @property
    def summary(self) -> str:
        """The scheduled command without the interpreter and environment: ``go /srv/show.mp4 --duration 2h``."""
        try:
            words = shlex.split(self.command)
        except ValueError:
            return self.command
        if "restream" in words:  # ... python -m restream go …
            words = words[words.index("restream") + 1:]
        else:
            words = [w for w in words if not ("=" in w and _ENV_RE.fullmatch(w.split("=", 1)[0]))][1:]
        skip = {"--plain"}
        out, i = [], 0
        while i < len(words):  # the log file and profile are in their own columns
            if words[i] in ("--log-file", "-p", "--profile"):
                i += 2
                continue
            if words[i] not in skip:
                out.append(words[i])
            i += 1
        return shlex.join(out)

    @property
    def profile(self) -> str | None:
        try:
            words = shlex.split(self.command)
        except ValueError:
            return None
        for flag in ("-p", "--profile"):
            if flag in words[:-1]:
                return words[words.index(flag) + 1]
        return None


# -- cron expressions ---------------------------------------------------------------------------------------------

def validate_expr(expr: str) -> str:
    """A cron schedule both croniter and Debian's cron understand: five fields, or one of the @ macros."""
    from croniter import croniter

    if not isinstance(expr, str) or not expr.strip():
        raise UsageError("empty cron expression: give five fields, e.g. \"0 19 * * 1\" (Mondays at 19:00)")
    if not expr.isprintable():
        raise UsageError("the cron expression contains control characters (newlines, tabs)")
    expr = " ".join(expr.split())
    if expr == "@reboot":
        raise UsageError("@reboot is not a time schedule: use a systemd service for a broadcast at boot")
    if expr.startswith("@"):
        if expr not in MACROS:
            raise UsageError(f"invalid cron expression {expr!r}: known macros are {', '.join(MACROS)}")
        return expr
    fields = expr.split(" ")
    if len(fields) != 5:
        raise UsageError(f"invalid cron expression {expr!r}: cron needs 5 fields (minute hour day-of-month month "
                         f"day-of-week), got {len(fields)}")
    for f in fields:
        words = re.findall(r"[A-Za-z]+", f)
        if not _FIELD_RE.fullmatch(f) or any(w.lower() not in _NAMES for w in words):
            raise UsageError(f"invalid cron expression {expr!r}: field {f!r} is not understood by cron")
    if not croniter.is_valid(expr):
        raise UsageError(f"invalid cron expression {expr!r}")
    try:
        croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except Exception as exc:  # e.g. "0 0 31 2 *" never happens
        raise UsageError(f"invalid cron expression {expr!r}: {exc}") from None
    return expr


def next_runs(expr: str, start: datetime, count: int = 3) -> list[datetime]:
    """The next ``count`` times ``expr`` fires after ``start`` (give an aware local time, as cron uses)."""
    from croniter import croniter

    it = croniter(expr, start)
    return [it.get_next(datetime) for _ in range(count)]


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid schedule name {name!r}: use 1-40 letters, digits, '-', '_' or '.'")
    return name


# -- lines --------------------------------------------------------------------------------------------------------

def build_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """The shell command (as /bin/sh will run it): ``VAR=value … argv…``, every word quoted."""
    if not argv:
        raise ValueError("empty command")
    words = []
    for var, value in (env or {}).items():
        if not _ENV_RE.fullmatch(var):
            raise ValueError(f"bad environment variable name {var!r}")
        words.append(f"{var}={shlex.quote(value)}")
    words.extend(shlex.quote(a) for a in argv)
    return " ".join(words)


def build_line(expr: str, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """One crontab line (no newline): schedule, command with ``%`` escaped for cron, and the marker comment."""
    validate_name(name)
    command = build_command(argv, env)
    if any(c in command for c in "\n\r\0"):
        raise UsageError("the scheduled command may not contain newlines")
    if "\\%" in command:  # cron cannot express a backslash followed by a literal percent sign
        raise UsageError("the scheduled command may not contain a backslash followed by '%'")
    return f"{validate_expr(expr)} {command.replace('%', chr(92) + '%')} {MARK}{name}"


def _unescape_percent(text: str) -> str:
    return text.replace("\\%", "%")


def parse_line(line: str) -> Entry | None:
    """The restream entry on ``line`` (without its newline), or None for any line restream did not write."""
    m = _MARK_RE.search(line)
    if not m:
        return None
    body = line[:m.start()].strip()
    active = True
    if body.startswith("#"):
        active = False
        body = body.lstrip("#").strip()
    if body.startswith("@"):
        parts = body.split(None, 1)
        expr, rest = parts[0], parts[1] if len(parts) > 1 else ""
    else:
        parts = body.split(None, 5)
        if len(parts) < 6:
            return None
        expr, rest = " ".join(parts[:5]), parts[5]
    return Entry(m.group(1), expr, _unescape_percent(rest), line, active)


def command_of(line: str) -> str:
    """The shell command cron runs for one of restream's lines (what to run by hand to try it)."""
    entry = parse_line(line)
    if entry is None:
        raise ValueError("not a restream crontab line")
    return entry.command


def _split_lines(text: str) -> list[str]:
    """Lines with their newline kept; only "\\n" separates lines (as in cron), so joining gives ``text`` back."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def entries(text: str) -> list[Entry]:
    return [e for e in (parse_line(ln.rstrip("\n")) for ln in _split_lines(text)) if e is not None]


def _all(entry: Entry) -> bool:
    return True


def find(text: str, name: str, mine: Callable[[Entry], bool] = _all) -> Entry | None:
    return next((e for e in entries(text) if e.name == name and mine(e)), None)


def add(text: str, line: str, mine: Callable[[Entry], bool] = _all) -> str:
    """``text`` with ``line`` appended; every existing byte is kept (a missing final newline is supplied).
    ``mine``: which entries count (those of the same config directory), for the name's uniqueness."""
    entry = parse_line(line)
    if entry is None:
        raise ValueError("not a restream crontab line")
    if find(text, entry.name, mine) is not None:
        raise UsageError(f"a schedule named {entry.name!r} already exists: remove it first "
                         f"(restream schedule remove {entry.name}) or choose another --name")
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def remove(text: str, name: str, mine: Callable[[Entry], bool] = _all) -> tuple[str, list[Entry]]:
    """``text`` without restream's line(s) named ``name`` (of those ``mine`` accepts); every other line kept
    byte for byte."""
    kept: list[str] = []
    gone: list[Entry] = []
    for raw in _split_lines(text):
        entry = parse_line(raw.rstrip("\n"))
        if entry is not None and entry.name == name and mine(entry):
            gone.append(entry)
        else:
            kept.append(raw)
    return "".join(kept), gone


# -- the crontab command -------------------------------------------------------------------------------------------

def crontab_path() -> str:
    found = shutil.which("crontab")
    if not found:
        raise UsageError("no 'crontab' command on this machine (Debian/Ubuntu: apt-get install cron): "
                         "use 'restream schedule add … --print' and install the line with your scheduler")
    return found


def read_crontab(binary: str | None = None) -> str:
    """The current user's crontab; "" when they have none."""
    binary = binary or crontab_path()
    try:
        res = subprocess.run([binary, "-l"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run {binary} -l: {exc}") from None
    err = res.stderr.decode("utf-8", "replace").strip()
    if res.returncode == 1 and "no crontab for" in err.lower():
        return ""
    if res.returncode != 0:
        raise UsageError(f"crontab -l failed: {err.splitlines()[-1] if err else f'exit {res.returncode}'}")
    return res.stdout.decode("utf-8", "surrogateescape")


def write_crontab(text: str, binary: str | None = None) -> None:
    """Install ``text`` as the current user's whole crontab (``crontab -``)."""
    binary = binary or crontab_path()
    try:
        res = subprocess.run([binary, "-"], input=text.encode("utf-8", "surrogateescape"), capture_output=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot run {binary} -: {exc}") from None
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode("utf-8", "replace").strip()
        raise UsageError(f"crontab refused the new table: {' '.join(err.split()) or f'exit {res.returncode}'}")
