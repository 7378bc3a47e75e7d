"""Destination commands: add, list, show, edit, remove, enable, disable, platforms, profiles, export, import.

Registered on ``restream.cli.app`` when the package imports this module (at its bottom, in the root help's order)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from restream import listing, paths, platforms
from restream import profile as prof
from restream.cli import DestArg, JsonOpt, ProfileOpt, ShowKeys, _edit, _load_existing, command, warn
from restream.errors import UsageError
from restream.exits import EXIT_SIGINT
from restream.redact import mask_url, url_secrets


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
        values = old._asdict()
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
        return p.replaced(old.name, old.replace(enabled=enabled))

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
