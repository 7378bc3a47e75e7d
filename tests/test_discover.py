"""Finding ffmpeg and learning what it can do: the bundled binary without importing imageio-ffmpeg, and the
capabilities cache (five runs of ffmpeg the first time, none after; a replaced or corrupt entry is learnt again)."""

from __future__ import annotations

import json
import os

import pytest

from restream import discover
from support import FFMPEG


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTREAM_CACHE_DIR", str(tmp_path / "cache"))
    discover.inspect.cache_clear()
    yield tmp_path / "cache"
    discover.inspect.cache_clear()


@pytest.fixture
def runs(monkeypatch):
    """Every run of a binary by discover (its arguments), counted; the runs themselves are real."""
    seen: list[tuple[str, ...]] = []
    real = discover._run

    def counting(path, *args):
        seen.append(args)
        return real(path, *args)

    monkeypatch.setattr(discover, "_run", counting)
    return seen


def _copy_of_ffmpeg(tmp_path):
    """A binary of its own (a hard link where possible), so its mtime can change without touching the real one."""
    copy = tmp_path / "bin" / "ffmpeg"
    copy.parent.mkdir()
    try:
        os.link(FFMPEG, copy)
    except OSError:
        copy.write_bytes(open(FFMPEG, "rb").read())
        copy.chmod(0o755)
    return copy


def test_the_bundled_binary_is_found_without_importing_imageio_ffmpeg(monkeypatch):
    import imageio_ffmpeg

    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    assert discover._bundled() == imageio_ffmpeg.get_ffmpeg_exe()
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/somewhere/ffmpeg")  # imageio's own override: it decides
    assert discover._bundled() is None


def test_capabilities_are_learnt_once_then_read_from_the_cache(cache, runs):
    first = discover.inspect(FFMPEG)
    assert len(runs) == 5 and {"tee", "fifo", "flv"} <= first.muxers and "rtmp" in first.protocols
    [entry] = cache.glob("ffmpeg-*.json")
    assert oct(entry.stat().st_mode & 0o777) == "0o600"
    discover.inspect.cache_clear()  # a new process
    again = discover.inspect(FFMPEG)
    assert len(runs) == 5, "the second start ran ffmpeg again"
    assert again == first


def test_a_replaced_binary_and_a_corrupt_entry_are_learnt_again(cache, runs, tmp_path):
    binary = str(_copy_of_ffmpeg(tmp_path))
    discover.inspect(binary)
    assert len(runs) == 5
    [entry] = cache.glob("ffmpeg-*.json")
    entry.write_text('{"format": 1, "version": "x", "muxers": [')  # torn
    discover.inspect.cache_clear()
    assert discover.inspect(binary).muxers >= {"tee"} and len(runs) == 10
    assert json.loads(entry.read_text())["version"] != "x"
    st = os.stat(binary)
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an upgrade in place
    discover.inspect.cache_clear()
    discover.inspect(binary)
    assert len(runs) == 15 and len(list(cache.glob("ffmpeg-*.json"))) == 2


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_runs(cache, runs):
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("a file where the directory should be")
    assert "tee" in discover.inspect(FFMPEG).muxers
    discover.inspect.cache_clear()
    assert "tee" in discover.inspect(FFMPEG).muxers and len(runs) == 10


def test_not_ffmpeg_is_never_cached(cache, tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'this is not ffmpeg'\n")
    fake.chmod(0o755)
    for _ in range(2):
        discover.inspect.cache_clear()
        with pytest.raises(discover.FFmpegError, match="does not look like ffmpeg"):
            discover.inspect(str(fake))
    assert not cache.exists() or not list(cache.glob("ffmpeg-*.json"))


def test_relay_natively_names_ffmpeg_with_one_run_cold_and_none_warm(cache, runs):
    cold = discover.identify(FFMPEG)
    assert runs == [("-version",)] and cold.version != "unknown" and not cold.muxers
    discover.inspect(FFMPEG)  # any go or transcoding relay fills the cache
    del runs[:]
    assert discover.identify(FFMPEG).version == cold.version and runs == []


def test_a_process_that_leaves_no_trace_reads_the_cache_but_never_writes_it(cache, runs, monkeypatch):
    monkeypatch.setattr(discover, "_remember", True)
    discover.leave_no_trace()
    discover.inspect(FFMPEG)
    assert len(runs) == 5 and not cache.exists()
