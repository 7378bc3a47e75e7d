"""Profiles: named destinations in one TOML file, validated on load, written atomically with mode 0600.

A profile is ``<config dir>/profiles/<name>.toml``::

    version = 1
    [[destinations]]
    name = "youtube"
    server_url = "rtmp://a.rtmp.youtube.com/live2"
    stream_key = "xxxx-xxxx"        # or: stream_key_env = "YT_KEY", stream_key_file = "$CREDENTIALS_DIRECTORY/yt",
                                    #     stream_key_cmd = ["pass", "show", "youtube"]  (keysource.py)
    backup_url = "rtmp://b.rtmp.youtube.com/live2?backup=1"   # optional; backup = "failover" (default) or "both"
    enabled = true
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from restream import paths, quicktoml
from restream.errors import NotFoundError, ProfileError, UsageError

FORMAT_VERSION = 1
MAX_LIVE = 5
SCHEMES = ("rtmp", "rtmps", "srt")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,40}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELDS = ("name", "server_url", "stream_key", "stream_key_env", "enabled", "platform", "ca_file", "stream_key_file",
           "stream_key_cmd", "backup_url", "backup")
BACKUP_MODES = ("failover", "both")  # both: the relay feeds primary and backup at once
# issue 14: a destination's own encoding (all optional; the broadcast's options are the default)
ENCODING_FIELDS = ("video_bitrate", "audio_bitrate", "size", "fps", "crop", "copy")
_FIELDS += ENCODING_FIELDS
CROPS = ("9:16", "1:1")
_SIZE_RE = re.compile(r"(\d{2,5})x(\d{2,5})")
MASK = "••••"


# The two records are named tuples, not dataclasses: importing dataclasses (and inspect with it) and building the
# classes cost `restream list` about 15 ms of the 80 ms issue 16 allows. Frozen, compared and hashed by value.
_DEST_FIELDS = (
    "name", "server_url", "stream_key", "stream_key_env", "enabled", "platform", "ca_file",
    # -- its own encoding (issue 14); None: the broadcast's ----------------------------------------------------------
    "video_bitrate",  # kbit/s
    "audio_bitrate",  # kbit/s
    "size",  # "WIDTHxHEIGHT"
    "fps",
    "crop",  # "9:16" (centre crop to a vertical picture) or "1:1"
    "copy",  # True: pass the source through; False: always encode
    # -- where the key and a backup ingest come from (issue 15) ------------------------------------------------------
    "stream_key_file",  # read when going live; ~ and $VARS expanded (keysource.py)
    "stream_key_cmd",  # a tuple: the argv run when going live; first line of stdout
    "backup_url",  # a second ingest for the same key (YouTube's b.rtmp...?backup=1)
    "backup",  # "failover" (the default with a backup_url) or "both" (fed at once)
)


class Destination(namedtuple("Destination", _DEST_FIELDS, defaults=(None, None, True) + (None,) * 12)):
    """One destination, validated by ``make_destination``. ``replace(**changes)`` gives a changed copy."""

    __slots__ = ()
    name: str
    server_url: str
    stream_key: str | None
    stream_key_env: str | None
    enabled: bool
    platform: str | None
    ca_file: str | None
    video_bitrate: int | None
    audio_bitrate: int | None
    size: str | None
    fps: float | None
    crop: str | None
    copy: bool | None
    stream_key_file: str | None
    stream_key_cmd: tuple[str, ...] | None
    backup_url: str | None
    backup: str | None

    def replace(self, **changes) -> "Destination":
        return self._replace(**changes)

    def encoding(self) -> dict:
        """Its own encoding settings (only those set), as in the profile."""
        return {k: getattr(self, k) for k in ENCODING_FIELDS if getattr(self, k) is not None}

    def describe_encoding(self) -> str:
        """``video 6000k, size 720x1280, crop 9:16``; ``-`` when it has none."""
        parts = []
        for k, v in self.encoding().items():
            if k == "copy":
                parts.append("copy" if v else "encode")
            elif k in ("video_bitrate", "audio_bitrate"):
                parts.append(f"{k.split('_')[0]} {v}k")
            else:
                parts.append(f"{k} {int(v) if k == 'fps' and v == int(v) else v}")
        return ", ".join(parts) or "-"

    @property
    def backup_mode(self) -> str | None:
        return (self.backup or "failover") if self.backup_url else None

    @property
    def scheme(self) -> str:
        return urlsplit(self.server_url).scheme.lower()

    @property
    def host(self) -> str:
        return urlsplit(self.server_url).hostname or ""

    def key_source(self) -> str:
        """How the key is found, never the key: ``$VAR``, ``file``, ``command``, ``stored`` or ``none``."""
        if self.stream_key_cmd:
            return "command"
        if self.stream_key_file:
            return "file"
        if self.stream_key_env:
            return f"${self.stream_key_env}"
        return "stored" if self.stream_key is not None else "none"


class Profile(namedtuple("Profile", ("name", "path", "destinations", "exists"), defaults=((), True))):
    """A profile as read: ``exists`` is False for a default profile with no file yet (not compared)."""

    __slots__ = ()
    name: str
    path: Path
    destinations: tuple[Destination, ...]
    exists: bool

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return self[:3] == other[:3]

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self[:3])

    def find(self, name: str) -> Destination | None:
        folded = name.casefold()
        return next((d for d in self.destinations if d.name.casefold() == folded), None)

    def get(self, name: str) -> Destination:
        dest = self.find(name)
        if dest is None:
            raise NotFoundError(f"no destination named {name!r} in profile {self.name!r} (see: restream list)")
        return dest

    def enabled(self) -> tuple[Destination, ...]:
        return tuple(d for d in self.destinations if d.enabled)

    def with_destinations(self, destinations: tuple[Destination, ...] | list[Destination]) -> "Profile":
        return self._replace(destinations=tuple(destinations))

    def added(self, dest: Destination) -> "Profile":
        if self.find(dest.name) is not None:
            raise UsageError(f"a destination named {dest.name!r} already exists (names are case-insensitive)")
        return self.with_destinations(self.destinations + (dest,))

    def replaced(self, old_name: str, dest: Destination) -> "Profile":
        old = self.get(old_name)
        clash = self.find(dest.name)
        if clash is not None and clash is not old:
            raise UsageError(f"a destination named {dest.name!r} already exists (names are case-insensitive)")
        return self.with_destinations(tuple(dest if d is old else d for d in self.destinations))

    def removed(self, name: str) -> "Profile":
        old = self.get(name)
        return self.with_destinations(tuple(d for d in self.destinations if d is not old))


# -- validation (pure) -------------------------------------------------------------------------------------------

def validate_profile_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name or ""):
        raise UsageError(f"invalid profile name {name!r}: use 1-40 letters, digits, '-', '_' or '.'")
    if name.startswith("."):
        raise UsageError(f"invalid profile name {name!r}: it may not start with '.'")
    return name


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(f"invalid destination name {name!r}: use 1-40 letters, digits, '-', '_' or '.'")
    return name


def validate_url(url: str) -> str:
    if not isinstance(url, str):
        raise UsageError("the server URL must be a string")
    if not url:
        raise UsageError("the server URL is empty")
    if any(c.isspace() for c in url) or not url.isprintable():
        raise UsageError("the server URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # urllib's messages quote the netloc or port, which may hold a password or a pasted key: say less.
        raise UsageError("invalid server URL: malformed host or port") from None
    if parts.scheme.lower() not in SCHEMES:
        raise UsageError(f"unsupported URL scheme {parts.scheme or '(none)'!r}: use rtmp://, rtmps:// or srt://")
    if not parts.hostname:
        raise UsageError("the server URL has no host")
    if port == 0:
        raise UsageError("the server URL has port 0")
    return url


def validate_key(key: str) -> str:
    if not isinstance(key, str):
        raise UsageError("the stream key must be a string")
    if key == "":
        raise UsageError("the stream key is empty")
    if not key.isprintable():
        raise UsageError("the stream key contains control characters (tabs, newlines)")
    return key


def validate_env_name(var: str) -> str:
    if not isinstance(var, str) or not _ENV_RE.fullmatch(var):
        # not echoed: a stream key given to --key-env by mistake would be printed
        raise UsageError("invalid environment variable name: --key-env/stream_key_env takes the variable's name "
                         "(letters, digits and '_', not starting with a digit), not the key itself")
    return var


def key_in_url(url: str, key: str) -> bool:
    """True when ``key`` looks glued onto ``url`` as well (a common copy-paste mistake)."""
    path = urlsplit(url).path.rstrip("/")
    last = path.rsplit("/", 1)[-1]
    return bool(last) and (last == key or url.rstrip("/").endswith("/" + key))


def make_destination(
    name: str,
    server_url: str,
    stream_key: str | None = None,
    stream_key_env: str | None = None,
    enabled: bool = True,
    platform: str | None = None,
    ca_file: str | None = None,
    stream_key_file: str | None = None,
    stream_key_cmd: list[str] | tuple[str, ...] | None = None,
    backup_url: str | None = None,
    backup: str | None = None,
    **encoding,
) -> Destination:
    """Build a validated destination; raises UsageError naming the first problem. ``encoding``: its own
    encoding settings (ENCODING_FIELDS)."""
    validate_name(name)
    validate_url(server_url)
    sources = [s for s, v in (("stream_key", stream_key), ("stream_key_env", stream_key_env),
                              ("stream_key_file", stream_key_file), ("stream_key_cmd", stream_key_cmd))
               if v is not None]
    if len(sources) > 1:
        raise UsageError(f"give the key one way, not both {' and '.join(sources)}")
    if stream_key_file is not None:
        validate_key_file(stream_key_file)
    if stream_key_cmd is not None:
        stream_key_cmd = validate_key_cmd(stream_key_cmd)
    if backup_url is not None:
        validate_url(backup_url)
        if urlsplit(backup_url).scheme.lower() not in ("rtmp", "rtmps"):
            raise UsageError("the backup URL must be rtmp:// or rtmps:// (the backup goes through the relay)")
        if urlsplit(server_url).scheme.lower() not in ("rtmp", "rtmps"):
            raise UsageError("a backup ingest needs an rtmp:// or rtmps:// server URL (SRT does not use the relay)")
        if backup_url == server_url:
            raise UsageError("the backup URL is the server URL itself")
    if backup is not None:
        if backup not in BACKUP_MODES:
            raise UsageError("'backup' must be \"failover\" or \"both\"")
        if backup_url is None:
            raise UsageError("'backup' needs a 'backup_url'")
    if stream_key is not None:
        validate_key(stream_key)
        if key_in_url(server_url, stream_key):
            raise UsageError("the server URL already ends with the stream key: give the URL without the key")
    if stream_key_env is not None:
        validate_env_name(stream_key_env)
    if not isinstance(enabled, bool):
        raise UsageError("'enabled' must be true or false")
    if platform is not None and not isinstance(platform, str):
        raise UsageError("'platform' must be a string")
    if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
        raise UsageError("'ca_file' must be a path")
    return Destination(name, server_url, stream_key, stream_key_env, enabled, platform, ca_file,
                       **validate_encoding(encoding), stream_key_file=stream_key_file, stream_key_cmd=stream_key_cmd,
                       backup_url=backup_url, backup=backup)


def validate_encoding(values: dict) -> dict:
    """A destination's own encoding settings, checked (``None`` values mean "the broadcast's")."""
    unknown = sorted(set(values) - set(ENCODING_FIELDS))
    if unknown:
        raise TypeError(f"unknown encoding setting(s): {', '.join(unknown)}")
    out = {k: v for k, v in values.items() if v is not None}
    for k in ("video_bitrate", "audio_bitrate"):
        if k in out and (type(out[k]) is not int or not 16 <= out[k] <= 100_000):
            raise UsageError(f"'{k}' must be a whole number of kbit/s from 16 to 100000 (e.g. 6000)")
    if "size" in out:
        m = _SIZE_RE.fullmatch(out["size"]) if isinstance(out["size"], str) else None
        if not m or int(m.group(1)) % 2 or int(m.group(2)) % 2:
            raise UsageError("'size' must be \"WIDTHxHEIGHT\" with even numbers, e.g. \"720x1280\"")
    if "fps" in out:
        if type(out["fps"]) not in (int, float) or not 1 <= out["fps"] <= 240:
            raise UsageError("'fps' must be a number from 1 to 240")
        out["fps"] = float(out["fps"])
    if "crop" in out and out["crop"] not in CROPS:
        raise UsageError(f"'crop' must be one of {', '.join(CROPS)}")
    if "copy" in out:
        if not isinstance(out["copy"], bool):
            raise UsageError("'copy' must be true or false")
        if out["copy"] and len(out) > 1:
            raise UsageError("'copy = true' passes the source through: it cannot go with "
                             f"{', '.join(k for k in out if k != 'copy')} (those need an encode)")
    return out



