"""`restream demo` end to end: three local stand-in platforms, one encode, a verdict; the user's config untouched."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support import near, timing

pytestmark = pytest.mark.e2e


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@timing
@pytest.mark.timeout(120)
def test_demo_passes_and_touches_no_config(cli, config_dir: Path, tmp_path: Path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    # the config dir does not exist; HOME/XDG point at an empty folder (in case anything fell back to them);
    # TMPDIR is ours, so the demo's receivers (their output lives there) can be found and must be gone afterwards
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "TMPDIR": str(tmp)}
    code, out, err = cli("demo", "--seconds", "6", "--size", "320x180", "--plain", subprocess=True, env=env,
                         timeout=100)
    assert code == 0, f"{out}\n{err}"
    passes = re.findall(r"^  PASS  (youtube|twitch|kick) +(\d+\.\d) s", out, re.M)
    assert [p[0] for p in passes] == ["youtube", "twitch", "kick"], out
    for name, seconds in passes:  # what each receiver got, of the 6 s asked
        near(float(seconds), 6.0, 1.0, f"the demo's {name} receiver")
    assert "FAIL" not in out
    assert re.search(r"^verdict: all three received a decodable stream", out, re.M), out
    assert "one encode" in err, "the intro says what is about to happen"

    assert not config_dir.exists(), f"the demo created {config_dir}: {sorted(config_dir.rglob('*'))}"
    assert list(home.iterdir()) == [], sorted(home.rglob("*"))
    assert list(tmp.iterdir()) == [], "the demo left files behind"
    assert _processes_mentioning(str(tmp)) == [], "a demo receiver is still running"


def test_demo_too_short_is_a_usage_error(cli, config_dir: Path):
    code, out, err = cli("demo", "--seconds", "2")
    assert code == 2
    assert "--seconds" in err
    assert not config_dir.exists()
