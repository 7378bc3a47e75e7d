"""Operations commands: `doctor`, `check` and `schedule add/list/remove`; thin, over doctor/check/schedule.

The cli package (``restream.cli``) registers them with ``register(app, exit_code_for)``: errors become one stderr
line and their exit code through cli's own mapping (this module maps nothing itself, does not import
``restream.cli``, and imports nothing heavy at start-up).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from restream import paths
from restream import profile as prof
from restream.errors import FFmpegError, RestreamError, UsageError

def _complete_profiles(incomplete: str) -> list[str]:
    try:
        return [n for n in prof.list_profiles() if n.startswith(incomplete)]
    except Exception:
        return []


def _complete_destinations(ctx: typer.Context, incomplete: str) -> list[str]:
    try:
        name = ctx.params.get("profile") or os.environ.get("RESTREAM_PROFILE") or paths.DEFAULT_PROFILE
        return [d.name for d in prof.load(name).destinations if d.name.startswith(incomplete)]
    except Exception:
        return []


ProfileOpt = Annotated[str, typer.Option("--profile", "-p", envvar="RESTREAM_PROFILE", metavar="NAME",
                                         help="Profile to use (env RESTREAM_PROFILE).",
                                         autocompletion=_complete_profiles)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

SCHEDULABLE = ("go",)
# go options that make no sense without a terminal or would leak keys into the log
_REFUSED_GO_OPTIONS = {
    "as_json": "--json: a scheduled broadcast writes plain lines to its log file",
    "dry_run": "--dry-run: nothing to schedule (run it now instead)",
    "show_keys": "--show-keys: stream keys would be written to the log file",
}


def _warn(message: str) -> None:
    typer.echo(f"restream: warning: {message}", err=True)


def _load(name: str) -> prof.Profile:
    prof.validate_profile_name(name)
    return prof.load(name, must_exist=name != paths.DEFAULT_PROFILE)


# -- doctor ---------------------------------------------------------------------------------------------------------

def doctor_cmd(
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
    ffmpeg: Annotated[Optional[str], typer.Option("--ffmpeg", metavar="PATH",
                                                  help="ffmpeg to examine (env RESTREAM_FFMPEG).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this machine: ffmpeg and its parts, config and profile files, permissions. Exit 4 if it cannot broadcast."""
    from restream import doctor

    report = doctor.build(profile, ffmpeg)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        f = report.facts
        typer.echo(f"restream {f['restream']} (python {f['python_version']}, {f['python']})")
        width = max(len(x.topic) for x in report.findings)
        for x in report.findings:
            typer.echo(f"{x.level.upper():<4}  {x.topic:<{width}}  {x.detail}")
        typer.echo("ready: a broadcast can run" if report.can_broadcast else "NOT READY: a broadcast cannot run")
    if not report.can_broadcast:
        first = next(x for x in report.findings if x.level == "fail")
        raise FFmpegError(f"a broadcast cannot run here: {first.topic}: {first.detail}")


# -- check ----------------------------------------------------------------------------------------------------------

def _cell(step) -> str:
    if step is None:
        return "n/a"
    if step.ok is None:
        return "-"
    return f"{step.ms:.0f}ms" if step.ok else "FAIL"


