"""One exception hierarchy for everything restream can refuse or fail at.

Messages are single lines meant for the user and never contain a stream key.
Exit codes are assigned in ``cli`` only.
"""

from __future__ import annotations


class RestreamError(Exception):
    """Base of every error restream reports to the user."""


class UsageError(RestreamError):
    """Bad arguments or invalid input given on the command line."""


class InputError(UsageError):
    """The broadcast input does not exist or cannot be opened."""


class ProfileError(RestreamError):
    """A profile is unreadable, invalid or not found."""


class FFmpegError(RestreamError):
    """ffmpeg is missing or lacks something restream needs."""


class BroadcastError(RestreamError):
    """A broadcast could not start or ffmpeg failed while running."""


class BusyError(RestreamError):
    """Another broadcast already holds this profile."""


class NotFoundError(ProfileError):
    """A named destination or profile does not exist."""
