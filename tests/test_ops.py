"""Operations: the broadcast lock, `schedule` (pure lines + the real crontab + a line run under env -i), `doctor`
and `check` (against loopback servers: plain, closed, TLS with the test certificate).

CLI tests run the real ``python -m restream`` in a child process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import support
from restream import check, doctor, rtmp, schedule
from restream.errors import UsageError

RESTREAM = [sys.executable, "-m", "restream"]
DATA = Path(__file__).parent / "data"
CERT, KEY = DATA / "cert.pem", DATA / "key.pem"
SMALL = ["--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "300k", "--plain"]


def rs(*args: str, env: dict | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*RESTREAM, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


# -- schedule: pure --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr", ["0 19 * * 1", "*/15 8-18 * * mon-fri", "30 6 1,15 * *", "@weekly", "@daily",
                                  "  0   19 * *   1 "])
def test_valid_cron_expressions(expr):
    assert schedule.validate_expr(expr) == " ".join(expr.split())


@pytest.mark.parametrize("expr", ["", "0 19 * *", "0 0 19 * * 1", "61 * * * *", "0 25 * * *", "0 9 * * 1#2",
                                  "0 9 L * *", "0 0 31 2 *", "@reboot", "@often", "0 19 * * 1\n* * * * *",
                                  "0 19 * * funday"])
def test_invalid_cron_expressions(expr):
    with pytest.raises(UsageError):
        schedule.validate_expr(expr)


def test_next_three_runs():
    start = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)  # a Friday
    runs = schedule.next_runs("0 19 * * 1", start)
    assert [r.isoformat() for r in runs] == ["2026-11-30T19:00:00+00:00", "2026-12-07T19:00:00+00:00",
                                             "2026-12-14T19:00:00+00:00"]


def test_line_round_trip_quotes_and_percent():
    argv = ["/opt/py 3/bin/python", "-m", "restream", "go", "/srv/it's 100%.mp4", "--plain", "-p", "default"]
    line = schedule.build_line("0 19 * * 1", "weekly", argv, {"RESTREAM_CONFIG_DIR": "/home/a b/.config/restream"})
    assert line.endswith(" # restream:weekly") and "\n" not in line
    assert "\\%" in line and "100%." not in line  # cron turns a bare % into a newline
    entry = schedule.parse_line(line)
    assert (entry.name, entry.expr, entry.active) == ("weekly", "0 19 * * 1", True)
    import shlex

    assert shlex.split(entry.command) == ["RESTREAM_CONFIG_DIR=/home/a b/.config/restream", *argv]
    assert schedule.command_of(line) == entry.command


def test_line_refuses_bad_names_and_newlines():
    with pytest.raises(UsageError):
        schedule.build_line("0 19 * * 1", "bad name", ["/bin/true"])
    with pytest.raises(UsageError):
        schedule.build_line("0 19 * * 1", "x", ["/bin/echo", "a\nb"])


FOREIGN = ("# m h dom mon dow command\n"
           "MAILTO=ops@example.org\n"
           "SHELL=/bin/bash\n"
           "\n"
           "*/5 * * * * /usr/local/bin/backup --quiet  # nightly-ish   \n"
           "@reboot /usr/bin/true # restream-like but not ours: restreamer\n"
           "   0 1 * * * echo '50%' \\% trailing\t\n"
           "# restream:nope is a comment with no schedule\n"
           "0 2 * * * /bin/true")  # no final newline


def _ours(name: str) -> str:
    return schedule.build_line("0 19 * * 1", name, ["/usr/bin/python3", "-m", "restream", "go", "x.mp4"])


def test_add_and_remove_keep_foreign_lines_byte_exact():
    assert schedule.entries(FOREIGN) == []
    one = schedule.add(FOREIGN, _ours("a"))
    assert one.startswith(FOREIGN + "\n")  # the missing final newline is supplied, nothing else changes
    two = schedule.add(one, _ours("b"))
    assert [e.name for e in schedule.entries(two)] == ["a", "b"]
    with pytest.raises(UsageError, match="already exists"):
        schedule.add(two, _ours("a"))
    after, gone = schedule.remove(two, "a")
    assert [e.name for e in gone] == ["a"]
    assert after == FOREIGN + "\n" + _ours("b") + "\n"
    back, gone = schedule.remove(after, "b")
    assert back == FOREIGN + "\n" and len(gone) == 1
    same, gone = schedule.remove(FOREIGN, "b")
    assert same == FOREIGN and gone == []


def test_commented_out_line_is_found_inactive():
    text = "# " + _ours("paused") + "\n"
    (entry,) = schedule.entries(text)
    assert entry.name == "paused" and not entry.active and entry.expr == "0 19 * * 1"


def test_parse_ignores_crlf_and_odd_lines():
    assert schedule.entries("0 1 * * * echo hi\r\n\r\n") == []
    text = "x\r\n" + _ours("w") + "\n"
    assert schedule.remove(text, "w")[0] == "x\r\n"


# -- doctor: pure -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,is_dir,bad", [(0o600, False, None), (0o644, False, "readable by group and others"),
                                             (0o640, False, "readable by group"), (0o604, False, "readable by others"),
                                             (0o620, False, "writable"), (0o700, True, None),
                                             (0o755, True, "others can list"), (0o777, True, "writable")])
def test_permission_problem(mode, is_dir, bad):
    problem = doctor.permission_problem(mode, is_dir)
    assert (problem is None) if bad is None else (bad in problem)


# -- loopback servers for check ---------------------------------------------------------------------------------------

class Server:
    """A loopback TCP server in a thread: optionally TLS (the test certificate); ``answer`` "all" completes the RTMP
    handshake and answers ``connect`` with ``_result``; "handshake" completes the handshake and leaves ``connect``
    unanswered; False accepts and never answers (a black hole). Records every command name it received."""

    def __init__(self, tls: bool = False, answer: bool | str = "all") -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.tls_errors: list[str] = []
        self.received: list[bytes] = []
        self.commands: list[str] = []
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(CERT, KEY)
        self.answer = answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "Server":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.ctx is not None:
                try:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.tls_errors.append(str(exc))
                    return
            if not self.answer:
                self._stop.wait(5)
                return
            data = b""
            while len(data) < 1537:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.received.append(data)
            if len(data) >= 1537 and data[0] == 3:
                conn.sendall(b"\x03" + bytes(3072))
                rest, parser = data[1537:], rtmp.ChunkParser()
                while len(rest) < 1536:  # C2
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    rest += chunk
                rest = rest[1536:]
                while True:  # every command after the handshake is recorded (connect, and never publish)
                    for m in parser.feed(rest):
                        name = rtmp.command_name(m)
                        self.commands.append(name or f"type {m.type_id}")
                        if name == "connect" and self.answer == "all":
                            conn.sendall(rtmp.serialize(rtmp.command_message(
                                ["_result", 1.0, {"fmsVer": "test"}, {"code": "NetConnection.Connect.Success"}]),
                                rtmp.DEFAULT_CHUNK_SIZE))
                    rest = conn.recv(4096)
                    if not rest:
                        break
        except OSError:
            pass
        finally:
            conn.close()


def _probe(url: str, ca: str | None = None, timeout: float = 5.0) -> check.Result:
    return check.run([check.Probe("d", url, ca)], timeout)[0]


def test_check_reachable_with_rtmp_handshake_and_connect_and_nothing_more():
    with Server() as srv:
        r = _probe(f"rtmp://127.0.0.1:{srv.port}/live")
        support.wait_for(lambda: srv.commands, 2, what="the command to be recorded")
    assert r.reachable
    assert [s.name for s in r.steps] == ["dns", "tcp", "rtmp", "connect"] and all(s.ok for s in r.steps)
    assert all(s.ms is not None and s.ms >= 0 for s in r.steps)
    assert srv.commands == ["connect"]  # never releaseStream, FCPublish or publish


@pytest.mark.parametrize("answer,step,words", [(False, "rtmp", "did not answer the RTMP handshake"),
                                               ("handshake", "connect", "never answered `connect`")])
def test_check_black_hole_is_unreachable_and_named(answer, step, words):
    # mutation caught: an unanswered handshake (or connect) counted as reachable
    with Server(answer=answer) as srv:
        t0 = time.monotonic()
        r = _probe(f"rtmp://127.0.0.1:{srv.port}/live", timeout=2.0)
        took = time.monotonic() - t0
    assert took < 3.0
    assert not r.reachable and r.step(step).ok is False
    assert r.step(step).detail == "timed out" or words in r.step(step).detail, r.step(step).detail


def test_check_closed_port_is_unreachable():
    r = _probe(f"rtmp://127.0.0.1:{support.free_port()}/live")
    assert not r.reachable
    assert r.step("tcp").ok is False and "refused" in r.step("tcp").detail.lower()
    assert r.step("rtmp").ok is None


def test_check_is_bounded_by_timeout():
    with Server(answer=False) as srv:
        t0 = time.monotonic()
        r = _probe(f"rtmp://127.0.0.1:{srv.port}/live", timeout=0.6)
        took = time.monotonic() - t0
    assert took < 1.5
    assert not r.reachable and r.step("rtmp").ok is False and "handshake" in r.step("rtmp").detail


def test_check_runs_destinations_in_parallel():
    with Server(answer=False) as a, Server(answer=False) as b, Server(answer=False) as c:
        t0 = time.monotonic()
        results = check.run([check.Probe(n, f"rtmp://127.0.0.1:{s.port}/x") for n, s in
                             (("a", a), ("b", b), ("c", c))], 0.8)
        took = time.monotonic() - t0
    assert took < 1.6 and not any(r.reachable for r in results)


def test_check_rtmps_verifies_the_certificate():
    with Server(tls=True) as srv:
        good = _probe(f"rtmps://127.0.0.1:{srv.port}/live", str(CERT))
        bad = _probe(f"rtmps://127.0.0.1:{srv.port}/live", None)
        named = _probe(f"rtmps://localhost:{srv.port}/live", str(CERT))
    assert good.reachable and good.step("tls").ok and good.step("rtmp").ok
    assert not bad.reachable and bad.step("tls").ok is False
    assert "certificate verify failed" in bad.step("tls").detail
    assert named.reachable


def test_check_srt_is_dns_only_and_says_so():
    r = _probe("srt://127.0.0.1:9000?streamid=x")
    assert r.reachable and [s.name for s in r.steps] == ["dns"] and "UDP" in r.note
    assert not _probe("srt://nonexistent.invalid:9000").reachable


def test_default_ports():
    assert check._endpoint("rtmp://h/app")[2] == 1935
    assert check._endpoint("rtmps://h/app")[2] == 443
    assert check._endpoint("rtmps://h:8443/app")[2] == 8443


# -- check and doctor through the real CLI -------------------------------------------------------------------------

def test_cli_check_reachable_and_closed():
    with Server() as srv:
        assert rs("add", "up", "--url", f"rtmp://127.0.0.1:{srv.port}/live", "--key", "k1").returncode == 0
        assert rs("add", "down", "--url", f"rtmp://127.0.0.1:{support.free_port()}/live",
                  "--key", "k2").returncode == 0
        ok = rs("check", "up", "--timeout", "5")
        both = rs("check", "--timeout", "5")
        js = rs("check", "--json", "--timeout", "5")
    assert ok.returncode == 0, ok.stderr
    assert "reachable" in ok.stdout and "UNREACHABLE" not in ok.stdout
    assert both.returncode == 1 and "down: tcp:" in both.stdout
    import json

    doc = json.loads(js.stdout)
    assert js.returncode == 1 and {d["name"]: d["reachable"] for d in doc["destinations"]} == {"up": True,
                                                                                                "down": False}
    missing = rs("check", "nope")
    assert missing.returncode == 3 and "nope" in missing.stderr


def test_cli_check_rtmps_with_and_without_ca_file():
    with Server(tls=True) as srv:
        url = f"rtmps://127.0.0.1:{srv.port}/live"
        assert rs("add", "tls-ok", "--url", url, "--key", "k", "--ca-file", CERT).returncode == 0
        assert rs("add", "tls-bad", "--url", url, "--key", "k").returncode == 0
        good = rs("check", "tls-ok", "--timeout", "5")
        bad = rs("check", "tls-bad", "--timeout", "5")
    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 1 and "certificate verify failed" in bad.stdout


def test_cli_check_refuses_a_certificate_for_another_name():
    # mutation caught: check's TLS step with check_hostname off (a certificate for any name accepted)
    with Server() as srv:
        fronts = [support.TlsFront(srv.port, host).start() for host in ("127.0.0.1", "127.0.0.2")]
        try:
            for front in fronts:  # the certificate names 127.0.0.1 (and localhost), not 127.0.0.2
                url = f"rtmps://{front.host}:{front.port}/live"
                assert rs("add", f"at-{front.host}", "--url", url, "--key", "k", "--ca-file", CERT).returncode == 0
            good = rs("check", "at-127.0.0.1", "--timeout", "5")
            other = rs("check", "at-127.0.0.2", "--timeout", "5")
        finally:
            for front in fronts:
                front.stop()
    assert good.returncode == 0, good.stdout + good.stderr  # control: the same certificate and CA file
    assert other.returncode == 1, other.stdout + other.stderr
    assert "certificate verify failed" in other.stdout and "127.0.0.2" in other.stdout, other.stdout
    assert fronts[1].handshakes == 0


def test_cli_check_usage_errors():
    assert rs("check", "--timeout", "0").returncode == 2
    r = rs("check")
    assert r.returncode == 2 and "nothing to check" in r.stderr


def test_cli_doctor_exit_codes(profile_path):
    good = rs("doctor")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ffmpeg" in good.stdout and "libx264" in good.stdout and "ready" in good.stdout
    bad = rs("doctor", env={"RESTREAM_FFMPEG": "/nonexistent"})
    assert bad.returncode == 4
    assert "/nonexistent" in bad.stderr and bad.stderr.count("\n") == 1
    js = rs("doctor", "--json", env={"RESTREAM_FFMPEG": "/nonexistent"})
    import json

    assert js.returncode == 4 and json.loads(js.stdout)["can_broadcast"] is False


def test_cli_doctor_warns_about_a_readable_profile(profile_path):
    assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abc").returncode == 0
    path = profile_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "readable" not in rs("doctor").stdout
    path.chmod(0o644)
    r = rs("doctor")
    assert r.returncode == 0 and "readable by group and others" in r.stdout and str(path) in r.stdout


# -- schedule through the real CLI ------------------------------------------------------------------------------------

def test_cli_schedule_invalid_expression_is_usage_error():
    assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abc").returncode == 0
    for expr in ("0 25 * * *", "every monday", "* * * *"):
        r = rs("schedule", "add", expr, "--print", "--", "go", "--test-pattern")
        assert r.returncode == 2 and "cron expression" in r.stderr, (expr, r.stderr)


@pytest.mark.parametrize("args,message,code", [
    (["--", "go", "--test-pattern", "--json"], "--json", 2),
    (["--", "go", "--test-pattern", "--dry-run"], "--dry-run", 2),
    (["--", "go", "-"], "standard input", 2),
    (["--", "go", "--test-pattern", "--no-such-option"], "no-such-option", 2),
    (["--", "go", "--test-pattern", "--duration", "soon"], "duration", 2),
    (["--", "go", "--test-pattern", "--only", "ghost"], "no destination named 'ghost'", 3),  # as `go --only` says
    (["--", "list"], "after '--'", 2),
    (["--name", "bad name", "--", "go", "--test-pattern"], "schedule name", 2),
])
def test_cli_schedule_validates_go_options(args, message, code):
    # one exit code per row (the README's table): usage errors, but an unknown destination is a profile error (3)
    assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abc").returncode == 0
    r = rs("schedule", "add", "0 19 * * 1", "--print", *args)
    assert r.returncode == code and message in r.stderr, (r.returncode, r.stderr)
    assert r.stdout == ""


def test_cli_schedule_print_line(config_dir, tmp_path):
    assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abc", "-p", "events").returncode == 0
    (tmp_path / "show.mp4").write_bytes(b"")
    r = rs("schedule", "add", "@weekly", "--print", "--name", "wk", "--", "go", "show.mp4", "--loop",
           "--duration", "2h", "-p", "events", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    entry = schedule.parse_line(line)
    assert entry.name == "wk" and entry.expr == "@weekly"
    import shlex

    words = shlex.split(entry.command)
    assert words[0] == f"RESTREAM_CONFIG_DIR={config_dir}"
    assert words[1:5] == [sys.executable, "-m", "restream", "go"] and os.path.isabs(words[1])
    assert words[5] == str(tmp_path / "show.mp4")  # made absolute: cron runs in $HOME
    assert "--plain" in words and words[words.index("-p") + 1] == "events"
    assert words[words.index("--log-file") + 1] == str(config_dir / "logs" / "wk.log")
    assert "next runs:" in r.stderr


def test_cli_schedule_without_crontab_suggests_print(tmp_path):
    assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abc").returncode == 0
    empty = tmp_path / "bin"
    empty.mkdir()
    r = rs("schedule", "add", "0 19 * * 1", "--", "go", "--test-pattern", env={"PATH": str(empty)})
    assert r.returncode == 2 and "--print" in r.stderr and "crontab" in r.stderr
    printed = rs("schedule", "add", "0 19 * * 1", "--print", "--", "go", "--test-pattern", env={"PATH": str(empty)})
    assert printed.returncode == 0 and printed.stdout.rstrip().endswith("# restream:default")


def _crontab(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["crontab", *args], input=input, capture_output=True, text=True, timeout=30)


@pytest.fixture
def real_crontab():
    """The user's real crontab, saved before the test and put back after it, whatever happens."""
    if not any(os.access(os.path.join(d, "crontab"), os.X_OK) for d in os.environ.get("PATH", "").split(":")):
        pytest.fail("the crontab command is missing (Debian: apt-get install cron)")
    before = _crontab("-l")
    had = before.returncode == 0
    yield before.stdout if had else ""
    if had:
        assert _crontab("-", input=before.stdout).returncode == 0
    else:
        _crontab("-r")


