"""One rule for errors: every error is one ``restream: error: …`` line on stderr (and at most a hint line), the
same situation gives the same exit code everywhere, and URL credentials are as secret as keys. Also: completion."""

from __future__ import annotations

import json
import os
import sys

import click
import pytest
import typer

from conftest import CANARY_KEY, assert_no_canary

URL_PASSWORD = "CANARY-k3y-url-pw"  # holds the canary mark: the conftest hook fails any test that prints it
CRED_URL = f"rtmp://streamer:{URL_PASSWORD}@127.0.0.1:9/live"


def _commands() -> list[tuple[str, ...]]:
    from restream.cli import app

    root = typer.main.get_command(app)
    out: list[tuple[str, ...]] = []

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + (name,))
        else:
            out.append(path)

    walk(root, ())
    return out


COMMAND_PATHS = _commands()


def test_every_command_is_covered():
    names = {" ".join(p) for p in COMMAND_PATHS}
    assert {"add", "go", "relay", "check", "doctor", "schedule add", "schedule list", "schedule remove"} <= names


def assert_one_error(err: str, out: str = "", hint: str | None = None) -> str:
    lines = err.splitlines()
    assert lines and lines[0].startswith("restream: error: "), err
    assert len(lines) <= 2, err
    if len(lines) == 2:
        assert lines[1].startswith("see 'restream") and lines[1].endswith(" --help'"), err
    if hint is not None:
        assert lines[1] == hint, err
    assert "╭" not in err and "Usage:" not in err and "Traceback" not in err, err
    assert out == "", out
    return lines[0]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p))
def test_every_command_with_a_bad_option_says_so_in_one_line(cli, path):
    code, out, err = cli(*path, "--no-such-option")
    assert code == 2, err
    first = assert_one_error(err, out, hint=f"see 'restream {' '.join(path)} --help'")
    assert first == "restream: error: No such option '--no-such-option'."


