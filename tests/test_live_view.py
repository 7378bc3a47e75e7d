"""The live view as a streamer sees it: the real CLI in a pseudo-terminal (pexpect), its output fed to a terminal
emulator (pyte), assertions on what is on the screen, against real ffmpeg receivers on loopback.

Synchronisation is by polling the emulated screen with a deadline (``Term.wait``), never by fixed sleeps.
Cheap on two cores: 320x180 at 15 fps, 300k video, 64k audio.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest

from support import Receiver, TimingError, descendants, free_port, timing

pytestmark = pytest.mark.e2e

CHEAP = ["--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "300k", "--audio-bitrate", "64k"]
NAMES = ("alpha", "bravo", "charlie")
LIVE_TIMEOUT = 20.0  # python start-up, ffmpeg checks, three connects, on a loaded two-core machine


class Term:
    """``restream …`` on a pty of ``rows`` x ``cols``; everything it writes goes through a pyte screen."""

    def __init__(self, args: list[str], env: dict[str, str], rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw: list[tuple[float, bytes]] = []  # (monotonic time read, bytes)
        self.eof = False
        self.child = pexpect.spawn(sys.executable, ["-m", "restream", *args], env=env, dimensions=(rows, cols))
        self.seen_pids: set[int] = set()

    def pump(self, timeout: float = 0.05) -> None:
        """Feed whatever the program has written (waiting at most ``timeout`` for the first byte)."""
        if self.eof:
            return
        self.seen_pids.update(descendants(self.child.pid))
        while True:
            try:
                data = self.child.read_nonblocking(1 << 16, timeout=timeout)
            except pexpect.TIMEOUT:
                return
            except pexpect.EOF:
                self.eof = True
                return
            self.raw.append((time.monotonic(), data))
            self.stream.feed(data)
            timeout = 0

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def dump(self) -> str:
        return "\n".join(f"|{line}" for line in self.lines)

    def wait(self, predicate, timeout: float, what: str):
        """Poll the screen until ``predicate(self)`` is truthy; fail with the screen's content after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            value = predicate(self)
            if value:
                return value
            if self.eof and not predicate(self):
                raise AssertionError(f"restream exited before {what}; screen:\n{self.dump()}")
            if time.monotonic() > deadline:  # still running: a missed deadline (TimeoutError, may be rerun)
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}; screen:\n{self.dump()}")

    def table(self, names=NAMES) -> dict[str, dict[str, str]]:
        """The last table on screen (a header line over a ``───`` rule): name -> {header: cell}.

        Columns are separated by at least two spaces; cells hold at most single spaces ("580.6 kB", "last error").
        """
        lines = self.lines
        for i in range(len(lines) - 2, -1, -1):
            if lines[i + 1].lstrip().startswith("─") and "state" in lines[i].split():
                break
        else:
            return {}
        header = re.split(r" {2,}", lines[i].strip())
        rows = {}
        for line in lines[i + 2:]:
            if line.strip().startswith("↳"):  # a row's reason, on a line of its own on a narrow screen
                continue
            cells = re.split(r" {2,}", line.strip())
            if cells[0] not in names:
                break
            rows[cells[0]] = dict(zip(header, cells))
        return rows

    def reason(self, name: str) -> str:
        """What the screen says about why ``name`` is not live: its "last error" cell, else the ``↳`` line under
        its row (the last table on screen)."""
        lines = self.lines
        rows = self.table()
        cell = rows.get(name, {}).get("last error")
        if cell:
            return cell
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith(name + " ") or lines[i].startswith(name[:10] + "…"):
                below = lines[i + 1].strip() if i + 1 < len(lines) else ""
                return below[1:].strip() if below.startswith("↳") else ""
        return ""

    def states(self, names=NAMES) -> dict[str, str | None]:
        rows = self.table(names)
        return {n: rows.get(n, {}).get("state") for n in names}

    def cell_style(self, name: str, text: str) -> pyte.screens.Char | None:
        """The first character of ``text`` in the table row of ``name`` (to read its colour)."""
        for y, line in enumerate(self.lines):
            if line.startswith(name + " "):
                x = line.find(" " + text, len(name)) + 1
                if x > 0:
                    return self.screen.buffer[y][x]
        return None

    def finish(self, timeout: float) -> int:
        self.wait(lambda t: t.eof, timeout, "restream to exit")
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else -(self.child.signalstatus or 0)

    def kill(self) -> None:
        """Teardown: SIGKILL restream and every process it started (by PID)."""
        self.seen_pids.update(descendants(self.child.pid))
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        for pid in self.seen_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.child.close(force=True)


