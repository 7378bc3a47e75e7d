"""Start-up time: `restream list`, `restream show NAME` and the root help served without Typer, Click or Rich.

Importing Typer alone costs about 120 ms on a loaded 2-core machine (issue 16 asks these commands to finish in
80 ms). ``serve`` recognises exactly these command lines and their options, and prints what the Typer app prints,
byte for byte, with the same exit code: the text comes from the same code (``listing``, ``exits``) or, for the
root help, from Click's own rendering stored in ``helptext`` (a test fails the moment the two differ).

Anything else returns ``None`` and the caller runs the Typer app, which then handles it as always: another
command, an option given twice or in a form Click accepts but this parser does not try to (``-pNAME``, ``--``),
``--help`` after a command, shell completion, a terminal narrower than the stored help, an output stream
that Click would re-encode (not UTF-8) or text it would change (ANSI escapes, which it strips off a pipe), an
error that is not a ``RestreamError``. Nothing is printed before the answer is complete, so falling through
never leaves half an output behind.
"""

from __future__ import annotations

import os
import sys

_FLAGS = ("--json", "--show-keys")
_PROFILE = ("-p", "--profile")


def _parse(args: list[str], positionals: int) -> tuple[list[str], str, bool, bool] | None:
    """``[NAME] [-p NAME | --profile NAME | --profile=NAME] [--json] [--show-keys]`` in any order, each once."""
    names: list[str] = []
    profile: str | None = None
    flags: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _FLAGS:
            if arg in flags:
                return None
            flags.add(arg)
        elif arg in _PROFILE or arg.startswith("--profile="):
            if profile is not None:
                return None
            if arg in _PROFILE:
                i += 1
                if i == len(args):
                    return None
                profile = args[i]
            else:
                profile = arg.partition("=")[2]
            if not profile or profile.startswith("-"):
                return None
        elif not arg or arg.startswith("-"):
            return None
        else:
            names.append(arg)
        i += 1
    if len(names) != positionals:
        return None
    if profile is None:
        env = os.environ.get("RESTREAM_PROFILE")
        if env == "":
            return None  # how Click reads an empty variable is its business
        from restream.paths import DEFAULT_PROFILE

        profile = env or DEFAULT_PROFILE
    return names, profile, "--json" in flags, "--show-keys" in flags


def _utf8(stream) -> bool:
    """Click writes to a UTF-8 text stream as it is (it re-wraps one it finds misconfigured, e.g. ASCII)."""
    import codecs

    encoding = getattr(stream, "encoding", None)
    try:
        return bool(encoding) and codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


def _installed(package: str, version: str | None = None) -> bool:
    """Whether the ``package`` that ``import`` would find is ``version`` (by its .dist-info next to it)."""
    for entry in sys.path:
        folder = entry or "."
        if os.path.isdir(os.path.join(folder, package)):
            return version is None or os.path.isdir(os.path.join(folder, f"{package}-{version}.dist-info"))
    return False


def _help(args: list[str]) -> tuple[str, str, int] | None:
    from restream import helptext

    if "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION" in os.environ or not _installed("shellingham"):
        return None  # Typer words its completion options differently then
    if not all(_installed(package, version) for package, version in helptext.RENDERED_WITH):
        return None
    import shutil

    if shutil.get_terminal_size().columns < helptext.MIN_COLUMNS:
        return None  # Click wraps help to the terminal below 80 columns
    if args:
        return helptext.ROOT_HELP + "\n", "", 0
    return "", helptext.ROOT_HELP + "\n", 2  # bare `restream`: Click shows the help on stderr, exit 2


def _answer(args: list[str]) -> tuple[str, str, int] | None:
    """(stdout, stderr, exit code) of the command line, or None: not one of ours."""
    if "_RESTREAM_COMPLETE" in os.environ:
        return None
    if args in ([], ["--help"], ["-h"]):
        return _help(args)
    if args[0] not in ("list", "show"):
        return None
    parsed = _parse(args[1:], 1 if args[0] == "show" else 0)
    if parsed is None:
        return None
    names, profile, as_json, show_keys = parsed
    from restream import listing
    from restream.errors import RestreamError

    try:
        if args[0] == "list":
            pieces = listing.list_pieces(profile, as_json, show_keys)
        else:
            pieces = listing.show_pieces(names[0], profile, as_json, show_keys)
    except RestreamError as exc:
        from restream.exits import exit_code_for

        return "", f"restream: error: {exc}\n", exit_code_for(exc)
    except Exception:  # the Typer app shows it as it always has
        return None
    out = "".join(text if kind == "write" else text + "\n" for kind, text in pieces if kind != "warn")
    err = "".join(f"restream: warning: {text}\n" for kind, text in pieces if kind == "warn")
    return out, err, 0


def serve(args: list[str]) -> int | None:
    """Print the answer to ``restream ARGS`` and return its exit code, or return None having printed nothing."""
    answer = _answer(args)
    if answer is None:
        return None
    out, err, code = answer
    if "\x1b" in out or "\x1b" in err:
        return None
    for text, stream in ((out, sys.stdout), (err, sys.stderr)):
        if text and (stream is None or not _utf8(stream)):
            return None
        try:
            text.encode("utf-8", getattr(stream, "errors", None) or "strict")
        except UnicodeEncodeError:
            return None
    for text, stream in ((out, sys.stdout), (err, sys.stderr)):
        if text:
            stream.write(text)
            stream.flush()
    return code