@pytest.mark.timeout(60)
def test_cli_schedule_add_list_remove_against_the_real_crontab(real_crontab):
    assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abc").returncode == 0
    foreign = ("# a comment restream must keep\nMAILTO=\"\"\n"
               "17 4 * * * /usr/bin/printf '%s\\n' hi >/dev/null 2>&1   # not ours\n")
    assert _crontab("-", input=foreign).returncode == 0
    assert _crontab("-l").stdout == foreign

    added = rs("schedule", "add", "0 19 * * 1", "--name", "weekly", "--", "go", "--test-pattern", "--duration", "1h")
    assert added.returncode == 0, added.stderr
    assert "next runs:" in added.stdout
    again = rs("schedule", "add", "30 6 * * *", "--name", "weekly", "--", "go", "--test-pattern")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert rs("schedule", "add", "@daily", "--name", "daily", "--", "go", "--test-pattern").returncode == 0
    table = _crontab("-l").stdout
    assert table.startswith(foreign)
    assert [e.name for e in schedule.entries(table)] == ["weekly", "daily"]

    listed = rs("schedule", "list")
    assert listed.returncode == 0 and "weekly" in listed.stdout and "0 19 * * 1" in listed.stdout
    assert "daily" in listed.stdout and "printf" not in listed.stdout

    assert rs("schedule", "remove", "weekly").returncode == 0
    assert [e.name for e in schedule.entries(_crontab("-l").stdout)] == ["daily"]
    missing = rs("schedule", "remove", "weekly")
    assert missing.returncode == 2 and "weekly" in missing.stderr
    assert rs("schedule", "remove", "daily").returncode == 0
    assert _crontab("-l").stdout == foreign  # byte for byte
    assert "no scheduled broadcasts" in rs("schedule", "list").stdout