@pytest.fixture
def setup(tmp_path: Path, cli, config_dir: Path):
    """Three receivers as destinations; ``start(cols, seconds, color)`` runs ``restream go`` on a pty."""
    receivers: list[Receiver] = []
    terms: list[Term] = []

    def receiver(name: str, port: int | None = None) -> Receiver:
        n = sum(1 for r in receivers if r.out.stem.startswith(name))
        r = Receiver(port or free_port(), tmp_path / f"{name}{'-' + str(n) if n else ''}.flv", key=f"key-{name}")
        receivers.append(r)
        return r.start()

    for name in NAMES:
        r = receiver(name)
        code, _, err = cli("add", name, "--url", r.url, "--key-stdin", input=f"key-{name}\n")
        assert code == 0, err

    def start(cols: int, seconds: int, color: bool, rows: int = 30) -> Term:
        env = {**os.environ, "RESTREAM_CONFIG_DIR": str(config_dir), "TERM": "xterm-256color",
               "COLUMNS": str(cols), "LINES": str(rows)}
        if color:
            env.pop("NO_COLOR", None)
        else:
            env["NO_COLOR"] = "1"
        t = Term(["go", *CHEAP, "--duration", f"{seconds}s"], env, rows, cols)
        terms.append(t)
        return t

    class Setup:
        pass

    s = Setup()
    s.receivers = {r.out.stem: r for r in receivers}
    s.receiver, s.start = receiver, start
    yield s
    for t in terms:
        t.kill()
    for r in receivers:
        r.kill()


def all_live(t: Term) -> bool:
    return all(state == "live" for state in t.states().values())


@timing
@pytest.mark.timeout(90)
def test_rows_follow_a_receiver_that_dies_and_returns(setup):
    t = setup.start(cols=100, seconds=25, color=True)
    t.wait(all_live, LIVE_TIMEOUT, "all three rows live")
    # the header's figures are there, and the whole screen is redrawn at >= 2 Hz
    head = "\n".join(t.lines[:4])
    for label in ("elapsed", "stream", "fps", "bitrate", "live 3/3"):
        assert label in head, t.dump()
    window_start = time.monotonic()
    t.wait(lambda t: time.monotonic() - window_start >= 2.0, 5, "a 2 s window")
    redraws = sum(data.count(b"elapsed") for at, data in t.raw if at >= window_start)
    if redraws < 4:  # the view redraws every 0.25 s: a busy machine may starve it, nothing else
        raise TimingError(f"{redraws} redraws in 2 s, at least 4 expected")
    # states are coloured (NO_COLOR unset)
    assert t.cell_style("alpha", "live").fg == "green", t.cell_style("alpha", "live")

    bravo = setup.receivers["bravo"]
    bravo.kill()
    killed = time.monotonic()
    t.wait(lambda t: t.states()["bravo"] == "retrying", 3.5, "bravo's row to turn retrying")
    print(f"bravo retrying on screen {time.monotonic() - killed:.2f} s after its receiver was killed")
    assert t.states() == {"alpha": "live", "bravo": "retrying", "charlie": "live"}, t.dump()
    assert t.cell_style("bravo", "retrying").fg in ("yellow", "brown")  # pyte's name for SGR 33
    assert re.search(r"bravo: retrying \(.+\)", "\n".join(t.lines)), "the error is shown above the table"
    assert "live 2/3" in "\n".join(t.lines), t.dump()

    setup.receiver("bravo", port=bravo.port)
    back = time.monotonic()
    t.wait(lambda t: t.states()["bravo"] == "live", 5, "bravo's row back to live")
    print(f"bravo live on screen {time.monotonic() - back:.2f} s after its receiver returned")
    rows = t.table()
    assert {n: rows[n]["recon"] for n in NAMES} == {"alpha": "0", "bravo": "1", "charlie": "0"}, t.dump()
    assert rows["bravo"]["last error"], "the last error stays visible after recovery"

    assert t.finish(40) == 0, t.dump()
    screen = "\n".join(t.lines)
    assert re.search(r"^summary$", screen, re.M), t.dump()
    final = t.table()
    assert {n: final[n]["state"] for n in NAMES} == dict.fromkeys(NAMES, "stopped"), t.dump()
    assert {n: final[n]["reconnects"] for n in NAMES} == {"alpha": "0", "bravo": "1", "charlie": "0"}, t.dump()
    for n in NAMES:
        assert re.fullmatch(r"00:00:\d\d", final[n]["uptime"]) and final[n]["uptime"] != "00:00:00", final[n]
    assert "duration reached, exit 0" in screen, t.dump()
    assert not re.search(r"^elapsed \d", screen, re.M), "the live table is gone, only the summary remains"


