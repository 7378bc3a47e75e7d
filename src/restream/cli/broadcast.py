"""Broadcasting commands: go, demo, relay and status, and what they share (options, targets, the broadcast).

Registered on ``restream.cli.app`` when the package imports this module (after the destination commands)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

from restream import paths, platforms
from restream import profile as prof
from restream.cli import (
    JsonOpt,
    ProfileOpt,
    ShowKeys,
    _load_existing,
    _profile_name,
    command,
    complete_destinations,
    notice,
    warn,
)
from restream.errors import BroadcastError, InputError, RestreamError, UsageError
from restream.exits import EXIT_BROADCAST, EXIT_OK, EXIT_SOME_FAILED, exit_code_for
from restream.redact import mask_url, url_secrets

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
    if slate is None:
        if timeout != "10m":
            raise UsageError("--slate-timeout goes with --slate")
        return None
    from restream import discover, plan, sources  # (only with --slate: sources imports the frame switcher)
    from restream import run as runner

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