# -- end to end: the broadcast lock and a scheduled line run like cron runs it ----------------------------------------

def _start_go(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([*RESTREAM, "go", *SMALL, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _kill_tree(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    for pid in [proc.pid, *support.descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def receiver(tmp_path):
    made: list[support.Receiver] = []

    def start(name: str = "recv") -> support.Receiver:
        r = support.Receiver(support.free_port(), tmp_path / f"{name}.flv").start()
        made.append(r)
        return r

    yield start
    for r in made:
        r.kill()


@pytest.mark.e2e
@support.timing
@pytest.mark.timeout(90)
def test_second_go_on_a_busy_profile_exits_6_at_once(receiver, config_dir):
    recv = receiver()
    assert rs("add", "recv", "--url", recv.url, "--key", "probe").returncode == 0
    first = _start_go()
    try:
        support.wait_for(recv.connected, 30, what="the first broadcast to reach the receiver")
        t0 = time.monotonic()
        second = rs("go", *SMALL, timeout=10)
        took = time.monotonic() - t0
        assert second.returncode == 6, second.stderr
        support.bound(took, 1.0, "the second go refusing")
        assert f"PID {first.pid}" in second.stderr and "started 20" in second.stderr
        assert second.stderr.count("\n") == 1
        assert first.poll() is None  # the first one is undisturbed
    finally:
        first.send_signal(signal.SIGINT)
        try:
            first.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            _kill_tree(first)


def test_the_broadcast_lock_is_exclusive_private_and_released(tmp_path):
    """The lock is flock itself (filelock's import cost ~20 ms on the way to going live): a second taker is refused
    while it is held (flock locks belong to an open file, so even this same process is refused), the file is 0600,
    and it can be taken again once released."""
    from restream import runtime

    path = tmp_path / "default.lock"
    release = runtime._try_lock(path)
    assert release is not None
    assert runtime._try_lock(path) is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    release()
    again = runtime._try_lock(path)
    assert again is not None
    again()


@pytest.mark.e2e
@support.timing
@pytest.mark.timeout(120)
def test_a_kill_9ed_go_leaves_no_blocking_lock(receiver, tmp_path):
    recv = receiver("one")
    assert rs("add", "recv", "--url", recv.url, "--key", "probe").returncode == 0
    first = _start_go()
    support.wait_for(recv.connected, 30, what="the first broadcast to reach the receiver")
    children = support.descendants(first.pid)  # its ffmpeg: collected now, it is orphaned after the kill
    os.kill(first.pid, signal.SIGKILL)  # the holder dies without any clean-up
    first.communicate(timeout=10)
    for pid in children:  # then clean up the orphans, by PID
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    recv2 = receiver("two")
    assert rs("edit", "recv", "--url", recv2.url).returncode == 0
    t0 = time.monotonic()
    second = rs("go", *SMALL, "--duration", "3s", timeout=60)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    support.bound(time.monotonic() - t0, 3.0 + 5.0, "a 3 s broadcast after a kill -9ed one, start to exit")
    recv2.stop()
    support.near(support.probe(recv2.out).duration, 3.0, 1.0, "media received of a 3 s broadcast")


@pytest.mark.e2e
@support.timing
@pytest.mark.timeout(120)
def test_scheduled_line_runs_under_cron_environment(receiver, config_dir, tmp_path):
    recv = receiver()
    assert rs("add", "recv", "--url", recv.url, "--key", "probe").returncode == 0
    printed = rs("schedule", "add", "0 19 * * 1", "--name", "e2e", "--print", "--", "go", *SMALL[:-1],
                 "--duration", "4s")
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    command = schedule.command_of(line)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    run = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", command], capture_output=True, text=True,
                         timeout=90, cwd=elsewhere, start_new_session=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    recv.stop()
    media = support.probe(recv.out)
    assert media.decodes and media.video_codec == "h264"
    support.near(media.duration, 4.0, 1.0, "media received of a 4 s scheduled broadcast")
    log = config_dir / "logs" / "e2e.log"
    assert log.is_file() and log.stat().st_size > 0
    text = log.read_text()
    assert "recv" in text