def validate_key_file(path: str) -> str:
    if not isinstance(path, str) or not path or not path.isprintable():
        raise UsageError("'stream_key_file' must be a path (no control characters)")
    return path


def validate_key_cmd(argv) -> tuple[str, ...]:
    if isinstance(argv, str) or not isinstance(argv, (list, tuple)) or not argv \
            or not all(isinstance(a, str) for a in argv) or not argv[0]:
        raise UsageError("'stream_key_cmd' must be a non-empty list of strings (the command and its arguments, "
                         "run without a shell), e.g. [\"pass\", \"show\", \"youtube\"]")
    if any("\0" in a for a in argv):
        raise UsageError("'stream_key_cmd' contains a NUL character")
    return tuple(argv)


def resolve_key(dest: Destination, environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """The key to publish with: stored, or read from the environment now."""
    if dest.stream_key_env:
        value = environ.get(dest.stream_key_env)
        if not value:  # a key source that failed: a profile error (exit 3), like a key file or command
            raise ProfileError(
                f"destination {dest.name!r}: its key variable ${dest.stream_key_env} is not set")
        return validate_key(value)
    return dest.stream_key


def mask_key(key: str | None) -> str:
    """``••••wxyz`` for long keys, fully masked for short ones; never the whole key."""
    if not key:
        return ""
    return MASK + key[-4:] if len(key) >= 12 else MASK * 2


# -- TOML <-> model ----------------------------------------------------------------------------------------------

def to_document(profile: Profile, include_keys: bool = True) -> dict:
    dests = []
    for d in profile.destinations:
        item = {"name": d.name, "server_url": d.server_url}
        from restream.redact import mask_url

        if not include_keys:  # credentials in the URL are a key too
            item["server_url"] = mask_url(d.server_url)
        if d.stream_key is not None and include_keys:
            item["stream_key"] = d.stream_key
        if d.stream_key_env is not None:
            item["stream_key_env"] = d.stream_key_env
        item["enabled"] = d.enabled
        if d.platform:
            item["platform"] = d.platform
        if d.ca_file:
            item["ca_file"] = d.ca_file
        if d.stream_key_file is not None:
            item["stream_key_file"] = d.stream_key_file
        if d.stream_key_cmd is not None:
            item["stream_key_cmd"] = list(d.stream_key_cmd)
        if d.backup_url is not None:
            item["backup_url"] = d.backup_url if include_keys else mask_url(d.backup_url)
        if d.backup is not None:
            item["backup"] = d.backup
        item.update(d.encoding())
        dests.append(item)
    return {"version": FORMAT_VERSION, "destinations": dests}


def from_document(doc: dict, where: str) -> tuple[Destination, ...]:
    """Validate a parsed profile document; errors name ``where`` and the entry."""
    version = doc.get("version", FORMAT_VERSION)
    if type(version) is not int or version != FORMAT_VERSION:  # `version = true` equals 1 in Python
        raise ProfileError(f"{where}: unsupported version {version!r} (this restream reads version {FORMAT_VERSION})")
    unknown = sorted(set(doc) - {"version", "destinations"})
    if unknown:
        raise ProfileError(f"{where}: unknown top-level key(s): {', '.join(unknown)}")
    raw = doc.get("destinations", [])
    if not isinstance(raw, list):
        raise ProfileError(f"{where}: 'destinations' must be an array of tables ([[destinations]])")
    out: list[Destination] = []
    seen: set[str] = set()
    for i, item in enumerate(raw, 1):
        label = f"destination #{i}"
        if not isinstance(item, dict):
            raise ProfileError(f"{where}: {label} is not a table")
        if isinstance(item.get("name"), str):
            label += f" ({item['name']!r})"
        extra = sorted(set(item) - set(_FIELDS))
        if extra:
            raise ProfileError(f"{where}: {label}: unknown key(s): {', '.join(extra)}")
        for required in ("name", "server_url"):
            if required not in item:
                raise ProfileError(f"{where}: {label}: missing '{required}'")
        try:
            dest = make_destination(**{k: item[k] for k in _FIELDS if k in item})
        except UsageError as exc:
            raise ProfileError(f"{where}: {label}: {exc}") from None
        folded = dest.name.casefold()
        if folded in seen:
            raise ProfileError(f"{where}: {label}: duplicate name (names are case-insensitive)")
        seen.add(folded)
        out.append(dest)
    return tuple(out)


def parse(text: str, where: str) -> tuple[Destination, ...]:
    doc = quicktoml.loads(text)  # what restream wrote, without importing tomllib (start-up time)
    if doc is None:
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{where}: not valid TOML: {exc}") from None
        except ValueError:  # an integer of over 4300 digits (Python's limit on int(str))
            raise ProfileError(f"{where}: not valid TOML: a number too long to read") from None
    return from_document(doc, where)


def dumps(profile: Profile, include_keys: bool = True) -> str:
    return document_text(to_document(profile, include_keys))


def document_text(doc: dict) -> str:
    """The document as TOML, every destination as its own ``[[destinations]]`` table: tomli_w alone writes an
    array of short tables inline, which quicktoml leaves to tomllib (so `list` would import it)."""
    import tomli_w

    dests = doc.get("destinations")
    if not dests or not all(dests):
        return tomli_w.dumps(doc)
    head = tomli_w.dumps({k: v for k, v in doc.items() if k != "destinations"})
    return head + "".join("\n[[destinations]]\n" + tomli_w.dumps(item) for item in dests)


# -- disk --------------------------------------------------------------------------------------------------------

def list_profiles() -> list[str]:
    folder = paths.profiles_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml") if not p.name.startswith("."))


def load(name: str, must_exist: bool = False) -> Profile:
    validate_profile_name(name)
    path = paths.profile_path(name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            raise NotFoundError(f"profile {name!r} not found ({path})") from None
        return Profile(name, path, (), exists=False)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: not UTF-8 text") from None
    return Profile(name, path, parse(text, str(path)))


def _ensure_dir(folder: Path) -> None:
    for d in (folder.parent, folder):
        if not d.is_dir():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)


def atomic_write(path: Path, text: str, durable: bool = True) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a part (mode 0600).
    ``durable``: also survive a power cut (fsync the file and its directory); a file rewritten every second that
    means nothing after a reboot (the running broadcast's status) does without."""
    import tempfile  # here: the reading commands (list, show) start faster without it

    _ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text.encode("utf-8"))
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(profile: Profile) -> None:
    try:
        atomic_write(profile.path, dumps(profile))
    except OSError as exc:
        raise ProfileError(f"{profile.path}: cannot write: {exc.strerror}") from None


@contextmanager
def locked(name: str, timeout: float = 30.0) -> Iterator[None]:
    """Hold the profile's edit lock (every read-modify-write goes through here)."""
    from filelock import FileLock, Timeout

    lock_path = paths.profile_lock_path(name)
    try:
        _ensure_dir(lock_path.parent)
    except OSError as exc:
        raise ProfileError(f"{lock_path.parent}: cannot create: {exc.strerror}") from None
    lock = FileLock(str(lock_path), mode=0o600)
    try:
        with lock.acquire(timeout=timeout):
            yield
    except Timeout:
        raise ProfileError(f"profile {name!r} is being edited by another command (lock {lock_path})") from None


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files left by a save that was killed mid-way (only call while holding the profile's lock)."""
    try:
        leftovers = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return
    for tmp in leftovers:
        try:
            tmp.unlink()
        except OSError:
            pass


def update(name: str, change: Callable[[Profile], Profile]) -> Profile:
    """Load, change and save a profile under its lock; the file is untouched if ``change`` raises."""
    with locked(name):
        _remove_stale_temps(paths.profile_path(name))
        before = load(name)
        after = change(before)
        if after != before or not before.exists:
            save(after)
        return after
