"""Stream keys from where operators keep secrets: stored in the profile, an environment variable, a file, a command.

* ``stream_key_file = "$CREDENTIALS_DIRECTORY/youtube"``: read when going live (Docker and Kubernetes secret mounts,
  systemd ``LoadCredential=``); ``~`` and ``$VAR``/``${VAR}`` are expanded (an unset variable is an error, not an
  empty string); trailing newlines are stripped.
* ``stream_key_cmd = ["pass", "show", "youtube"]``: an argv list, run without a shell when going live and when a live
  change needs the key; at most ``CMD_TIMEOUT_S``; the key is the first line of its standard output.

A key source that fails raises ``KeySourceError`` (a ProfileError: exit 3) naming the destination and the kind of
source, never what it read or printed: nothing a command writes (stdout or stderr) is ever shown, logged or put in an
error, and the file's path is not echoed either (a key pasted where the path belongs would be printed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping

from restream import profile as prof
from restream.errors import ProfileError, UsageError

CMD_TIMEOUT_S = 10.0
MAX_FILE_BYTES = 64 * 1024
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class KeySourceError(ProfileError):
    """A destination's key file or key command failed (the message never holds the key, the path or the output)."""


def kind(dest: prof.Destination) -> str:
    """``stored`` | ``env`` | ``file`` | ``command`` | ``none``."""
    if dest.stream_key_cmd:
        return "command"
    if dest.stream_key_file:
        return "file"
    if dest.stream_key_env:
        return "env"
    return "stored" if dest.stream_key is not None else "none"


def expand_path(text: str, environ: Mapping[str, str] = os.environ) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded; raises KeyError(name) for a variable that is not set (or empty)."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        value = environ.get(name)
        if not value:
            raise KeyError(name)
        return value

    return os.path.expanduser(_VAR_RE.sub(sub, text))


def _clean(raw: bytes, dest: prof.Destination, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeySourceError(f"destination {dest.name!r}: its {what} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise KeySourceError(f"destination {dest.name!r}: its {what} is empty")
    try:
        return prof.validate_key(text)
    except UsageError as exc:  # the messages never quote the key
        raise KeySourceError(f"destination {dest.name!r}: its {what}: {exc}") from None


def read_file(dest: prof.Destination, environ: Mapping[str, str] = os.environ) -> str:
    assert dest.stream_key_file
    what = "key file (stream_key_file)"
    try:
        path = expand_path(dest.stream_key_file, environ)
    except KeyError as exc:
        raise KeySourceError(f"destination {dest.name!r}: its {what} is under ${exc.args[0]}, which is not set"
                             ) from None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise KeySourceError(f"destination {dest.name!r}: cannot read its {what}: {reason}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise KeySourceError(f"destination {dest.name!r}: its {what} is larger than {MAX_FILE_BYTES // 1024} KiB: "
                             "not a stream key")
    return _clean(raw, dest, what)


def run_command(dest: prof.Destination, timeout: float = CMD_TIMEOUT_S,
                environ: Mapping[str, str] | None = None) -> str:
    """Run the key command (no shell, stdin closed, stderr discarded) in its own process group; the first line of
    its standard output is the key. On a timeout the whole group is killed."""
    argv = list(dest.stream_key_cmd or ())
    assert argv
    what = "key command (stream_key_cmd)"
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=dict(environ) if environ is not None else None)
    except OSError as exc:
        raise KeySourceError(f"destination {dest.name!r}: cannot run its {what}: "
                             f"{exc.strerror or type(exc).__name__}") from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise KeySourceError(f"destination {dest.name!r}: its {what} did not finish within {timeout:g} s") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        status = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
        raise KeySourceError(f"destination {dest.name!r}: its {what} failed (exit {status})")
    first = out.split(b"\n", 1)[0]
    return _clean(first, dest, f"{what} output")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def resolve(dest: prof.Destination, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key to publish with, from wherever the destination keeps it (read or run now)."""
    k = kind(dest)
    if k == "file":
        return read_file(dest, environ)
    if k == "command":
        return run_command(dest)
    return prof.resolve_key(dest, environ)  # type: ignore[arg-type]


class Resolver:
    """Resolves keys, remembering each destination's: a live change runs a key command (or reads a key file) only
    for a destination that is new or whose key source changed."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.environ = environ
        self._cache: dict[tuple, str | None] = {}

    def __call__(self, dest: prof.Destination) -> str | None:
        ident = (dest.name, dest.stream_key, dest.stream_key_env, dest.stream_key_file, dest.stream_key_cmd)
        if ident not in self._cache:
            self._cache[ident] = resolve(dest, self.environ)
        return self._cache[ident]
