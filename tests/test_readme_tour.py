"""The README's 60-second tour runs as written, in a fresh shell with the venv's restream on PATH (every `go` gets
--dry-run: the tour's destinations are real platforms, and tests only use loopback). Also: the interop skip
message names what is missing."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def tour() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## A 60-second tour\n.*?```sh\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_tour_uses_what_it_creates():
    lines = tour()
    assert any("youtube.key" in ln and ">" in ln and "read" in ln for ln in lines)  # makes its key file
    assert any("--sample show.mp4" in ln for ln in lines)  # makes its sample input
    assert any("--test-pattern" in ln for ln in lines)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_tour_runs_as_written(tmp_path, config_dir):
    pexpect = pytest.importorskip("pexpect")
    script = tmp_path / "tour.sh"
    body = [re.sub(r"\brestream go ", "restream go --dry-run ", ln) for ln in tour()]
    script.write_text("set -e\n" + "\n".join(body) + "\necho TOUR-DONE\n", encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RESTREAM_CONFIG_DIR": str(config_dir)}
    env.pop("TWITCH_KEY", None)
    child = pexpect.spawn("bash", [str(script)], cwd=str(tmp_path), env=env, encoding="utf-8", timeout=90)
    child.logfile_read = seen = io.StringIO()
    child.expect("YouTube stream key: ")
    child.sendline("yt-tour-key-0123456789")
    child.expect("Stream key \\(input hidden\\): ")
    child.sendline("studio-tour-key-0123456789")
    child.expect("TOUR-DONE")
    child.expect(pexpect.EOF)
    child.close()
    out = seen.getvalue()
    assert child.exitstatus == 0, out
    assert "yt-tour-key" not in out and "studio-tour-key" not in out
    assert "added youtube -> rtmp://a.rtmp.youtube.com/live2" in out
    assert "warning" not in out.lower(), out  # TWITCH_KEY was exported before `add`
    assert (tmp_path / "show.mp4").stat().st_size > 100_000
    assert "-t 120" in out and "show\\-20" in out  # the test-card run, and the recording's filled-in name


def test_interop_skip_message_names_what_is_missing(monkeypatch, tmp_path):
    import nginx

    monkeypatch.setattr(nginx, "nginx_binary", lambda: "/usr/sbin/nginx")
    monkeypatch.setattr(nginx, "RTMP_MODULE", tmp_path / "rtmp.so")
    monkeypatch.setattr(nginx, "STREAM_MODULE", tmp_path / "stream.so")
    (tmp_path / "rtmp.so").touch()
    hint = nginx.install_hint(tls=True)
    assert hint.startswith("libnginx-mod-stream (") and "is not installed" in hint and "rtmp (" not in hint
    assert nginx.nginx_available(tls=False)
    (tmp_path / "rtmp.so").unlink()
    monkeypatch.setattr(nginx, "nginx_binary", lambda: None)
    assert nginx.install_hint(tls=False).startswith("nginx and libnginx-mod-rtmp (")