@timing
@pytest.mark.timeout(60)
def test_80_columns_keep_every_row_and_state(setup):
    t = setup.start(cols=80, seconds=10, color=False)
    t.wait(all_live, LIVE_TIMEOUT, "all three rows live at 80 columns")
    setup.receivers["charlie"].kill()
    t.wait(lambda t: t.states()["charlie"] == "retrying", 3.5, "charlie's row to turn retrying")
    rows = t.table()
    assert t.states() == {"alpha": "live", "bravo": "live", "charlie": "retrying"}, t.dump()
    for n in NAMES:  # one line per row, the figures that matter still there
        assert {"uptime", "kbit/s"} <= set(rows[n]), t.dump()
    assert t.cell_style("alpha", "live").fg == "default", "NO_COLOR=1: no colours"
    print(t.dump())

    assert t.finish(30) == 1, t.dump()  # charlie was not live at the end
    final = t.table()
    assert {n: final[n]["state"] for n in NAMES} == {"alpha": "stopped", "bravo": "stopped",
                                                      "charlie": "failed"}, t.dump()
    assert "duration reached, exit 1" in "\n".join(t.lines), t.dump()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cols", [60, 80, 120])
def test_every_width_shows_state_and_reason_and_three_ctrl_c_leave_one_title(setup, cols):
    t = setup.start(cols=cols, seconds=40, color=False)
    t.wait(all_live, LIVE_TIMEOUT, f"all three rows live at {cols} columns")
    setup.receivers["bravo"].kill()
    t.wait(lambda t: t.states()["bravo"] == "retrying" and t.reason("bravo"), 5,
           "bravo retrying, with its reason on screen")
    assert t.states() == {"alpha": "live", "bravo": "retrying", "charlie": "live"}, t.dump()
    assert all(len(line) <= cols for line in t.lines)
    print(t.dump())
    for _ in range(3):
        t.child.sendcontrol("c")
    assert t.finish(30) == 130, t.dump()
    screen = t.lines
    titles = [line for line in screen if line.startswith("restream default ←")]
    assert len(titles) <= 1, t.dump()  # the live table is erased whole
    assert "^C" not in "\n".join(screen), t.dump()
    assert any(line.startswith("summary") for line in screen), t.dump()
    final = t.table()
    assert final["bravo"]["state"] == "failed", t.dump()
    assert t.reason("bravo"), t.dump()
