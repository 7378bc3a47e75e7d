"""Keys from where secrets live: ``stream_key_file`` and ``stream_key_cmd`` (issue 15, part 2).

Unit tests of ``restream.keysource`` first; then the real CLI: the options, what ``list``/``show``/``export`` say
(the kind of source only), a failing source exits 3 before anything connects, and a key from a file or a command
arrives exactly at a receiver that checks it and is never printed, logged or in a command line.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from conftest import CANARY_KEY, assert_no_canary
from restream import keysource
from restream import profile as prof
from support import bound, probe, timing

# -- helpers -------------------------------------------------------------------------------------------------------


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(0o700)
    return path


def key_printer(tmp_path: Path, key: str = CANARY_KEY, name: str = "print-key") -> Path:
    """A key command: prints the key, then a second line (only the first one counts); chatter on stderr."""
    return _script(tmp_path / name, "import sys\n"
                   f"sys.stderr.write('stderr chatter ' + {key!r} + '\\n')\n"
                   f"sys.stdout.write({key!r} + '\\nsecond line\\n')\n")


def failing(tmp_path: Path) -> Path:
    """Prints the canary on both streams, then fails: neither may appear anywhere."""
    return _script(tmp_path / "fail-key", "import sys\n"
                   f"print({CANARY_KEY!r}); sys.stderr.write({CANARY_KEY!r}); sys.exit(7)\n")


HANG_MARK = "61.4142"


def hanging(tmp_path: Path) -> Path:
    """A shell script whose child sleeps: the timeout must kill the whole group (the sleep too)."""
    path = tmp_path / "hang-key"
    path.write_text(f"#!/bin/sh\nsleep {HANG_MARK}\necho never\n", encoding="utf-8")
    path.chmod(0o700)
    return path


def sleepers() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if HANG_MARK.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def dest(**kw) -> prof.Destination:
    return prof.make_destination("yt", "rtmp://127.0.0.1:1935/live2", **kw)


# -- unit: files ---------------------------------------------------------------------------------------------------

def test_key_file_trailing_newlines_stripped_vars_expanded(tmp_path):
    (tmp_path / "yt").write_bytes(CANARY_KEY.encode() + b"\n")
    (tmp_path / "crlf").write_bytes(b"abc\r\n\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert keysource.resolve(dest(stream_key_file="$CREDENTIALS_DIRECTORY/yt"), env) == CANARY_KEY
    assert keysource.resolve(dest(stream_key_file="${CREDENTIALS_DIRECTORY}/crlf"), env) == "abc"
    assert keysource.resolve(dest(stream_key_file=str(tmp_path / "yt")), {}) == CANARY_KEY


@pytest.mark.parametrize("case, words", [
    ("missing", "No such file"),
    ("directory", "Is a directory"),
    ("empty", "is empty"),
    ("two lines", "control characters"),
    ("unset var", "$CREDENTIALS_DIRECTORY, which is not set"),
    ("huge", "larger than"),
    ("binary", "not UTF-8"),
])
def test_key_file_failures_name_destination_and_kind_never_content(tmp_path, case, words):
    path = tmp_path / "key"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_text("\n")
    elif case == "two lines":
        path.write_text(CANARY_KEY + "\nsecond\n")
    elif case == "huge":
        path.write_bytes(CANARY_KEY.encode() * 5000)
    elif case == "binary":
        path.write_bytes(b"\xff\xfe" + CANARY_KEY.encode())
    text = "$CREDENTIALS_DIRECTORY/key" if case == "unset var" else str(path)
    with pytest.raises(keysource.KeySourceError) as info:
        keysource.resolve(dest(stream_key_file=text), {})
    msg = str(info.value)
    assert "'yt'" in msg and "key file" in msg and words in msg, msg
    assert str(tmp_path) not in msg  # not even the path
    assert_no_canary(msg, "the error")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file: covered by the directory case instead")
def test_key_file_mode_000_is_unreadable(tmp_path):
    path = tmp_path / "key"
    path.write_text(CANARY_KEY)
    path.chmod(0)
    with pytest.raises(keysource.KeySourceError, match="Permission denied"):
        keysource.resolve(dest(stream_key_file=str(path)))


# -- unit: commands ------------------------------------------------------------------------------------------------

def test_key_cmd_first_line_of_stdout(tmp_path):
    assert keysource.resolve(dest(stream_key_cmd=[str(key_printer(tmp_path))])) == CANARY_KEY


def test_key_cmd_argv_no_shell(tmp_path):
    # one argument with a space and a $: passed as is, never through a shell
    out = keysource.resolve(dest(stream_key_cmd=[sys.executable, "-c", "import sys; print(sys.argv[1])",
                                                 "a $HOME b;c"]))
    assert out == "a $HOME b;c"


def test_key_cmd_fails_output_never_in_error(tmp_path):
    with pytest.raises(keysource.KeySourceError) as info:
        keysource.resolve(dest(stream_key_cmd=[str(failing(tmp_path))]))
    msg = str(info.value)
    assert "'yt'" in msg and "key command" in msg and "status 7" in msg, msg
    assert_no_canary(msg, "the error")


def test_key_cmd_missing_program():
    with pytest.raises(keysource.KeySourceError, match="cannot run its key command"):
        keysource.resolve(dest(stream_key_cmd=["/nonexistent/pass", "show", "yt"]))


def test_key_cmd_timeout_kills_the_group(tmp_path):
    start = time.monotonic()
    with pytest.raises(keysource.KeySourceError, match="did not finish within 1 s"):
        keysource.run_command(dest(stream_key_cmd=[str(hanging(tmp_path))]), timeout=1)
    assert time.monotonic() - start < 4  # a pure test: a plain bound, generous
    assert sleepers() == [], "the command's child outlived the timeout"


def test_resolver_runs_a_command_once_per_source(tmp_path):
    counter = tmp_path / "count"
    script = _script(tmp_path / "counting", f"import pathlib\np = pathlib.Path({str(counter)!r})\n"
                     "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\nprint('k-123')\n")
    r = keysource.Resolver()
    d = dest(stream_key_cmd=[str(script)])
    assert r(d) == r(d) == r(d.replace(enabled=False)) == "k-123"
    assert counter.read_text() == "1"
    assert r(dest(stream_key_cmd=[str(script), "x"])) == "k-123" and counter.read_text() == "2"


def test_profile_validation():
    with pytest.raises(prof.UsageError, match="one way"):
        dest(stream_key="a", stream_key_file="/x")
    with pytest.raises(prof.UsageError, match="list of strings"):
        dest(stream_key_cmd="pass show yt")
    with pytest.raises(prof.UsageError, match="list of strings"):
        dest(stream_key_cmd=[])
    assert dest(stream_key_cmd=["pass", "show", "yt"]).stream_key_cmd == ("pass", "show", "yt")


# -- the CLI: add, list, show, export, import ----------------------------------------------------------------------

def test_add_key_file_and_cmd_listed_by_kind_and_round_trip(cli, profile_path, tmp_path):
    keyfile = tmp_path / "yt.key"
    keyfile.write_text(CANARY_KEY + "\n")
    code, out, err = cli("add", "yt", "--url", "rtmp://127.0.0.1/live2", "--key-file", str(keyfile))
    assert code == 0 and err == "", err
    code, _, err = cli("add", "tw", "--url", "rtmp://127.0.0.1/app", "--key-cmd", "pass show 'my twitch'")
    assert code == 0, err
    code, _, err = cli("add", "sd", "--url", "rtmp://127.0.0.1/app", "--key-file",
                       "$CREDENTIALS_DIRECTORY/studio")
    assert code == 0 and "CREDENTIALS_DIRECTORY" in err, err  # warned: not set in this shell

    assert "pass show" not in profile_path().read_text()  # an argv list in the file, not a command line
    dests = {d.name: d for d in prof.load("default").destinations}
    assert dests["yt"].stream_key_file == str(keyfile) and dests["yt"].stream_key is None
    assert dests["tw"].stream_key_cmd == ("pass", "show", "my twitch")
    assert dests["sd"].stream_key_file == "$CREDENTIALS_DIRECTORY/studio"

    code, out, _ = cli("list")
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.split() and ln.split()[0] in ("yt", "tw", "sd")}
    assert lines["yt"].rstrip().endswith("file") and lines["tw"].rstrip().endswith("command"), out
    assert "pass" not in out and str(keyfile) not in out
    code, out, _ = cli("show", "tw", "--json")
    row = json.loads(out)
    assert row["key_source"] == "command" and "stream_key_cmd" not in row and row["stream_key"] is None
    code, out, _ = cli("show", "tw", "--json", "--show-keys")
    assert json.loads(out)["stream_key_cmd"] == ["pass", "show", "my twitch"]

    code, exported, err = cli("export")
    assert code == 0 and "left out" not in err  # no stored key to leave out: the sources are kept
    code, out, err = cli("import", "-", "--replace", "-p", "copy", input=exported)
    assert code == 0, err
    assert prof.load("copy").destinations == prof.load("default").destinations


def test_edit_switches_key_source(cli):
    assert cli("add", "yt", "--url", "rtmp://127.0.0.1/live2", "--key", "abc")[0] == 0
    code, _, err = cli("edit", "yt", "--key-cmd", "pass show yt")
    assert code == 0, err
    d = prof.load("default").get("yt")
    assert (d.stream_key, d.stream_key_cmd) == (None, ("pass", "show", "yt"))
    code, _, err = cli("edit", "yt", "--key-file", "/run/secrets/yt")
    assert code == 0, err
    d = prof.load("default").get("yt")
    assert (d.stream_key_cmd, d.stream_key_file) == (None, "/run/secrets/yt")
    code, _, err = cli("edit", "yt", "--key-file", "/x", "--key-cmd", "y")
    assert code == 2 and "cannot be used together" in err


def test_key_cmd_unbalanced_quote_is_not_echoed(cli):
    code, _, err = cli("add", "yt", "--url", "rtmp://127.0.0.1/live2", "--key-cmd", 'echo "' + CANARY_KEY)
    assert code == 2 and "--key-cmd" in err


# -- the CLI: going live ---------------------------------------------------------------------------------------------

@timing
@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["missing file", "unreadable file", "cmd fails", "cmd hangs", "unset var"])
def test_failing_key_source_exits_3_before_anything_connects(case, cli, tmp_path):
    from test_go_e2e import CHEAP, Procs

    procs = Procs(tmp_path)
    try:
        r = procs.receiver("r", "key-r")
        proxy = procs.proxy(r.port)  # counts every connection attempt
        good = procs.receiver("good", "key-good")
        assert cli("add", "good", "--url", good.url, "--key", "key-good")[0] == 0
        url = f"rtmp://127.0.0.1:{proxy.port}/live"
        if case == "missing file":
            source = ["--key-file", str(tmp_path / "nope.key")]
        elif case == "unreadable file":
            (tmp_path / "adir").mkdir()  # a directory: unreadable even for root (mode 000 is not, for root)
            source = ["--key-file", str(tmp_path / "adir")]
        elif case == "unset var":
            source = ["--key-file", "$RESTREAM_TEST_NO_SUCH_DIR/yt"]
        elif case == "cmd fails":
            source = ["--key-cmd", str(failing(tmp_path))]
        else:
            source = ["--key-cmd", str(hanging(tmp_path))]
        code, _, err = cli("add", "bad", "--url", url, *source)
        assert code == 0, err
        log = tmp_path / "go.log"
        start = time.monotonic()
        go = procs.go(*CHEAP, "--json", "--log-file", str(log), env={"RESTREAM_TEST_NO_SUCH_DIR": ""})
        assert go.wait(40) == 3, go.stderr
        took = time.monotonic() - start
        kind = "key command" if case.startswith("cmd") else "key file"
        assert "'bad'" in go.stderr and kind in go.stderr, go.stderr
        assert_no_canary(go.stdout + go.stderr, "restream's output")
        assert str(tmp_path) not in go.stderr
        assert go.events == []  # refused before the broadcast began (as a missing input file is)
        assert go.tee_ffmpegs() == [] and (proxy.accepted, proxy.refused) == (0, 0) and not good.connected()
        assert not log.exists() or "CANARY" not in log.read_text()
        if case == "cmd hangs":
            assert "within 10 s" in go.stderr and took >= 9.5, took
            bound(took, 20, "a hanging key command refused")
            assert sleepers() == []
        print(f"{case}: exit 3 after {took:.2f} s: {go.stderr.strip()}")
    finally:
        procs.close()


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_keys_from_file_and_command_arrive_exactly_and_never_show(cli, tmp_path, monkeypatch):
    from test_go_e2e import CHEAP, Procs, receivers_done

    other_key = "CMD-" + CANARY_KEY[::-1]  # also a canary (contains no "CANARY-k3y" but is checked below)
    procs = Procs(tmp_path)
    try:
        by_file = procs.receiver("byfile", CANARY_KEY)
        by_cmd = procs.receiver("bycmd", other_key)
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "yt").write_text(CANARY_KEY + "\n", encoding="utf-8")
        assert cli("add", "byfile", "--url", by_file.url, "--key-file", "$CREDENTIALS_DIRECTORY/yt",
                   env={"CREDENTIALS_DIRECTORY": str(creds)})[0] == 0
        assert cli("add", "bycmd", "--url", by_cmd.url, "--key-cmd",
                   f"{sys.executable} {key_printer(tmp_path, other_key)}")[0] == 0
        dry = procs.go(*CHEAP, "--dry-run", env={"CREDENTIALS_DIRECTORY": str(creds)})
        assert dry.wait(30) == 0, dry.stderr
        assert "-f tee" in dry.stdout and other_key not in dry.stdout + dry.stderr
        assert_no_canary(dry.stdout + dry.stderr, "the dry run")

        log = tmp_path / "go.log"
        go = procs.go(*CHEAP, "--duration", "4s", "--json", "--log-file", str(log),
                      env={"CREDENTIALS_DIRECTORY": str(creds)})
        assert go.wait(45) == 0, go.stderr
        receivers_done(by_file, by_cmd)
        everything = go.stdout + go.stderr + log.read_text(encoding="utf-8")
        assert_no_canary(everything, "restream's output and log")
        assert other_key not in everything and "second line" not in everything and "chatter" not in everything
        # the exact keys arrived: each receiver warns on any other stream name, and got a decodable stream
        assert by_file.stream_names() == [] and by_cmd.stream_names() == []
        assert by_file.connected() and by_cmd.connected()
        assert probe(by_file.out).decodes and probe(by_cmd.out).decodes
        for pid, argvs in go.children.items():
            for argv in argvs:
                text = argv.decode("utf-8", "replace")
                assert "CANARY-k3y" not in text and other_key not in text, f"a key in the argv of child {pid}"
        assert go.events[-1]["event"] == "end" and go.events[-1]["exit_code"] == 0
    finally:
        procs.close()


@pytest.mark.interop
@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_nginx_on_publish_sees_the_key_from_a_command(cli, tmp_path):
    from nginx import NginxRtmp, require_nginx
    from test_go_e2e import CHEAP, Procs

    require_nginx(tls=False)
    ngx = NginxRtmp(tmp_path, apps=["a1"], expected_keys={"a1": CANARY_KEY}, tls=False).start()
    procs = Procs(tmp_path)
    try:
        assert cli("add", "a1", "--url", ngx.rtmp_url("a1"), "--key-cmd", str(key_printer(tmp_path)))[0] == 0
        go = procs.go(*CHEAP, "--duration", "4s", "--json")
        assert go.wait(45) == 0, go.stderr
        assert [(a.key, a.accepted) for a in ngx.attempts("a1")] == [(CANARY_KEY, True)]
        assert_no_canary(go.stdout + go.stderr, "restream's output")
    finally:
        procs.close()
        ngx.stop()


def test_doctor_warns_about_missing_key_file_and_command(cli, tmp_path):
    assert cli("add", "a", "--url", "rtmp://127.0.0.1/live", "--key-file", str(tmp_path / "nope"))[0] == 0
    assert cli("add", "b", "--url", "rtmp://127.0.0.1/live", "--key-cmd", "/nonexistent/pass show b")[0] == 0
    code, out, err = cli("doctor")
    assert "a: its key file does not exist here" in out and "b: its key command's program is not found" in out, out
    assert str(tmp_path / "nope") not in out


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_live_add_runs_only_the_new_destinations_key_command(cli, tmp_path):
    from test_go_e2e import CHEAP, Procs, receivers_done

    counter = tmp_path / "runs"

    def counting(name: str, key: str) -> Path:
        return _script(tmp_path / f"key-{name}", "import pathlib\n"
                       f"p = pathlib.Path({str(counter)!r})\n"
                       f"p.open('a').write({name!r} + '\\n')\n"
                       f"print({key!r})\n")

    procs = Procs(tmp_path)
    try:
        a = procs.receiver("a", "key-a-0123456789")
        b = procs.receiver("b", "key-b-0123456789")
        assert cli("add", "a", "--url", a.url, "--key-cmd", str(counting("a", "key-a-0123456789")))[0] == 0
        go = procs.go(*CHEAP, "--duration", "12s", "--json", "--status-interval", "0.5")
        go.wait_live(["a"])
        assert counter.read_text() == "a\n"
        assert cli("add", "b", "--url", b.url, "--key-cmd", str(counting("b", "key-b-0123456789")))[0] == 0
        go.wait_state("b", "live", 10)
        assert go.state_now("a") == "live" and counter.read_text() == "a\nb\n"  # a's command was not run again
        assert go.wait(40) == 0, go.stderr
        receivers_done(a, b)
        assert a.stream_names() == [] and b.stream_names() == [] and probe(b.out).decodes
    finally:
        procs.close()
