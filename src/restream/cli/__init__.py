"""The restream command line: thin commands over the library; the only place errors become exit codes."""

from __future__ import annotations

import functools
from dataclasses import dataclass
import os
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

# Help as Click prints it: Typer's Rich help would import Rich (~60 ms) for every --help and every option error.
typer.core.HAS_RICH = False

from restream import __version__, listing, paths, platforms
from restream import profile as prof
from restream.redact import mask_url, url_secrets
from restream.errors import (
    BroadcastError,
    InputError,
    RestreamError,
    UsageError,
)

# Exit codes (documented in the README) and the one mapping from errors to them live in exits.py (the fast path
# exits the same way without importing this module); re-exported here.
from restream.exits import (  # noqa: E402,F401
    EXIT_BROADCAST,
    EXIT_BUSY,
    EXIT_FFMPEG,
    EXIT_OK,
    EXIT_PROFILE,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    exit_code_for,
)


class _Group(typer.core.TyperGroup):
    """The root command: Click's and Typer's own errors (unknown option, bad value, missing argument) become one
    ``restream: error: …`` line and a hint, exit 2, like every other error; Typer's boxes are never drawn."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import click

        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _err(" ".join(exc.format_message().split()))
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                typer.echo(f"see '{ctx.command_path} --help'", err=True)
            sys.exit(EXIT_USAGE)
        except click.Abort:
            typer.echo("", err=True)
            sys.exit(EXIT_SIGINT)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


app = typer.Typer(
    cls=_Group,
    name="restream",
    help="Multistream one live input to up to five platforms with one ffmpeg: encode once, fan out, self-heal.\n\n"
    "Quick start:  restream demo   (local, touches nothing)\n\n"
    "  restream add youtube --key-stdin < yt.key\n\n"
    "  restream add twitch --key-env TWITCH_KEY\n\n"
    "  restream go video.mp4 --loop",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=True,
)


def _err(message: str) -> None:
    typer.echo(f"restream: error: {message}", err=True)


def warn(message: str) -> None:
    typer.echo(f"restream: warning: {message}", err=True)


def notice(message: str) -> None:
    typer.echo(f"restream: notice: {message}", err=True)


def command(*args, **kwargs):
    """Register a command whose RestreamErrors become one stderr line and their exit code."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            try:
                return fn(*a, **kw)
            except RestreamError as exc:
                _err(str(exc))
                raise typer.Exit(exit_code_for(exc)) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


def _version(value: bool) -> None:
    if value:
        typer.echo(f"restream {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = False,
) -> None:
    pass


def complete_profiles(incomplete: str) -> list[str]:
    """Shell completion: the profiles in the config directory."""
    try:
        return [n for n in prof.list_profiles() if n.startswith(incomplete)]
    except Exception:  # completion never prints a traceback into the user's shell
        return []


