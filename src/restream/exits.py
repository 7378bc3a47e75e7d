"""Exit codes (documented in the README) and the one mapping from errors to them.

Its own module so that the fast path (``fastpath``) exits as the Typer app does without importing ``cli``.
"""

from __future__ import annotations

from restream.errors import BroadcastError, BusyError, FFmpegError, ProfileError, RestreamError, UsageError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_PROFILE = 3
EXIT_FFMPEG = 4
EXIT_BROADCAST = 5
EXIT_BUSY = 6
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def exit_code_for(exc: RestreamError) -> int:
    for cls, code in ((UsageError, EXIT_USAGE), (ProfileError, EXIT_PROFILE), (FFmpegError, EXIT_FFMPEG),
                      (BroadcastError, EXIT_BROADCAST), (BusyError, EXIT_BUSY)):
        if isinstance(exc, cls):
            return code
    return EXIT_BROADCAST