def check_cmd(
    names: Annotated[Optional[list[str]], typer.Argument(
        metavar="[NAME]...", help="Destinations to check (default: every enabled one).",
        autocompletion=_complete_destinations)] = None,
    timeout: Annotated[float, typer.Option("--timeout", metavar="SECONDS",
                                           help="Time limit for the whole check.")] = 10.0,
    as_json: JsonOpt = False,
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Check that destinations are reachable (DNS, TCP, TLS, RTMP handshake) without publishing. Exit 1 if not."""
    from restream import check

    if not 0.1 <= timeout <= 300:
        raise UsageError("--timeout must be between 0.1 and 300 seconds")
    p = _load(profile)
    dests = [p.get(n) for n in names] if names else list(p.enabled())
    if not dests:
        raise UsageError(f"nothing to check: profile {p.name!r} has no enabled destinations (see: restream list)")
    probes = []
    for d in dests:
        probes.append(check.Probe(d.name, d.server_url, d.ca_file, d.key_source() == "none"))
        if d.backup_url:  # both ingests
            probes.append(check.Probe(d.name, d.backup_url, d.ca_file, False, ingest="backup"))
    results = check.run(probes, timeout)
    if as_json:
        typer.echo(json.dumps({"profile": p.name, "timeout": timeout,
                               "reachable": all(r.reachable for r in results),
                               "destinations": [r.to_dict() for r in results]}, ensure_ascii=False, indent=2))
    else:
        from restream.tables import table

        rows = [{"name": r.name + (" (backup)" if r.ingest == "backup" else ""), "where": f"{r.scheme}://{r.host}:{r.port}" if r.port else f"{r.scheme}://{r.host}",
                 "dns": _cell(r.step("dns")), "tcp": _cell(r.step("tcp")), "tls": _cell(r.step("tls")),
                 "rtmp": _cell(r.step("rtmp")), "connect": _cell(r.step("connect")),
                 "result": ("reachable" if r.reachable else "UNREACHABLE") + (" (DNS only)" if r.scheme == "srt" else "")}
                for r in results]
        table([("NAME", "name"), ("SERVER", "where"), ("DNS", "dns"), ("TCP", "tcp"), ("TLS", "tls"),
               ("RTMP", "rtmp"), ("CONNECT", "connect"), ("RESULT", "result")], rows)
        for r in results:
            label = r.name + (" (backup)" if r.ingest == "backup" else "")
            for s in r.steps:
                if s.ok is False:
                    optional = "" if s.required else " (optional step)"
                    typer.echo(f"{label}: {s.name}: {s.detail}{optional}")
            if r.note:
                typer.echo(f"{label}: {r.note}")
    if not all(r.reachable for r in results):
        raise typer.Exit(1)


# -- schedule -------------------------------------------------------------------------------------------------------

def _restream_argv() -> list[str]:
    """restream by absolute path, so that cron's PATH=/usr/bin:/bin finds it."""
    exe = sys.executable
    if not exe or not os.path.isabs(exe):
        raise UsageError("cannot tell which Python runs restream (sys.executable is empty)")
    return [exe, "-m", "restream"]


def _is_local_path(text: str) -> bool:
    return text != "-" and not text.startswith("v4l2:") and "://" not in text


def _go_argv(ctx: typer.Context, tokens: list[str], profile: str, profile_explicit: bool,
             name: str | None) -> tuple[list[str], str, str, dict]:
    """Validate the go options with go's own parser; return (canonical go argv, profile, name, params)."""
    import click
    from click.core import ParameterSource

    from restream import plan

    if not tokens or tokens[0] not in SCHEDULABLE:
        raise UsageError("give the command to schedule after '--': restream schedule add \"0 19 * * 1\" -- "
                         "go show.mp4 [go options]")
    root = ctx.find_root().command
    go = root.get_command(ctx, tokens[0]) if isinstance(root, click.Group) else None
    if go is None:
        raise UsageError(f"this restream has no {tokens[0]!r} command")
    try:
        sub = go.make_context(tokens[0], list(tokens[1:]), resilient_parsing=False)
    except click.exceptions.Exit:
        raise UsageError("go options: --help cannot be scheduled") from None
    except click.ClickException as exc:
        raise UsageError(f"go options: {exc.format_message()}") from None
    params = sub.params
    given = {n for n in params if sub.get_parameter_source(n) == ParameterSource.COMMANDLINE}
    for key, why in _REFUSED_GO_OPTIONS.items():
        if key in given and params[key]:
            raise UsageError(f"go options: {why}")
    if "profile" in given:
        if profile_explicit and params["profile"] != profile:
            raise UsageError(f"two profiles given ({profile!r} and, after go, {params['profile']!r}): give one")
        profile = params["profile"]
    if params.get("input") == "-":
        raise UsageError("go options: a scheduled broadcast has no standard input to read from ('-')")
    # the same checks go makes before it starts (pure ones only: the input file is opened at run time)
    plan.parse_input(params.get("input"), params.get("test_pattern", False), params.get("loop", False),
                     params.get("audio"))
    for key, parse in (("duration", plan.parse_duration), ("size", plan.parse_size), ("fps", plan.parse_fps)):
        if params.get(key):
            parse(params[key])
    for key in ("video_bitrate", "audio_bitrate"):
        if params.get(key):
            plan.parse_bitrate(params[key], key.replace("_", " "))
    # relative paths would be read from cron's working directory ($HOME): make them absolute now
    for key in ("input", "record", "log_file", "ffmpeg"):
        value = params.get(key)
        if value is not None and key in given and (key != "ffmpeg" or os.sep in str(value)):
            if key != "input" or _is_local_path(str(value)):
                params[key] = os.path.abspath(os.path.expanduser(str(value)))
    if params.get("record") and "{" not in str(params["record"]) and not params.get("overwrite"):
        _warn(f"--record {params['record']} has no {{date}} or {{time}}: the first run creates it and every later "
              "run will refuse to overwrite it (use e.g. show-{date}_{time}.mkv)")
    if params.get("input") and _is_local_path(params["input"]) and not Path(params["input"]).exists():
        _warn(f"input file {params['input']} does not exist now; the broadcast will fail unless it does by then")
    argv = [tokens[0]]
    for param in go.params:
        if param.name not in given or param.name in ("profile", "plain"):
            continue
        value = params[param.name]
        if isinstance(param, click.Argument):
            argv.insert(1, str(value))
        elif getattr(param, "is_flag", False):
            if value:
                argv.append(param.opts[0])
            elif param.secondary_opts:
                argv.append(param.secondary_opts[0])
        elif getattr(param, "multiple", False):
            for v in value:
                argv += [param.opts[0], str(v)]
        elif value is not None:
            argv += [param.opts[0], str(value)]
    return argv, profile, name or profile, params


def _cron_env() -> dict[str, str]:
    """What the job must see that cron will not give it: the same config dir (and ffmpeg override)."""
    import shutil

    env = {"RESTREAM_CONFIG_DIR": _config_dir()}  # always: the line belongs to this config dir
    ffmpeg = os.environ.get("RESTREAM_FFMPEG")
    if ffmpeg:  # a bare name is looked up on PATH, and cron's PATH is /usr/bin:/bin
        env["RESTREAM_FFMPEG"] = (os.path.abspath(os.path.expanduser(ffmpeg)) if os.sep in ffmpeg
                                  else shutil.which(ffmpeg) or ffmpeg)
    return env


def _config_dir() -> str:
    return os.path.abspath(paths.config_dir().expanduser())


def _default_config_dir() -> str:
    """Where a line written without RESTREAM_CONFIG_DIR (by an older restream) keeps its profiles."""
    import platformdirs

    return os.path.abspath(platformdirs.user_config_dir("restream"))


def _mine(entry) -> bool:
    """Schedules belong to their config dir: list and remove see only the entries made with the same one."""
    return os.path.realpath(entry.config_dir(_default_config_dir())) == os.path.realpath(_config_dir())


def _fmt_time(t) -> str:
    return t.strftime("%a %Y-%m-%d %H:%M %Z").rstrip()


def schedule_add_cmd(
    ctx: typer.Context,
    expr: Annotated[str, typer.Argument(metavar="\"CRON EXPR\"",
                                        help="When: five cron fields (minute hour day month weekday) or @daily etc.")],
    command: Annotated[list[str], typer.Argument(metavar="-- go INPUT [GO OPTIONS]...",
                                                 help="The broadcast, exactly as you would run it, after '--'.")],
    name: Annotated[Optional[str], typer.Option("--name", metavar="N",
                                                help="Name of the schedule (default: the profile's name).")] = None,
    print_only: Annotated[bool, typer.Option("--print", help="Print the crontab line instead of installing it.")] = False,
    profile: ProfileOpt = paths.DEFAULT_PROFILE,
) -> None:
    """Schedule a broadcast with cron: validates, shows the next runs, installs one crontab line."""
    from datetime import datetime

    from click.core import ParameterSource

    from restream import schedule

    expr = schedule.validate_expr(expr)
    if name is not None:
        schedule.validate_name(name)
    explicit = ctx.get_parameter_source("profile") == ParameterSource.COMMANDLINE
    go_argv, profile, name, params = _go_argv(ctx, list(command), profile, explicit, name)
    schedule.validate_name(name)
    p = prof.load(prof.validate_profile_name(profile), must_exist=True)
    from restream.selection import select

    dests = select(p, params.get("only"), params.get("skip"))
    for d in dests:
        if d.stream_key_env and d.stream_key_env not in _cron_env():
            _warn(f"{d.name} reads its key from ${d.stream_key_env}: cron will not have it unless you set it "
                  f"in the crontab ({d.stream_key_env}=… line) or store the key in the profile")
    log_file = params.get("log_file") if params.get("log_file") else None
    if log_file is None:
        logs = paths.config_dir().expanduser().absolute() / "logs"
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_file = str(logs / f"{name}.log")
        go_argv += ["--log-file", log_file]
    argv = _restream_argv() + go_argv + ["--plain", "-p", p.name]
    line = schedule.build_line(expr, name, argv, _cron_env())
    runs = ", ".join(_fmt_time(t) for t in schedule.next_runs(expr, datetime.now().astimezone()))
    if print_only:
        typer.echo(line)
        typer.echo(f"next runs: {runs}", err=True)
        return
    binary = schedule.crontab_path()
    from filelock import FileLock

    paths.runtime_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    with FileLock(str(paths.runtime_dir() / "crontab.lock"), mode=0o600):
        text = schedule.read_crontab(binary)
        schedule.write_crontab(schedule.add(text, line, _mine), binary)
    typer.echo(f"scheduled {name!r}: {line}")
    typer.echo(f"next runs: {runs}")
    typer.echo(f"log file: {log_file}")


def schedule_list_cmd(
    as_json: JsonOpt = False,
    wide: Annotated[bool, typer.Option("--wide", help="Show each whole crontab command.")] = False,
) -> None:
    """List the broadcasts restream scheduled in your crontab with this config directory."""
    from datetime import datetime

    from restream import schedule

    found = [e for e in schedule.entries(schedule.read_crontab()) if _mine(e)]
    now = datetime.now().astimezone()
    rows = []
    for e in found:
        try:
            nxt = _fmt_time(schedule.next_runs(e.expr, now, 1)[0]) if e.active else "(commented out)"
        except Exception:  # an expression edited by hand into something croniter cannot read
            nxt = "?"
        rows.append({"name": e.name, "schedule": e.expr, "next": nxt, "active": e.active, "profile": e.profile,
                     "summary": e.summary, "command": e.command, "config_dir": e.config_dir(_default_config_dir())})
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo("no scheduled broadcasts (add one: restream schedule add \"0 19 * * 1\" -- go show.mp4)")
        return
    from restream.tables import table

    if wide:
        table([("NAME", "name"), ("SCHEDULE", "schedule"), ("NEXT RUN", "next"), ("COMMAND", "command")], rows)
        return
    # fits 100 columns: the command shortened to what was scheduled; --wide or --json for all of it
    fixed = 2 * 4 + sum(max(len(h), *(len(str(r[k] or "")) for r in rows))
                        for h, k in (("NAME", "name"), ("SCHEDULE", "schedule"), ("NEXT RUN", "next"),
                                     ("PROFILE", "profile")))
    room = max(12, 100 - fixed)
    for r in rows:
        if len(r["summary"]) > room:
            r["summary"] = r["summary"][:room - 1] + "…"
    table([("NAME", "name"), ("SCHEDULE", "schedule"), ("NEXT RUN", "next"), ("PROFILE", "profile"),
           ("BROADCAST", "summary")], rows)


def schedule_remove_cmd(
    name: Annotated[str, typer.Argument(help="The schedule's name (see: restream schedule list).")],
) -> None:
    """Remove one of restream's scheduled broadcasts (other crontab lines are left alone)."""
    from filelock import FileLock

    from restream import schedule

    schedule.validate_name(name)
    binary = schedule.crontab_path()
    paths.runtime_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
    with FileLock(str(paths.runtime_dir() / "crontab.lock"), mode=0o600):
        text = schedule.read_crontab(binary)
        new, gone = schedule.remove(text, name, _mine)
        if not gone:
            raise UsageError(f"no scheduled broadcast named {name!r} in {_config_dir()} (see: restream schedule "
                             "list)")
        schedule.write_crontab(new, binary)
    typer.echo(f"removed schedule {name!r}")


# -- registration ---------------------------------------------------------------------------------------------------

def _guard(fn: Callable, exit_code_for: Callable[[RestreamError], int]) -> Callable:
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except RestreamError as exc:
            typer.echo(f"restream: error: {exc}", err=True)
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper


def register(app: typer.Typer, exit_code_for: Callable[[RestreamError], int]) -> None:
    """Add doctor, check and the schedule group to ``app``."""
    app.command("doctor", epilog="Examples:\n\n  restream doctor\n\n  restream doctor --json -p events\n\n"
                "  RESTREAM_FFMPEG=/opt/ffmpeg/bin/ffmpeg restream doctor")(_guard(doctor_cmd, exit_code_for))
    app.command("check", epilog="Examples:\n\n  restream check\n\n  restream check youtube twitch --timeout 5\n\n"
                "  restream check --json -p events")(_guard(check_cmd, exit_code_for))
    sched = typer.Typer(name="schedule", no_args_is_help=True,
                        help="Schedule broadcasts with cron (one crontab line each, marked '# restream:NAME').",
                        epilog="Examples:\n\n  restream schedule add \"0 19 * * 1\" --name weekly -- go show.mp4 "
                               "--duration 2h\n\n  restream schedule list\n\n  restream schedule remove weekly")
    sched.command("add", epilog="Examples:\n\n"
                  "  restream schedule add \"0 19 * * 1\" --name weekly -- go /srv/show.mp4 --duration 2h\n\n"
                  "  restream schedule add @daily -p events -- go --test-pattern --duration 60s\n\n"
                  "  restream schedule add \"30 8 * * 1-5\" --print -- go rtmp://127.0.0.1/live/cam --copy   "
                  "(print the line, install nothing)")(_guard(schedule_add_cmd, exit_code_for))
    sched.command("list", epilog="Examples:\n\n  restream schedule list\n\n  restream schedule list --wide\n\n"
                  "  restream schedule list --json")(
        _guard(schedule_list_cmd, exit_code_for))
    sched.command("remove", epilog="Example:\n\n  restream schedule remove weekly")(
        _guard(schedule_remove_cmd, exit_code_for))
    app.add_typer(sched)