@pytest.mark.parametrize("args, message", [
    (["go", "--status-interval", "abc"], "Invalid value for '--status-interval': 'abc' is not a valid float."),
    (["show"], "Missing argument 'NAME'."),
    (["demo", "--seconds", "x"], "Invalid value for '--seconds'"),
    (["nosuchcommand"], "No such command 'nosuchcommand'."),
    (["check", "--timeout"], "Option '--timeout' requires an argument."),
])
def test_click_errors_are_one_line(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2, err
    assert message in assert_one_error(err, out)


def test_one_line_also_end_to_end(cli):
    code, out, err = cli("go", "--bogus", subprocess=True)
    assert code == 2
    assert err == "restream: error: No such option '--bogus'.\nsee 'restream go --help'\n"


# -- exit codes -----------------------------------------------------------------------------------------------------

@pytest.fixture
def two(cli):
    for name in ("alpha", "bravo"):
        code, _, err = cli("add", name, "--url", "rtmp://127.0.0.1:9/live", "--key", f"key-{name}-123456")
        assert code == 0, err


@pytest.mark.parametrize("args", [
    ["show", "nosuch"], ["remove", "nosuch"], ["enable", "nosuch"], ["edit", "nosuch", "--rename", "x"],
    ["check", "nosuch"], ["go", "--test-pattern", "--only", "nosuch"], ["go", "--test-pattern", "--skip", "nosuch"],
    ["go", "--test-pattern", "--only", "alpha,nosuch", "--dry-run"], ["relay", "--only", "nosuch"],
    ["schedule", "add", "@daily", "--print", "--", "go", "--test-pattern", "--only", "nosuch"],
])
def test_an_unknown_destination_is_a_profile_error_everywhere(cli, two, args):
    code, out, err = cli(*args)
    assert code == 3, err
    assert "no destination named 'nosuch'" in assert_one_error(err)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("keystroke, code, message", [("\x04", 2, "restream: error: no stream key entered"),
                                                        ("\x03", 130, None)])
def test_end_of_input_and_ctrl_c_at_the_key_prompt(config_dir, keystroke, code, message):
    import pexpect

    import signal

    # Ctrl-C as a terminal gives it: with SIGINT at its default in the child, whatever the suite was started from
    # (a background job of a script ignores SIGINT, and its children inherit that: ^C would then do nothing)
    child = pexpect.spawn(sys.executable, ["-m", "restream", "add", "youtube"], env=dict(os.environ),
                          encoding="utf-8", timeout=20,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect("Stream key \\(input hidden\\): ")
    child.send(keystroke)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == code, child.before
    after = child.before
    assert after.startswith("\r\n"), repr(after)  # the shell prompt starts on a line of its own
    if message:
        assert after.strip().splitlines() == [message + " (end of input at the prompt)"], repr(after)
    else:
        assert after.strip() == "" or after.strip() == "^C", repr(after)
    assert not (config_dir / "profiles" / "default.toml").exists()


# -- URL credentials are secrets ---------------------------------------------------------------------------------------

@pytest.fixture
def cred(cli):
    code, out, err = cli("add", "studio", "--url", CRED_URL, "--key", "studio-key-123456")
    assert code == 0, err
    assert out.strip() == "added studio -> rtmp://streamer:••••@127.0.0.1:9/live"


def test_url_passwords_are_masked_in_list_show_export_and_dry_run(cli, cred):
    for args in (["list"], ["list", "--json"], ["show", "studio"], ["show", "studio", "--json"], ["export"],
                 ["export", "--format", "apivideo"], ["go", "--test-pattern", "--dry-run"], ["status", "--json"]):
        code, out, err = cli(*args)
        assert code in (0, 1, 2), (args, err)  # status: 1, nothing runs; go: 2, see below
        assert URL_PASSWORD not in out + err, args
    code, out, _ = cli("list", "--json")
    assert json.loads(out)["destinations"][0]["server_url"] == "rtmp://streamer:••••@127.0.0.1:9/live"
    code, out, _ = cli("list", "--json", "--show-keys")  # shown in full only when asked
    assert json.loads(out)["destinations"][0]["server_url"] == CRED_URL


def test_a_masked_export_says_so(cli, cred):
    code, out, err = cli("export")
    assert code == 0
    assert out.startswith("# 1 stream key(s) left out (and URL passwords masked)")
    assert "streamer:••••@" in out


def test_an_input_url_with_credentials_is_masked_in_the_dry_run_header(cli, two):
    code, out, err = cli("go", f"rtmp://cam:{URL_PASSWORD}@127.0.0.1:9/live/cam", "--dry-run")
    assert code == 0, err
    assert URL_PASSWORD not in out


def test_rtmp_credentials_are_refused_when_going_live(cli, cred):
    code, out, err = cli("go", "--test-pattern", "--duration", "3s")
    assert code == 2, err
    assert "credentials in an RTMP URL (rtmp://streamer:••••@127.0.0.1:9/live) are not supported" in \
        assert_one_error(err, out)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_url_passwords_stay_out_of_logs_and_json(cli, tmp_path):
    import subprocess

    from support import Receiver, free_port

    r = Receiver(free_port(), tmp_path / "r.flv", key="key-r").start()
    log = tmp_path / "go.log"
    try:
        assert cli("add", "r", "--url", r.url, "--key", "key-r")[0] == 0
        # an SRT destination that fails: ffmpeg's error lines name its URL, password included
        srt = f"srt://u:{URL_PASSWORD}@127.0.0.1:9?mode=caller"
        assert cli("add", "down", "--url", srt, "--no-key")[0] == 0
        proc = subprocess.run(
            [sys.executable, "-m", "restream", "go", "--test-pattern", "--size", "320x180", "--fps", "15",
             "--video-bitrate", "300k", "--duration", "4s", "--json", "--log-file", str(log)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        r.kill()
    logged = log.read_text()
    for text, what in ((proc.stdout, "JSON"), (proc.stderr, "stderr"), (logged, "log file")):
        assert URL_PASSWORD not in text, what
        assert_no_canary(text, what)
    assert "u:••••@127.0.0.1:9" in logged or "••••" in logged, logged[-2000:]
    start = json.loads(proc.stdout.splitlines()[0])
    assert {d["url"] for d in start["destinations"]} == {r.url, "srt://u:••••@127.0.0.1:9?mode=caller"}


# -- add --key-env ----------------------------------------------------------------------------------------------------

def test_add_key_env_warns_when_the_variable_is_unset(cli, monkeypatch):
    monkeypatch.delenv("TWITCH_KEY_T12", raising=False)
    code, out, err = cli("add", "twitch", "--key-env", "TWITCH_KEY_T12")
    assert code == 0
    assert err.startswith("restream: warning: $TWITCH_KEY_T12 is not set in this shell"), err
    monkeypatch.setenv("TWITCH_KEY_T12", "x" * 20)
    code, out, err = cli("add", "twitch2", "--platform", "twitch", "--key-env", "TWITCH_KEY_T12")
    assert code == 0 and err == ""


# -- shell completion ----------------------------------------------------------------------------------------------------

def _complete(words: str, env=None) -> list[str]:
    import subprocess

    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    proc = subprocess.run([sys.executable, "-m", "restream"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {}), "_RESTREAM_COMPLETE": "complete_bash",
                               "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    return proc.stdout.split()


def test_completion_of_destination_and_profile_names(cli, two):
    assert cli("add", "gamma", "--url", "rtmp://127.0.0.1:9/live", "--key", "key-gamma-1234", "-p", "events")[0] == 0
    assert _complete("restream show ") == ["alpha", "bravo"]
    assert _complete("restream show b") == ["bravo"]
    assert _complete("restream show -p events ") == ["gamma"]
    assert _complete("restream go --only alpha,") == ["alpha,bravo"]
    assert _complete("restream list -p ") == ["default", "events"]
    assert _complete("restream check ") == ["alpha", "bravo"]


def test_completion_can_be_installed(cli):
    code, out, err = cli("--help")
    assert "--install-completion" in out and "--show-completion" in out
