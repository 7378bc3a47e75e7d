"""The restream command line: thin commands over the library; the only place errors become exit codes.

This module holds the Typer app and what its command groups share; the groups live beside it: destinations.py
(add ... import), broadcast.py (go, demo, relay, status) and ops.py (doctor, check, schedule)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated

import typer
import typer.core

# Help as Click prints it: Typer's Rich help would import Rich (~60 ms) for every --help and every option error.
typer.core.HAS_RICH = False

from restream import __version__, listing, paths
from restream import profile as prof
from restream.errors import RestreamError, UsageError

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


# The command groups, imported last (they import what they need from above) and in the root help's order:
# destinations (add ... import), broadcast (go, demo, relay, status), ops (doctor, check, schedule).
from restream.cli import destinations  # noqa: E402,F401
from restream.cli import broadcast  # noqa: E402,F401
from restream.cli import ops  # noqa: E402  (ops does not import restream.cli: it is handed app and the mapping)

ops.register(app, exit_code_for)


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
