"""Where restream keeps its files: one place decides, everything else asks here."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PROFILE = "default"


def config_dir() -> Path:
    """``RESTREAM_CONFIG_DIR`` if set, else the platform's user config directory."""
    override = os.environ.get("RESTREAM_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("restream"))


def cache_dir() -> Path:
    """What restream can always make again (what it learnt of an ffmpeg binary): ``RESTREAM_CACHE_DIR`` if set, else
    inside ``RESTREAM_CONFIG_DIR`` if that is set (a throwaway config dir takes its cache with it), else the
    platform's user cache directory."""
    override = os.environ.get("RESTREAM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    if os.environ.get("RESTREAM_CONFIG_DIR"):
        return config_dir() / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("restream"))


def profiles_dir() -> Path:
    return config_dir() / "profiles"


def profile_path(name: str) -> Path:
    return profiles_dir() / f"{name}.toml"


def profile_lock_path(name: str) -> Path:
    """The lock held around every read-modify-write of a profile."""
    return profiles_dir() / f".{name}.toml.lock"


def broadcast_lock_path(name: str) -> Path:
    """The lock held for the whole length of a broadcast on a profile."""
    return config_dir() / "run" / f"{name}.lock"


def runtime_dir() -> Path:
    return config_dir() / "run"