def complete_destinations(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: destination names of the profile given so far (-p, RESTREAM_PROFILE or default);
    after a comma (--only a,b) the names not listed yet."""
    try:
        name = (ctx.params.get("profile") if ctx is not None else None) or os.environ.get("RESTREAM_PROFILE") \
            or paths.DEFAULT_PROFILE
        names = [d.name for d in prof.load(name).destinations]
    except Exception:
        return []
    head, _, last = incomplete.rpartition(",")
    given = set(head.split(",")) if head else set()
    prefix = head + "," if head else ""
    return [prefix + n for n in names if n.startswith(last) and n not in given]


ProfileOpt = Annotated[str, typer.Option("--profile", "-p", envvar="RESTREAM_PROFILE", metavar="NAME",
                                         help="Profile to use (env RESTREAM_PROFILE).",
                                         autocompletion=complete_profiles)]
DestArg = Annotated[str, typer.Argument(metavar="NAME", help="The destination's name (see: restream list).",
                                        autocompletion=complete_destinations)]
ShowKeys = Annotated[bool, typer.Option("--show-keys", help="Print stream keys in full (they are masked otherwise).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# Options shared by the broadcasting commands (go, relay, demo).
OnlyOpt = Annotated[Optional[str], typer.Option("--only", metavar="A,B", help="Only these destinations.",
                                                autocompletion=complete_destinations)]
SkipOpt = Annotated[Optional[str], typer.Option("--skip", metavar="A,B", help="All enabled but these.",
                                                autocompletion=complete_destinations)]
FfmpegOpt = Annotated[Optional[str],
    typer.Option("--ffmpeg", metavar="PATH", help="ffmpeg to use (env RESTREAM_FFMPEG).")]
PlainOpt = Annotated[bool, typer.Option("--plain", help="Plain log lines instead of the live view.")]
JsonEventsOpt = Annotated[bool, typer.Option("--json", help="One JSON event per line on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings, errors and the final summary.")]
StatusIntervalOpt = Annotated[float,
    typer.Option("--status-interval", metavar="SECONDS", help="Seconds between progress lines.")]
LogFileOpt = Annotated[Optional[Path],
    typer.Option("--log-file", help="Append the redacted ffmpeg log and state changes here.")]
StallTimeoutOpt = Annotated[float, typer.Option(
    "--stall-timeout", metavar="SECONDS",
    help="Drop and reconnect a destination that has taken no data this long (it is shown 'stalled' after 5 s); "
         "0 never drops it.")]
RecordOpt = Annotated[Optional[str], typer.Option(
    "--record", metavar="FILE", help="Also record locally (.mkv .mp4 .mov .flv .ts); {date}, {time} and {profile} "
    "in the name are filled in (e.g. show-{date}_{time}.mkv). An existing file is never replaced without "
    "--overwrite.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Let --record replace an existing file.")]
DurationOpt = Annotated[Optional[str], typer.Option(
    "--duration", metavar="90s|30m|2h|7d", help="Stop cleanly after this long (at most 366d).")]
TAKE_OVER_S = 2.0  # relay --slate: a new verified publisher replaces one that sent nothing this long
SLATE_CARD = "\x00card"  # --slate given without a FILE: restream's card
SlateOpt = Annotated[Optional[str], typer.Option(
    "--slate", metavar="[FILE]", help="Keep the destinations published while the source is gone: show a slate "
    "(restream's card, or FILE: an image, or a video looped with its sound) and switch back when it returns. "
    "Encodes once. Put it after the input, or use --slate=FILE.")]
SlateTimeoutOpt = Annotated[str, typer.Option(
    "--slate-timeout", metavar="10m|0", help="With --slate: end cleanly after this long without a source "
    "(0: never).")]


class _OptionalValue(typer.core.TyperCommand):
    """A command whose --slate may be given with or without its FILE (Typer does not pass Click's flag_value)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        import click

        for p in self.params:
            if isinstance(p, click.Option) and p.name == "slate":
                p._flag_needs_value = True
                p.flag_value = SLATE_CARD


def slate_options(ffmpeg_path: str, slate: str | None, timeout: str, inp) -> object | None:
    """--slate [FILE] and --slate-timeout, checked before anything starts (the file is opened as it will be)."""
    from restream import discover, plan, sources
    from restream import run as runner

    if slate is None:
        if timeout != "10m":
            raise UsageError("--slate-timeout goes with --slate")
        return None
    if inp.kind in ("file", "test"):
        raise UsageError("--slate is for live inputs (a URL, a device, relay mode's publishers): a file or the test "
                         "card never goes away")
    if inp.kind == "stdin":
        raise UsageError("--slate cannot reopen standard input: give the source's URL instead")
    seconds = plan.parse_duration(timeout)
    file = None
    if slate != SLATE_CARD:
        if "://" in slate:
            raise UsageError(f"--slate took {slate!r} as its FILE: put --slate after the input, or use --slate=FILE")
        try:
            info = discover.probe_input(ffmpeg_path, slate)
        except InputError as exc:
            raise InputError(f"--slate: {str(exc).replace('input file', 'file')}") from None
        if not info.has_video:
            raise UsageError(f"--slate {slate}: it has no picture")
        problem = discover.first_picture_error(ffmpeg_path, slate)
        if problem:
            raise UsageError(f"--slate {slate}: ffmpeg cannot decode it ({problem})")
        file = sources.SlateFile(slate, image=info.video_codec in sources.IMAGE_CODECS, has_audio=info.has_audio)
    return runner.Slate(file, seconds or None)


def conflicts(inp, *, copy: bool = False, size=None, fps=None, image=None) -> None:
    """Options that cannot work together, refused before anything starts (one line each, exit 2)."""
    if copy:
        if size or fps:
            raise UsageError("--size and --fps need an encode: they cannot be used with --copy")
        if inp.kind == "test":
            raise UsageError("--copy cannot be used with --test-pattern: the test card is made here, so it is "
                             "encoded (leave out --copy)")
        if inp.kind == "device":
            raise UsageError("--copy cannot be used with a capture device: its raw picture and sound must be "
                             "encoded (leave out --copy)")
        if image is not None:
            raise UsageError("--image cannot be used with --copy: the picture has to be encoded")
    if image is not None and inp.kind != "file":
        raise UsageError("--image goes with an audio-only input file (a podcast, a radio show)")


def _profile_name(name: str) -> str:
    return prof.validate_profile_name(name)


def _load_existing(name: str) -> prof.Profile:
    """Reading commands: the default profile may be empty; any other must exist."""
    return listing.load_existing(name)


def _edit(profile: str, change):
    """Read-modify-write a profile; while it is broadcasting, refuse a change that would exceed five live."""
    from restream import runtime
    from restream.selection import select

    name = _profile_name(profile)

    def guarded(p: prof.Profile) -> prof.Profile:
        new = change(p)
        running = runtime.read(name)
        if running is not None:
            try:
                select(new, running.get("only"), running.get("skip"))
            except UsageError as exc:
                if f"at most {prof.MAX_LIVE}" in str(exc):
                    raise UsageError(f"profile {name!r} is live (PID {running.get('pid')}) and this change would "
                                     f"select more than {prof.MAX_LIVE} destinations: disable one first") from None
        return new

    return prof.update(name, guarded)


# -- keys ---------------------------------------------------------------------------------------------------------

def _key_from_options(key: str | None, key_env: str | None, key_stdin: bool, required: bool,
                      no_key: bool = False, key_file: str | None = None,
                      key_cmd: str | None = None) -> tuple[dict, bool]:
    """Return ({stream_key, stream_key_env, stream_key_file, stream_key_cmd}, given) from the mutually exclusive
    key options."""
    fields: dict = dict.fromkeys(("stream_key", "stream_key_env", "stream_key_file", "stream_key_cmd"))
    chosen = [k for k, v in (("--key", key is not None), ("--key-env", key_env is not None),
                             ("--key-stdin", key_stdin), ("--key-file", key_file is not None),
                             ("--key-cmd", key_cmd is not None), ("--no-key", no_key)) if v]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be used together: give the key one way")
    if key is not None:
        return {**fields, "stream_key": prof.validate_key(key)}, True
    if key_env is not None:
        return {**fields, "stream_key_env": prof.validate_env_name(key_env)}, True
    if key_file is not None:
        path = prof.validate_key_file(key_file)
        if not path.startswith(("~", "$", "/")):
            path = os.path.abspath(path)  # read later, from wherever restream go runs
        return {**fields, "stream_key_file": path}, True
    if key_cmd is not None:
        import shlex

        try:
            argv = shlex.split(key_cmd)
        except ValueError as exc:  # not echoed: the command line may hold a secret
            raise UsageError(f"--key-cmd: cannot split the command ({exc}); quote it as a shell would") from None
        if not argv:
            raise UsageError("--key-cmd: the command is empty")
        return {**fields, "stream_key_cmd": prof.validate_key_cmd(argv)}, True
    if key_stdin:
        data = sys.stdin.readline()
        if data.endswith("\n"):
            data = data[:-1]
            if data.endswith("\r"):
                data = data[:-1]
        if not data:
            raise UsageError("--key-stdin: no key on standard input")
        return {**fields, "stream_key": prof.validate_key(data)}, True
    if no_key:
        return fields, True
    if not required:
        return fields, False
    if sys.stdin.isatty():
        import getpass

        try:
            entered = getpass.getpass("Stream key (input hidden): ")
        except EOFError:
            typer.echo("", err=True)
            raise UsageError("no stream key entered (end of input at the prompt)") from None
        except KeyboardInterrupt:
            typer.echo("", err=True)
            raise typer.Exit(EXIT_SIGINT) from None
        return {**fields, "stream_key": prof.validate_key(entered)}, True
    raise UsageError("no stream key given and no terminal to ask on: use --key, --key-env VAR, --key-stdin, "
                     "--key-file FILE or --key-cmd CMD")


KeyOpt = Annotated[Optional[str], typer.Option("--key", metavar="KEY",
                                               help="Stream key (visible in shell history: prefer --key-stdin).")]
KeyEnvOpt = Annotated[Optional[str], typer.Option("--key-env", metavar="VAR",
                                                  help="Read the key from this environment variable when going live.")]
KeyStdinOpt = Annotated[bool, typer.Option("--key-stdin", help="Read the key from the first line of standard input.")]
KeyFileOpt = Annotated[Optional[str], typer.Option(
    "--key-file", metavar="FILE", help="Read the key from this file when going live (a secret mount; $VARS such as "
    "$CREDENTIALS_DIRECTORY are expanded then: quote them).")]
KeyCmdOpt = Annotated[Optional[str], typer.Option(
    "--key-cmd", metavar="CMD", help="Run this command when going live (split like a shell would, run without one; "
    "10 s at most); the first line it prints is the key, e.g. 'pass show youtube'.")]
BackupUrlOpt = Annotated[Optional[str], typer.Option(
    "--backup-url", metavar="URL", help="A backup ingest (rtmp:// or rtmps://) for the same key.")]
BackupModeOpt = Annotated[Optional[str], typer.Option(
    "--backup-mode", metavar="failover|both", help="failover (default): switch to the backup when the primary fails "
    "(3 attempts or 5 s) and stay there until it fails; both: feed primary and backup at once (one slot, the "
    "stream sent twice), live while either is.")]

# A destination's own encoding (issue 14): 'default' removes a setting (the broadcast's applies again).
DestVideoBitrateOpt = Annotated[Optional[str], typer.Option(
    "--video-bitrate", metavar="RATE",
    help="This destination's video bitrate, e.g. 6000k ('default': the broadcast's).")]
DestAudioBitrateOpt = Annotated[Optional[str], typer.Option(
    "--audio-bitrate", metavar="RATE", help="This destination's AAC bitrate, e.g. 128k ('default': the broadcast's).")]
DestSizeOpt = Annotated[Optional[str], typer.Option(
    "--size", metavar="WxH", help="This destination's picture size, e.g. 720x1280 ('default': the broadcast's).")]
DestFpsOpt = Annotated[Optional[str], typer.Option(
    "--fps", metavar="FPS", help="This destination's frame rate ('default': the broadcast's).")]
DestCropOpt = Annotated[Optional[str], typer.Option(
    "--crop", metavar="9:16|1:1", help="Centre-crop to a vertical (9:16, 720x1280 unless --size) or square picture "
    "('none' to remove).")]
DestCopyOpt = Annotated[Optional[bool], typer.Option(
    "--copy/--encode", help="Pass the source through for this destination (relay mode, go --copy), or always "
    "encode it.", show_default=False)]


def _encoding_options(video_bitrate, audio_bitrate, size, fps, crop, copy) -> dict:
    """The add/edit encoding options given, parsed: {field: value}; None for 'default'/'none' (remove it)."""
    from restream import plan

    out: dict = {}
    clear = ("default", "none")
    if video_bitrate is not None:
        out["video_bitrate"] = None if video_bitrate in clear else plan.parse_bitrate(video_bitrate, "video bitrate")
    if audio_bitrate is not None:
        out["audio_bitrate"] = None if audio_bitrate in clear else plan.parse_bitrate(audio_bitrate, "audio bitrate")
    if size is not None:
        out["size"] = None if size in clear else "x".join(map(str, plan.parse_size(size)))
    if fps is not None:
        out["fps"] = None if fps in clear else plan.parse_fps(fps)
    if crop is not None:
        if crop not in clear and crop not in prof.CROPS:
            raise UsageError(f"invalid --crop {crop!r}: use {' or '.join(prof.CROPS)} (or 'none')")
        out["crop"] = None if crop in clear else crop
    if copy is not None:
        out["copy"] = copy
    return out


# -- destination commands ----------------------------------------------------------------------------------------

@command("add", epilog="Examples:\n\n  restream add youtube --key-stdin < yt.key\n\n"
         "  restream add twitch --key-env TWITCH_KEY\n\n"
         "  restream add youtube --key-stdin --backup --backup-mode both < yt.key   (feed both ingests)\n\n"
         "  restream add studio --url rtmp://203.0.113.7/live --key abc123")
def add_cmd(
    name: Annotated[str, typer.Argument(help="Destination name (a platform name fills in its ingest URL).")],
    url: Annotated[Optional[str], typer.Option("--url", help="Server URL without the key: rtmp://, rtmps://, srt://")] = None,
    key: KeyOpt = None,
    key_env: KeyEnvOpt = None,
    key_stdin: KeyStdinOpt = False,
    key_file: KeyFileOpt = None,
    key_cmd: KeyCmdOpt = None,
    no_key: Annotated[bool, typer.Option("--no-key", help="The URL needs no separate key.")] = False,
    platform: Annotated[Optional[str], typer.Option("--platform", help="Platform preset (see: restream platforms).")] = None,
    ca_file: Annotated[Optional[Path], typer.Option("--ca-file", help="CA bundle to verify this RTMPS server with.")] = None,
    backup: Annotated[bool, typer.Option("--backup", help="Add the platform's backup ingest (YouTube's "
                                         "b.rtmp.youtube.com) for failover.")] = False,
    backup_url: BackupUrlOpt = None,
    backup_mode: BackupModeOpt = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Add it switched off.")] = False,
    video_bitrate: DestVideoBitrateOpt = None,
    audio_bitrate: DestAudioBitrateOpt = None,
    size: DestSizeOpt = None,
    fps: DestFpsOpt = None,
    crop: DestCropOpt = None,
    copy: DestCopyOpt = None,
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Add a destination to the profile (optionally with its own encoding: bitrate, size, fps, crop, copy)."""
    encoding = _encoding_options(video_bitrate, audio_bitrate, size, fps, crop, copy)
    prof.validate_name(name)
    preset = platforms.get(platform) if platform else platforms.get(name)
    if platform and preset is None:
        raise UsageError(f"unknown platform {platform!r} (see: restream platforms)")
    if url is None:
        if preset is None:
            raise UsageError(f"{name!r} is not a known platform: give the server URL with --url")
        if preset.default_url is None:
            raise UsageError(f"{preset.title} hands out the ingest URL per account or event: give it with --url")
        url = preset.default_url
    prof.validate_url(url)
    if backup and backup_url is not None:
        raise UsageError("--backup and --backup-url cannot be used together: --backup takes the platform's")
    if backup:
        if preset is None or preset.backup_url is None:
            raise UsageError(f"{preset.title if preset else repr(name)} has no backup ingest preset: give one with "
                             "--backup-url URL")
        backup_url = preset.backup_url
    keys, _ = _key_from_options(key, key_env, key_stdin, required=True, no_key=no_key, key_file=key_file,
                                key_cmd=key_cmd)
    kenv = keys["stream_key_env"]
    dest = prof.make_destination(name, url, enabled=not disabled, platform=preset.name if preset else None,
                                 ca_file=str(ca_file) if ca_file else None, backup_url=backup_url,
                                 backup=backup_mode, **keys, **encoding)
    _edit(profile, lambda p: p.added(dest))
    typer.echo(f"added {dest.name} -> {mask_url(dest.server_url)}" + ("" if dest.enabled else " (disabled)"))
    if dest.scheme in ("rtmp", "rtmps") and url_secrets(dest.server_url):
        warn("credentials in an RTMP URL (user:password@) cannot be used to go live: put the key in the stream key")
    if kenv and not os.environ.get(kenv):
        warn(f"${kenv} is not set in this shell: set it (export {kenv}=…) wherever you run restream go, "
             "or store the key instead (restream edit " + dest.name + " --key-stdin)")
    if dest.stream_key_file:
        from restream import keysource

        try:
            if not Path(keysource.expand_path(dest.stream_key_file)).is_file():
                warn("the key file does not exist (yet): restream reads it when going live")
        except KeyError as exc:
            warn(f"the key file is under ${exc.args[0]}, which is not set in this shell: it must be set wherever "
                 "restream go runs")
    _warn_srt_key(dest)


def _warn_srt_key(d: prof.Destination) -> None:
    """ffmpeg takes an SRT stream id or passphrase only in its arguments: say so where one is set."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(d.server_url)
    if parts.scheme.lower() != "srt":
        return
    query = parse_qs(parts.query)
    if d.key_source() != "none" or "streamid" in query or "passphrase" in query:
        warn(f"{d.name}: ffmpeg accepts an SRT key (streamid) or passphrase only on its command line, so while "
             "live any local user can read it with `ps` (unless /proc is mounted with hidepid=2); RTMP(S) keys "
             "never appear there")


def _emit(pieces: listing.Pieces) -> None:
    """Print what ``listing`` made: lines with ``typer.echo``, the table as it is, warnings on stderr."""
    for kind, text in pieces:
        if kind == "write":
            sys.stdout.write(text)
        elif kind == "warn":
            warn(text)
        else:
            typer.echo(text)


@command("list", epilog="Examples:\n\n  restream list\n\n  restream list --json -p events")
def list_cmd(profile: ProfileOpt = paths.DEFAULT_PROFILE, as_json: JsonOpt = False, show_keys: ShowKeys = False) -> None:
    """List the profile's destinations (keys masked)."""
    _emit(listing.list_pieces(profile, as_json, show_keys))  # also served without Typer: fastpath.py


@command("show", epilog="Example:\n\n  restream show youtube --show-keys")
def show_cmd(name: DestArg, profile: ProfileOpt = paths.DEFAULT_PROFILE, as_json: JsonOpt = False,
             show_keys: ShowKeys = False) -> None:
    """Show one destination (key masked)."""
    _emit(listing.show_pieces(name, profile, as_json, show_keys))  # also served without Typer: fastpath.py


@command("edit", epilog="Examples:\n\n  restream edit youtube --key-stdin < new.key\n\n"
         "  restream edit youtube --backup-mode both      (primary and backup at once)\n\n"
         "  restream edit studio --url rtmps://studio.example/live --rename studio-tls")
def edit_cmd(
    name: DestArg,
    url: Annotated[Optional[str], typer.Option("--url", help="New server URL.")] = None,
    key: KeyOpt = None,
    key_env: KeyEnvOpt = None,
    key_stdin: KeyStdinOpt = False,
    key_file: KeyFileOpt = None,
    key_cmd: KeyCmdOpt = None,
    rename: Annotated[Optional[str], typer.Option("--rename", metavar="NEW", help="New name.")] = None,
    ca_file: Annotated[Optional[Path], typer.Option("--ca-file", help="CA bundle for this RTMPS server.")] = None,
    video_bitrate: DestVideoBitrateOpt = None,
    audio_bitrate: DestAudioBitrateOpt = None,
    size: DestSizeOpt = None,
    fps: DestFpsOpt = None,
    crop: DestCropOpt = None,
    copy: DestCopyOpt = None,
    backup: Annotated[bool, typer.Option("--backup", help="Add the platform's backup ingest.")] = False,
    backup_url: BackupUrlOpt = None,
    backup_mode: BackupModeOpt = None,
    no_backup: Annotated[bool, typer.Option("--no-backup", help="Forget the backup ingest.")] = False,
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Change a destination's URL, key, name, backup ingest or its own encoding."""
    from dataclasses import fields

    encoding = _encoding_options(video_bitrate, audio_bitrate, size, fps, crop, copy)
    keys, key_given = _key_from_options(key, key_env, key_stdin, required=False, key_file=key_file,
                                        key_cmd=key_cmd)
    if url is not None:
        prof.validate_url(url)
    if rename is not None:
        prof.validate_name(rename)
    if sum((backup, backup_url is not None, no_backup)) > 1:
        raise UsageError("--backup, --backup-url and --no-backup cannot be used together")
    if no_backup and backup_mode is not None:
        raise UsageError("--no-backup and --backup-mode cannot be used together")
    backup_given = backup or backup_url is not None or no_backup or backup_mode is not None
    if url is None and not key_given and rename is None and ca_file is None and not encoding and not backup_given:
        raise UsageError("nothing to change: give --url, --key/--key-env/--key-stdin/--key-file/--key-cmd, "
                         "--rename, --ca-file, --backup/--backup-url/--no-backup or an encoding option "
                         "(--video-bitrate, --audio-bitrate, --size, --fps, --crop, --copy/--encode)")

    changed: list[prof.Destination] = []

    def change(p: prof.Profile) -> prof.Profile:
        old = p.get(name)
        values = {f.name: getattr(old, f.name) for f in fields(old)}
        values.update(name=rename or old.name, server_url=url or old.server_url)
        if key_given:
            values.update(keys)
        if ca_file:
            values["ca_file"] = str(ca_file)
        values.update(encoding)
        if backup:
            preset = platforms.get(old.platform) or platforms.get(old.name)
            if preset is None or preset.backup_url is None:
                raise UsageError(f"{old.name!r} has no platform backup ingest preset: give one with --backup-url URL")
            values["backup_url"] = preset.backup_url
        if backup_url is not None:
            values["backup_url"] = backup_url
        if no_backup:
            values.update(backup_url=None, backup=None)
        if backup_mode is not None:
            values["backup"] = backup_mode
        new = prof.make_destination(**values)
        changed[:] = [new]
        return p.replaced(old.name, new)

    _edit(profile, change)
    typer.echo(f"updated {rename or name}")
    if changed and (url is not None or key_given):
        _warn_srt_key(changed[0])


@command("remove", epilog="Example:\n\n  restream remove twitch")
def remove_cmd(name: DestArg, profile: ProfileOpt = paths.DEFAULT_PROFILE) -> None:
    """Remove a destination."""
    _edit(profile, lambda p: p.removed(name))
    typer.echo(f"removed {name}")


def _set_enabled(name: str, profile: str, enabled: bool) -> None:
    def change(p: prof.Profile) -> prof.Profile:
        old = p.get(name)
        return p.replaced(old.name, prof.Destination(**{**old.__dict__, "enabled": enabled}))

    _edit(profile, change)
    typer.echo(f"{'enabled' if enabled else 'disabled'} {name}")


@command("enable", epilog="Example:\n\n  restream enable twitch")
def enable_cmd(name: DestArg, profile: ProfileOpt = paths.DEFAULT_PROFILE) -> None:
    """Switch a destination on (it goes live with the next broadcast)."""
    _set_enabled(name, profile, True)


@command("disable", epilog="Example:\n\n  restream disable twitch")
def disable_cmd(name: DestArg, profile: ProfileOpt = paths.DEFAULT_PROFILE) -> None:
    """Switch a destination off without forgetting it."""
    _set_enabled(name, profile, False)


@command("platforms", epilog="Example:\n\n  restream platforms")
def platforms_cmd(as_json: JsonOpt = False, profile: ProfileOpt = paths.DEFAULT_PROFILE) -> None:
    """List the platform presets and their limits."""
    rows = [{"name": p.name, "title": p.title, "url": p.default_url or "(per account: --url)",
             "max_video_kbps": p.max_video_kbps, "keyframe_s": p.keyframe_s, "audio_rate": p.audio_rate,
             "note": p.note} for p in platforms.PLATFORMS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from restream.tables import table

    table([("NAME", "name"), ("PLATFORM", "title"), ("INGEST URL", "url"), ("MAX KBPS", "max_video_kbps"),
           ("GOP S", "keyframe_s"), ("NOTE", "note")],
          [{**r, "max_video_kbps": r["max_video_kbps"] or "?"} for r in rows], title="platform presets")


@command("profiles", epilog="Example:\n\n  restream profiles")
def profiles_cmd(as_json: JsonOpt = False, profile: ProfileOpt = paths.DEFAULT_PROFILE) -> None:
    """List the profiles in the config directory."""
    names = prof.list_profiles()
    if as_json:
        typer.echo(json.dumps({"config_dir": str(paths.config_dir()), "profiles": names}))
        return
    if not names:
        typer.echo(f"no profiles yet in {paths.profiles_dir()}")
    for n in names:
        typer.echo(n)


@command("export", epilog="Examples:\n\n  restream export > backup.toml      (keys left out)\n\n"
         "  restream export --format apivideo --show-keys > restreams.json")
def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="toml or apivideo (api.video restreams JSON).")] = "toml",
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
    show_keys: ShowKeys = False,
) -> None:
    """Print the profile's destinations, for backup or api.video."""
    from restream import interchange

    p = _load_existing(profile)
    text, left_out = interchange.export(p, fmt, include_keys=show_keys)
    typer.echo(text, nl=not text.endswith("\n"))
    dropped = [d.name for d in p.destinations if d.encoding()]
    if fmt == "apivideo" and dropped:
        warn(f"the apivideo format has no per-destination encoding: left out for {', '.join(dropped)}")
    if left_out:
        warn(f"{left_out} stream key(s) left out of the export; add --show-keys to include them")


@command("import", epilog="Examples:\n\n  restream import backup.toml\n\n"
         "  restream import restreams.json --replace")
def import_cmd(
    file: Annotated[str, typer.Argument(help="A TOML profile or api.video restreams JSON; '-' for stdin.")],
    replace_all: Annotated[bool, typer.Option("--replace", help="Replace all destinations instead of adding.")] = False,
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Add destinations from a file (TOML profile or api.video JSON)."""
    from restream import interchange

    if file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None
    incoming = interchange.parse_import(text, file)
    result = _edit(profile, lambda p: interchange.merge(p, incoming, replace_all))
    typer.echo(f"imported {len(incoming)} destination(s); profile {result.name!r} now has "
               f"{len(result.destinations)}")


# -- broadcasting -------------------------------------------------------------------------------------------------

def _encoding_of(d, enc, caps: bool = True):
    """A destination's encoding for this broadcast: the broadcast's ``enc``, its own settings on top, and (with
    ``caps``) its platform's limits applied. Returns (encoding, a note when a cap lowered it)."""
    from restream import plan

    own = plan.Override(video_bitrate_k=d.video_bitrate, audio_bitrate_k=d.audio_bitrate,
                        size=plan.parse_size(d.size) if d.size else None, fps=d.fps, crop=d.crop, copy=d.copy)
    preset = platforms.get(d.platform) if caps else None
    return plan.effective(enc, own, preset.max_video_kbps if preset else None,
                          preset.max_audio_kbps if preset else None)


def _targets(dests, enc=None, caps: bool = True, resolve=None) -> list:
    """Ready-to-go targets; with the broadcast's ``enc``, each carries its own encoding (settings, caps). Each key is
    read from wherever it is kept (a file or a command: now, through ``resolve``, a keysource.Resolver that
    remembers keys already read)."""
    from urllib.parse import urlsplit

    from restream import keysource
    from restream.run import Target

    resolve = resolve or keysource.Resolver()

    targets = []
    for d in dests:
        if d.scheme in ("rtmp", "rtmps") and url_secrets(d.server_url):
            raise UsageError(f"destination {d.name!r}: credentials in an RTMP URL ({mask_url(d.server_url)}) are not "
                             f"supported; give the key as the stream key: restream edit {d.name} --url URL --key-stdin")
        key = resolve(d)
        parts = urlsplit(d.server_url)
        if key is None and d.scheme in ("rtmp", "rtmps") and len([p for p in parts.path.split("/") if p]) < 2:
            raise UsageError(f"destination {d.name!r} has no stream key (its URL has no stream name either): "
                             f"restream edit {d.name} --key-stdin")
        targets.append(Target(d.name, d.server_url, key, d.ca_file,
                              _encoding_of(d, enc, caps)[0] if enc is not None else None,
                              backup_url=d.backup_url, backup_mode=d.backup_mode))
    return targets


def _output_mode(plain: bool, as_json: bool) -> str:
    if plain and as_json:
        raise UsageError("--plain and --json cannot be used together")
    if as_json:
        return "json"
    if plain or not sys.stdout.isatty():
        return "plain"
    return "live"


def _bitrate_warnings(dests, enc, caps: bool = True) -> None:
    """With caps (the default) a destination over its platform's limit gets its own capped encode: said in a
    notice. Without (--no-caps), or where its own setting is over the limit, a warning as before."""
    for d in dests:
        mine, note = _encoding_of(d, enc, caps)
        if mine.copy:
            continue
        preset = platforms.get(d.platform)
        if note:
            notice(f"{d.name}: {note} ({preset.title if preset else d.platform}'s limit): it gets its own encode "
                   "(--no-caps to send it the broadcast's)")
        elif preset and preset.max_video_kbps and mine.video_bitrate_k > preset.max_video_kbps:
            warn(f"{d.name}: {preset.title} accepts at most {preset.max_video_kbps} kbit/s of video; "
                 + (f"its video_bitrate is {mine.video_bitrate_k}k" if d.video_bitrate else
                    f"--video-bitrate is {mine.video_bitrate_k}k"))


def _describe_input(inp) -> str:
    if inp.kind == "test":
        return "test pattern"
    if inp.kind == "listen":
        return "relay ingest"
    return f"{mask_url(inp.target)}{' (looped)' if inp.loop else ''}"


def _complete_tracks(ffmpeg: str, inp, enc) -> None:
    """An audio-only file gets a still picture, a video-only one silent AAC: refused or announced, in one line."""
    from restream import discover, plan

    if inp.image and inp.has_video:
        raise UsageError(f"--image is for audio-only inputs, and {inp.target} has video")
    if inp.still:
        if enc.copy:
            raise UsageError(f"{inp.target} has no video, so a picture must be encoded for it: leave out --copy")
        if inp.image and not discover.probe_input(ffmpeg, inp.image).has_video:
            raise UsageError(f"--image {inp.image}: not a picture ffmpeg can read")
        w, h = enc.size or plan.STILL_SIZE
        picture = f"{inp.image} (fitted)" if inp.image else "a black picture"
        notice(f"{inp.target} has no video: sending it with {picture} at {w}x{h}, "
               f"{plan.number(enc.fps or plan.STILL_FPS)} fps" + ("" if inp.image else " (--image FILE for a cover)"))
    elif inp.silence:
        notice(f"{inp.target} has no audio: adding silent AAC (48 kHz stereo), as platforms expect an audio track")


def _close_views(sinks, snap) -> None:
    """Leave the summary on screen whole: a second or third Ctrl-C arriving after ffmpeg stopped would otherwise
    interrupt the live view half-way through erasing itself (its title was left on screen twice)."""
    import signal

    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    try:
        for sink in sinks:
            sink.close(snap)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@dataclass(frozen=True)
class BroadcastRequest:
    """One broadcast as a command asked for it (go, relay, demo): built once, handed to ``_broadcast``. A new
    option is one field here."""

    profile_name: str
    dests: list
    inp: object  # plan.Input
    enc: object  # plan.Encoding
    command_name: str  # go | relay | demo (the lock says who holds the profile)
    ffmpeg_opt: str | None = None
    record: str | None = None
    duration: float | None = None
    mode: str = "plain"  # live | plain | json
    quiet: bool = False
    status_interval: float = 10.0
    log_file: str | None = None
    dry_run: bool = False
    show_keys: bool = False
    live_changes: bool = True  # follow profile edits while live
    only: str | None = None
    skip: str | None = None
    lock: bool = True
    ingest: dict | None = None  # relay mode: host, port, app, key, banner
    once: bool = False
    stall_timeout: float = 30.0
    caps: bool = True
    slate: tuple[str | None, str] = (None, "10m")  # (--slate value, --slate-timeout)


def _broadcast(req: BroadcastRequest) -> int:
    """The shared path of `go`, `relay` and the demo: the profile's broadcast lock first (a busy profile is refused
    before anything else is looked at: exit 6 at once), then check everything, run one broadcast and show it."""
    if req.dry_run or not req.lock:
        return _checked_broadcast(req, None)
    from restream import runtime

    with runtime.broadcast_lock(req.profile_name, req.command_name, req.only, req.skip) as session:
        return _checked_broadcast(req, session)


def _checked_broadcast(req: BroadcastRequest, session) -> int:
    import asyncio
    from dataclasses import asdict, replace

    from restream import discover, events, keysource, plan, status
    from restream import run as runner
    from restream import view
    from restream.redact import Redactor

    inp = req.inp  # (completed below: a file's tracks, the switcher's pipes)
    resolver = keysource.Resolver()
    targets = _targets(req.dests, req.enc, req.caps, resolver)
    groups = runner.encode_groups(targets, req.enc)
    copies = [t.name for t in targets if t.enc is not None and t.enc.copy]
    if copies and not req.enc.copy and inp.kind in ("test", "device"):
        made = "test card" if inp.kind == "test" else "capture device"
        raise UsageError(f"{', '.join(copies)}: set to copy, but the {made} must be encoded "
                         "(restream edit NAME --encode)")
    schemes = {urlsplit_scheme(t.server_url) for t in targets}
    if req.ingest and not req.dry_run and runner.relay_native(True, req.enc, targets, req.record,
                                                              req.slate[0] is not None):
        ff = discover.identify(req.ffmpeg_opt)  # the native fan-out: no ffmpeg on the path (only named)
    else:
        ff = discover.require(req.ffmpeg_opt, protocols=("srt",) if "srt" in schemes else (),
                              encoders=() if all(g.enc.copy for g in groups) else ("libx264", "aac"))
    input_duration = None
    if inp.kind == "file":
        info = discover.probe_input(ff.path, inp.target)
        inp = replace(inp, has_audio=info.has_audio, has_video=info.has_video, fps=info.fps,
                      video_codec=info.video_codec, audio_codec=info.audio_codec, length=info.duration)
        input_duration = None if inp.loop else info.duration
        _complete_tracks(ff.path, inp, req.enc)
        if req.enc.copy and (info.video_codec not in (None, "h264") or info.audio_codec not in (None, "aac")):
            warn(f"--copy sends {info.video_codec}/{info.audio_codec} as is; platforms expect h264/aac")
    if inp.kind == "device" and not Path(inp.target[len("v4l2:"):]).exists():
        raise UsageError(f"capture device not found: {inp.target[len('v4l2:'):]}")
    slate_spec = slate_options(ff.path, req.slate[0], req.slate[1], inp)
    if req.record:  # the file type, and that it fits the stream (--copy), checked before anything starts
        plan.build(ff.path, inp, req.enc, (plan.record_slave(req.record),))
    font = plan.find_font() if inp.kind == "test" or req.slate[0] is not None else None
    # keys, and credentials in URLs (rtmp://user:password@host/…): the destinations' and the input's
    url_creds = [c for t in targets for c in url_secrets(t.server_url)] + url_secrets(inp.target)
    secrets = [t.key for t in targets if t.key] + ([req.ingest["key"]] if req.ingest else []) + url_creds
    if req.dry_run:
        if slate_spec is not None:  # the broadcast's ffmpeg reads the switcher's pipes (fds as an example)
            inp = replace(inp, kind="switch", raw=plan.Raw(req.enc.size or (1280, 720),
                                                           plan.number(req.enc.fps) if req.enc.fps else "30", 3, 4))
            typer.echo("# --slate: a source ffmpeg per source session decodes it to raw frames; the size and rate "
                       "are --size/--fps, else the first source's")
        slaves, slot_of, _ = runner.layout(targets, lambda i: f"rtmp://127.0.0.1:<slot-{i}-port>/slot/slot-{i}",
                                           req.record, groups)
        p = plan.build(ff.path, inp, req.enc, slaves, req.duration, font=font, groups=groups)
        mask = (lambda s: s) if req.show_keys else Redactor(secrets)
        typer.echo(f"# ffmpeg {ff.version}; {len(targets)} destination(s); "
                   f"keys {'shown' if req.show_keys else 'masked'}")
        typer.echo(f"# {len(groups)} encode group(s): one decode, one encode per group")
        for g in groups:
            typer.echo(f"# group {g.index + 1}: {g.enc.describe()}: {', '.join(g.members) or '(no destination)'}")
        for t in targets:
            where = f"slot-{slot_of[t.name]} via restream's relay" if t.name in slot_of else "direct (SRT)"
            key = t.key if req.show_keys else prof.mask_key(t.key)
            typer.echo(f"# {t.name}: {t.server_url if req.show_keys else mask_url(t.server_url)} key {key or '-'} "
                       f"({where})")
        typer.echo(mask(p.shell()))
        return EXIT_OK

    if len(groups) > 1:
        notice(f"{len(groups)} encode groups, one ffmpeg: " + "; ".join(
            f"{g.enc.describe()}: {', '.join(g.members) or '(free slots)'}" for g in groups))
    redact = Redactor(secrets)
    watch = None
    if req.live_changes:
        def reload():
            from restream.selection import select

            return _targets(select(prof.load(req.profile_name), req.only, req.skip, allow_empty=True), req.enc,
                            req.caps, resolver)

        watch = (paths.profile_path(req.profile_name), reload)

    snap = status.initial(profile=req.profile_name, input=redact(_describe_input(inp)),
                          ffmpeg=f"{ff.path} ({ff.version})", input_duration=input_duration)
    published = [0.0]

    def on_event(e) -> None:
        nonlocal snap
        snap = status.reduce(snap, e)
        for sink in sinks:
            sink.update(snap, e)
        if session and (isinstance(e, (events.DestState, events.Started, events.Ended))
                        or snap.now - published[0] >= 1.0):
            published[0] = snap.now
            session.publish(asdict(snap))

    banner = req.ingest.get("banner") if req.ingest else None
    b = runner.Broadcast(ff.path, inp, req.enc, targets, on_event, profile=req.profile_name,
                         ffmpeg_label=f"{ff.path} ({ff.version})", record=req.record, duration=req.duration,
                         font=font,
                         input_label=redact(_describe_input(inp)), watch=watch, once=req.once,
                         secrets=((req.ingest["key"],) if req.ingest else ()) + tuple(url_creds),
                         queue_size=2000 if req.ingest else 600, input_duration=input_duration,
                         stall_timeout=req.stall_timeout, slate=slate_spec,
                         on_ready=(lambda: typer.echo(banner, err=True)) if banner else None)
    if req.ingest:
        from restream.ingest import IngestGate

        gate = req.ingest
        b.gate = IngestGate(gate["host"], gate["port"], gate["app"], gate["key"], b.on_ingest,
                            take_over_after=TAKE_OVER_S if slate_spec is not None else None)
    sinks = []
    if req.log_file:
        try:
            sinks.append(view.LogFile(req.log_file, status_interval=req.status_interval))
        except OSError as exc:
            raise UsageError(f"--log-file {req.log_file}: {exc.strerror or exc}") from None
    sinks.insert(0, view.make_view(req.mode, quiet=req.quiet, status_interval=req.status_interval))
    try:
        code = asyncio.run(b.run())
    except RestreamError as exc:
        if req.mode == "json" and snap.started_at is None and hasattr(sinks[0], "error"):
            sinks[0].error(str(exc), exit_code_for(exc))  # a failure before the start: one error event
        raise
    finally:
        if snap.started_at is not None:
            _close_views(sinks, snap)
    return code


def _stall_timeout(seconds: float) -> float:
    if seconds != 0 and not 5 <= seconds <= 3600:
        raise UsageError("--stall-timeout must be 0 (never drop) or between 5 and 3600 seconds")
    return float(seconds)


def urlsplit_scheme(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).scheme.lower()


@command("go", cls=_OptionalValue, epilog="Examples:\n\n"
         "  restream go show.mp4 --loop                 (every enabled destination)\n\n"
         "  restream go --test-pattern --duration 60s   (try your destinations)\n\n"
         "  restream go rtmp://127.0.0.1/live/cam --copy --only youtube,twitch\n\n"
         "  restream go srt://0.0.0.0:9000?mode=listener --slate   (a slate while the source is gone)\n\n"
         "  ffmpeg -i in.mkv -f mpegts - | restream go -\n\n"
         "  restream go v4l2:/dev/video0 --audio pulse:default --record local.mkv\n\n"
         "  restream go show.mp4 --dry-run              (print the ffmpeg command, keys masked)")
def go_cmd(
    input: Annotated[Optional[str], typer.Argument(
        help="Media file, URL (rtmp/rtmps/srt/http(s)/HLS), v4l2:/dev/videoN, or '-' for stdin.")] = None,
    test_pattern: Annotated[bool, typer.Option("--test-pattern", help="Send a test card with a clock and a tone.")] = False,
    loop: Annotated[bool, typer.Option("--loop", help="Repeat a media file forever.")] = False,
    audio: Annotated[Optional[str], typer.Option("--audio", help="Capture audio for a device: alsa:DEV or pulse:DEV.")] = None,
    only: OnlyOpt = None,
    skip: SkipOpt = None,
    record: RecordOpt = None,
    overwrite: OverwriteOpt = False,
    duration: DurationOpt = None,
    video_bitrate: Annotated[str, typer.Option("--video-bitrate", help="Video bitrate (CBR-style: maxrate = bitrate, buffer = 2x).")] = "4500k",
    audio_bitrate: Annotated[str, typer.Option("--audio-bitrate", help="AAC bitrate.")] = "160k",
    size: Annotated[Optional[str], typer.Option("--size", metavar="WxH", help="Scale to this size.")] = None,
    fps: Annotated[Optional[str], typer.Option("--fps", help="Convert to this frame rate.")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Send the input's streams as they are (no encode).")] = False,
    no_caps: Annotated[bool, typer.Option("--no-caps", help="Send every destination the broadcast's bitrate, even "
                                          "over its platform's limit (only warn).")] = False,
    image: Annotated[Optional[Path], typer.Option(
        "--image", metavar="FILE", help="Audio-only input: show this picture (default: black).")] = None,
    ffmpeg: FfmpegOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the ffmpeg command (keys masked) and exit.")] = False,
    show_keys: ShowKeys = False,
    plain: PlainOpt = False,
    as_json: JsonEventsOpt = False,
    quiet: QuietOpt = False,
    status_interval: StatusIntervalOpt = 10.0,
    log_file: LogFileOpt = None,
    stall_timeout: StallTimeoutOpt = 30.0,
    slate: SlateOpt = None,
    slate_timeout: SlateTimeoutOpt = "10m",
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Go live: encode once, send to every enabled destination (at most five).

    An audio-only file goes out over a still picture (black, or --image); a video-only file gets silent audio.
    """
    from dataclasses import replace

    from restream import plan, recording
    from restream.selection import select

    if input is None and slate is not None and "://" in slate:
        raise UsageError(f"--slate took {slate!r} as its FILE: put --slate after the input, or use --slate=FILE")
    inp = plan.parse_input(input, test_pattern, loop, audio)
    enc = plan.Encoding(
        copy=copy, video_bitrate_k=plan.parse_bitrate(video_bitrate, "video bitrate"),
        audio_bitrate_k=plan.parse_bitrate(audio_bitrate, "audio bitrate"),
        size=plan.parse_size(size) if size else None, fps=plan.parse_fps(fps) if fps else None)
    conflicts(inp, copy=copy, size=size, fps=fps, image=image)
    if slate is not None and copy:
        raise UsageError("--slate encodes (the slate and every source become one stream): leave out --copy")
    if image is not None:
        inp = replace(inp, image=str(image))
    seconds = plan.parse_duration(duration) if duration else None
    if not 0.1 <= status_interval <= 3600:
        raise UsageError("--status-interval must be between 0.1 and 3600 seconds")
    mode = _output_mode(plain, as_json)
    p = _load_existing(profile)
    dests = select(p, only, skip)
    if record:
        record = recording.check(recording.expand(record, p.name), overwrite=overwrite,
                                 inputs=(inp.target if inp.kind == "file" else None, inp.image))
    _bitrate_warnings(dests, enc, caps=not no_caps)
    code = _broadcast(BroadcastRequest(
        p.name, dests, inp, enc, "go", ffmpeg_opt=ffmpeg, record=record, duration=seconds, dry_run=dry_run,
        show_keys=show_keys, mode=mode, quiet=quiet, status_interval=status_interval, log_file=log_file, only=only,
        skip=skip, stall_timeout=_stall_timeout(stall_timeout), caps=not no_caps, slate=(slate, slate_timeout)))
    raise typer.Exit(code)


@command("demo", epilog="Examples:\n\n  restream demo\n\n  restream demo --seconds 30\n\n"
         "  restream demo --sample show.mp4   (a sample video to try restream go with)")
def demo_cmd(
    seconds: Annotated[float, typer.Option("--seconds", help="How long to broadcast.")] = 15.0,
    size: Annotated[str, typer.Option("--size", metavar="WxH", help="Test pattern size.")] = "1280x720",
    plain: PlainOpt = False,
    ffmpeg: FfmpegOpt = None,
    sample: Annotated[Optional[Path], typer.Option(
        "--sample", metavar="FILE", help="Instead: write a 30 s sample video (test card, tone) to FILE, e.g. "
        "show.mp4, to try 'restream go FILE' with; an existing file is never replaced.")] = None,
) -> None:
    """Try restream locally: three stand-in platforms on this machine, a test pattern, a verdict.

    Starts three local RTMP receivers (ffmpeg, loopback only) posing as YouTube, Twitch and Kick, broadcasts
    the test pattern to all three at once with one encode, then checks what each one received.
    Your profiles are not read or changed, and nothing leaves this machine.
    """
    import tempfile

    from restream import demo, discover, plan

    if not 3 <= seconds <= 3600:
        raise UsageError("--seconds must be between 3 and 3600")
    discover.leave_no_trace()
    ff = discover.require(ffmpeg, encoders=("libx264", "aac"))
    if sample is not None:
        try:
            demo.make_sample(ff.path, sample)
        except FileExistsError:
            raise UsageError(f"--sample {sample}: file exists; choose another name") from None
        except OSError as exc:
            raise UsageError(f"--sample {sample}: {exc.strerror or exc}") from None
        except RuntimeError as exc:
            raise BroadcastError(f"--sample {sample}: {exc}") from None
        typer.echo(f"wrote {sample}: 30 s of test card and tone (H.264/AAC). Try: restream go {sample} --loop")
        return
    with tempfile.TemporaryDirectory(prefix="restream-demo-") as tmp:
        try:
            receivers = demo.start_receivers(ff.path, Path(tmp))
        except OSError as exc:
            raise BroadcastError(f"demo: {exc}") from None
        try:
            dests = [prof.make_destination(r.name, r.url, r.key) for r in receivers]
            typer.echo(f"restream demo: 3 local receivers stand in for {', '.join(demo.PLATFORMS)}; "
                       f"one encode of a test pattern goes to all three for {seconds:g} s.", err=True)
            code = _broadcast(BroadcastRequest(
                "demo", dests, plan.Input("test"),
                plan.Encoding(size=plan.parse_size(size), fps=30, video_bitrate_k=2500, audio_bitrate_k=128),
                "demo", ffmpeg_opt=ff.path, duration=seconds, mode=_output_mode(plain, False), status_interval=5.0,
                live_changes=False, lock=False))
        finally:
            demo.stop_receivers(receivers)
        verdicts = [demo.verify(ff.path, r, seconds) for r in receivers]
    typer.echo("")
    typer.echo("what the stand-in platforms received:")
    for v in verdicts:
        typer.echo(f"  {'PASS' if v.ok else 'FAIL'}  {v.name:<8} {v.duration_s:6.1f} s  {v.bytes / 1e6:6.2f} MB  "
                   f"{v.detail}")
    ok = all(v.ok for v in verdicts)
    typer.echo("verdict: " + ("all three received a decodable stream from one encode. Next: restream add youtube "
                              "--key-stdin, then restream go --test-pattern" if ok else
                              f"FAILED (broadcast exit {code})"))
    raise typer.Exit(EXIT_OK if ok else (code or EXIT_BROADCAST))


@command("relay", cls=_OptionalValue, epilog="Examples:\n\n"
         "  restream relay                       (OBS: server rtmp://127.0.0.1:1935/live, key shown once)\n\n"
         "  restream relay --only youtube,twitch --once\n\n"
         "  restream relay --slate                (destinations stay up between publishers, on a slate)\n\n"
         "  restream relay --listen rtmp://0.0.0.0:1935/live --public   (other machines may publish)")
def relay_cmd(
    listen: Annotated[str, typer.Option("--listen", metavar="URL",
                                        help="Where publishers connect: rtmp://HOST:PORT/APP[/KEY].")] = "rtmp://127.0.0.1:1935/live",
    public: Annotated[bool, typer.Option("--public", help="Allow listening on a non-loopback address.")] = False,
    once: Annotated[bool, typer.Option("--once", help="End when the first publisher disconnects.")] = False,
    transcode: Annotated[bool, typer.Option("--transcode", help="Encode once (as go does) instead of copying.")] = False,
    only: OnlyOpt = None,
    skip: SkipOpt = None,
    video_bitrate: Annotated[str, typer.Option("--video-bitrate", help="With --transcode: video bitrate.")] = "4500k",
    audio_bitrate: Annotated[str, typer.Option("--audio-bitrate", help="With --transcode: AAC bitrate.")] = "160k",
    record: Annotated[Optional[str], typer.Option(
        "--record", metavar="FILE", help="With --once: also record locally (.mkv .mp4 .mov .flv .ts; {date}, {time} "
        "and {profile} are filled in).")] = None,
    overwrite: OverwriteOpt = False,
    ffmpeg: FfmpegOpt = None,
    plain: PlainOpt = False,
    as_json: JsonEventsOpt = False,
    quiet: QuietOpt = False,
    status_interval: StatusIntervalOpt = 10.0,
    log_file: LogFileOpt = None,
    stall_timeout: StallTimeoutOpt = 30.0,
    slate: SlateOpt = None,
    slate_timeout: SlateTimeoutOpt = "10m",
    duration: Annotated[Optional[str], typer.Option(
        "--duration", metavar="90s|30m|2h|7d", help="With --slate: stop cleanly this long after the destinations "
        "went live (at most 366d).")] = None,
    size: Annotated[Optional[str], typer.Option("--size", metavar="WxH", help="With --slate or --transcode: "
                                                "the size sent (default: the first publisher's).")] = None,
    fps: Annotated[Optional[str], typer.Option("--fps", help="With --slate or --transcode: the frame rate sent "
                                               "(default: the first publisher's).")] = None,
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Relay: a local ingest for OBS or a hardware encoder, fanned out without re-encoding.

    Point OBS at the server URL and stream key printed at start (Settings > Stream > Custom; keyframe interval
    2 s). restream checks the key, copies the stream to every selected destination, and waits for the next
    publisher when OBS stops, until Ctrl-C (or --once).
    """
    import ipaddress
    from urllib.parse import urlsplit

    from restream import ingest, plan
    from restream.selection import select

    parts = urlsplit(listen)
    try:
        port = parts.port or 1935
    except ValueError:
        raise UsageError(f"invalid --listen URL {listen!r}") from None
    if parts.scheme != "rtmp" or not parts.hostname:
        raise UsageError("--listen must be rtmp://HOST:PORT/APP[/KEY] (RTMPS ingest is not supported)")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise UsageError(f"--listen needs an IP address or localhost, not {host!r}") from None
    if not loopback and not public:
        raise UsageError(f"listening on {host} lets other machines publish to your destinations: add --public "
                         "if that is what you want")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise UsageError("--listen must name an application, e.g. rtmp://127.0.0.1:1935/live")
    app = path[0]
    key_given = path[1] if len(path) == 2 else os.environ.get("RESTREAM_INGEST_KEY") or None
    if record and not once:
        raise UsageError("--record in relay mode needs --once: each new publisher would start the file again")
    if slate is not None and once:
        raise UsageError("--slate keeps the destinations published between publishers; --once ends at the first "
                         "one's end: use one or the other")
    if (size or fps) and slate is None and not transcode:
        raise UsageError("--size and --fps need an encode: add --slate or --transcode")
    if duration and slate is None:
        raise UsageError("--duration in relay mode needs --slate (one publish from start to end)")
    seconds = plan.parse_duration(duration) if duration else None
    mode = _output_mode(plain, as_json)
    stall_timeout = _stall_timeout(stall_timeout)
    p = _load_existing(profile)
    dests = select(p, only, skip)
    if record:
        from restream import recording

        record = recording.check(recording.expand(record, p.name), overwrite=overwrite)
    enc = plan.Encoding(copy=not (transcode or slate is not None),
                        video_bitrate_k=plan.parse_bitrate(video_bitrate, "video bitrate"),
                        audio_bitrate_k=plan.parse_bitrate(audio_bitrate, "audio bitrate"),
                        size=plan.parse_size(size) if size else None, fps=plan.parse_fps(fps) if fps else None)
    _bitrate_warnings(dests, enc)
    if key_given:
        key = prof.validate_key(key_given)
        shown = f"{prof.mask_key(key)} (the key you gave)"
    else:
        key, created = ingest.load_or_create_key(paths.config_dir() / "ingest" / f"{p.name}.key")
        shown = (f"{key}   (new; shown once, kept in {paths.config_dir() / 'ingest'})" if created
                 else f"{prof.mask_key(key)} (kept in {paths.config_dir() / 'ingest' / (p.name + '.key')}; "
                      "delete that file for a new one)")
    banner = f"restream relay: publish to  server {parts.scheme}://{parts.netloc}/{app}   stream key {shown}"
    inp = plan.Input("listen")
    code = _broadcast(BroadcastRequest(
        p.name, dests, inp, enc, "relay", ffmpeg_opt=ffmpeg, record=record, duration=seconds, mode=mode,
        quiet=quiet, status_interval=status_interval, log_file=log_file, only=only, skip=skip,
        ingest={"host": host, "port": port, "app": app, "key": key, "banner": banner},  # printed once the port
        once=once, stall_timeout=stall_timeout, slate=(slate, slate_timeout)))           # is bound, the lock held
    raise typer.Exit(code)


@command("status", epilog="Examples:\n\n  restream status\n\n  restream status --json -p events")
def status_cmd(profile: ProfileOpt = paths.DEFAULT_PROFILE, as_json: JsonOpt = False) -> None:
    """Show the broadcast running on a profile (from another terminal). Exit 1 if none runs."""
    from restream import runtime

    name = _profile_name(profile)
    info = runtime.read(name)
    if info is None:
        if as_json:
            typer.echo(json.dumps({"profile": name, "running": False}))
        else:
            typer.echo(f"no broadcast is running on profile {name!r}")
        raise typer.Exit(EXIT_SOME_FAILED)
    snap = info.get("snapshot") or {}
    now = snap.get("now") or 0

    def state_of(d: dict) -> str:
        if d.get("state") == "stalled" and d.get("stalled_since"):
            return f"stalled {int(max(0, now - d['stalled_since']))}s"
        if d.get("ingest") == "backup" and d.get("state") == "live":
            return "live (backup)"
        if d.get("ingests") and d.get("state") in ("live", "stalled", "stopped"):  # backup = "both"
            from restream.status import ingests_label

            return f"{d['state']} ({ingests_label((i['ingest'], i['state']) for i in d['ingests'])})"
        return str(d.get("state"))

    rows = [{"name": d.get("name"), "host": d.get("host"), "state": state_of(d),
             "uptime": "-" if d.get("state") == "waiting" else _clock(d.get("uptime_s") or 0),
             "reconnects": d.get("reconnects"),
             "kbps": f"{d['kbps']:.0f}" if d.get("kbps") else "-", "error": d.get("last_error") or ""}
            for d in snap.get("destinations", [])]
    src = snap.get("source")  # --slate
    source = None
    if src:
        on_slate = (src.get("slate_s") or 0) + (max(0, now - (src.get("since") or now))
                                                 if src.get("state") == "slate" else 0)
        source = {"state": src.get("state"), "detail": src.get("detail"), "since_s": round(max(0, now - (src.get("since") or now)), 1),
                  "slate_s": round(on_slate, 1), "handovers": src.get("handovers", 0)}
    if as_json:
        typer.echo(json.dumps({"profile": name, "running": True, "pid": info.get("pid"),
                               "command": info.get("command"), "started": info.get("started"),
                               "destinations": rows, **({"source": source} if source else {})}, ensure_ascii=False))
        return
    from restream.tables import table

    typer.echo(f"profile {name}: {info.get('command')} running since {info.get('started')} (PID {info.get('pid')})")
    typer.echo(f"input {snap.get('input', '?')}; stream time {_clock(snap.get('out_time_s') or 0)}")
    if source:
        typer.echo(f"source {source['state']} for {_clock(source['since_s'])} ({source['detail']}); on the slate "
                   f"{_clock(source['slate_s'])}, {source['handovers']} hand-over(s) back to a live source")
    table([("DESTINATION", "name"), ("HOST", "host"), ("STATE", "state"), ("UPTIME", "uptime"),
           ("RECONNECTS", "reconnects"), ("KBIT/S", "kbps"), ("LAST ERROR", "error")], rows)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


from restream import cli_ops  # noqa: E402  (doctor, check, schedule; cli_ops does not import cli)

cli_ops.register(app, exit_code_for)


NEEDS_EVERY_COMMAND = ("schedule",)  # it checks the go command it is given against go's own options


def _build_only_the_invoked_command(args: list[str]) -> None:
    """Start-up time: Typer builds a Click command for every registered one (~25 ms for twenty, most of it reading
    their signatures); when the first argument names a command, build just that one. Root help, errors and shell
    completion still see them all."""
    if not args or "_RESTREAM_COMPLETE" in os.environ or args[0] in NEEDS_EVERY_COMMAND:
        return
    commands = [c for c in app.registered_commands
                if (c.name or typer.main.get_command_name(c.callback.__name__)) == args[0]]  # type: ignore
    groups = [g for g in app.registered_groups if (g.name or g.typer_instance.info.name) == args[0]]  # type: ignore
    if commands or groups:
        app.registered_commands, app.registered_groups = commands, groups


def main() -> None:
    _build_only_the_invoked_command(sys.argv[1:])
    app(prog_name="restream")
