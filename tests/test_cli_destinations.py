"""The destination commands through the real CLI: exit code first, then the message."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CANARY_KEY
from restream import profile as prof
from restream.redact import MASK

YT = "rtmp://a.rtmp.youtube.com/live2"
COMMANDS = ["add", "list", "show", "edit", "remove", "enable", "disable", "platforms", "profiles", "export", "import"]
CLI_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def add_canary(cli, name="youtube", *extra):
    code, out, err = cli("add", name, "--key-stdin", *extra, input=CANARY_KEY + "\n")
    assert code == 0, err
    return out


def listed(cli, *args) -> dict[str, dict]:
    code, out, err = cli("list", "--json", "--show-keys", *args)
    assert code == 0, err
    return {d["name"]: d for d in json.loads(out)["destinations"]}


# -- version and help ---------------------------------------------------------------------------------------------

def test_version(cli):
    from restream import __version__

    code, out, _ = cli("--version")
    assert code == 0
    assert out.strip() == f"restream {__version__}"


def test_version_and_help_end_to_end(cli):
    code, out, _ = cli("--version", subprocess=True)
    assert code == 0 and out.startswith("restream ")
    code, out, _ = cli("--help", subprocess=True)
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "Example" in out
    assert f"restream {command}" in out


# -- add ----------------------------------------------------------------------------------------------------------

def test_add_a_known_platform_fills_in_its_url(cli, profile_path):
    code, out, err = cli("add", "youtube", "--key", "abcd-efgh-ijkl-mnop")
    assert code == 0, err
    assert out.strip() == f"added youtube -> {YT}"
    doc = tomllib.loads(profile_path().read_text())
    assert doc == {"version": 1, "destinations": [{"name": "youtube", "server_url": YT,
                                                   "stream_key": "abcd-efgh-ijkl-mnop", "enabled": True,
                                                   "platform": "youtube"}]}


def test_add_with_platform_option_url_and_disabled(cli):
    assert cli("add", "main", "--platform", "facebook", "--key", "k1234567890123")[0] == 0
    assert cli("add", "studio", "--url", "srt://203.0.113.7:9000", "--no-key", "--disabled")[0] == 0
    assert cli("add", "tw", "--platform", "twitch", "--key-env", "TWITCH_KEY")[0] == 0
    rows = listed(cli)
    assert rows["main"]["server_url"] == "rtmps://live-api-s.facebook.com:443/rtmp/"
    assert rows["main"]["platform"] == "facebook"
    assert rows["studio"]["enabled"] is False and rows["studio"]["stream_key"] is None
    assert rows["tw"]["stream_key_env"] == "TWITCH_KEY" and rows["tw"]["stream_key"] is None


@pytest.mark.parametrize("args, message", [
    (["nowhere", "--key", "k"], "not a known platform: give the server URL with --url"),
    (["k1", "--platform", "kick", "--key", "k"], "per account or event: give it with --url"),
    (["linkedin", "--key", "k"], "per account or event"),
    (["x", "--platform", "myspace", "--key", "k"], "unknown platform 'myspace'"),
])
def test_add_needs_a_url_when_the_platform_cannot_give_one(cli, args, message, profile_path):
    code, _, err = cli("add", *args)
    assert code == 2
    assert message in err
    assert not profile_path().exists()


@pytest.mark.parametrize("name", ["a b", "x" * 41, "é", "a/b", "../x", "semi;colon", ""])
def test_add_bad_names(cli, name, profile_path):
    code, _, err = cli("add", "--url", "rtmp://h/app", "--key", "k", "--", name)
    assert code == 2
    assert "invalid destination name" in err
    assert "Traceback" not in err
    assert not profile_path().exists()


@pytest.mark.parametrize("url, message", [
    ("http://h/app", "unsupported URL scheme 'http'"),
    ("h/app", "unsupported URL scheme '(none)'"),
    ("rtmp:///app", "no host"),
    ("rtmp://h/my app", "whitespace"),
    ("rtmp://h/app\t", "whitespace"),
    ("rtmp://h:99999/app", "malformed host or port"),
    ("rtmp://h:0/app", "port 0"),
])
def test_add_bad_urls(cli, url, message, profile_path):
    code, _, err = cli("add", "studio", "--url", url, "--key", "k")
    assert code == 2
    assert message in err
    assert not profile_path().exists()


def test_add_refuses_a_key_glued_into_the_url(cli, profile_path):
    key = "abcd-efgh-ijkl-mnop"
    for url in (f"{YT}/{key}", f"{YT}/{key}/"):
        code, _, err = cli("add", "yt", f"--url={url}", "--key-stdin", input=key + "\n")
        assert code == 2
        assert "already ends with the stream key" in err
        assert key not in err
    assert not profile_path().exists()
    # the canary has a space: a URL with it glued on is refused too (whitespace), without echoing it
    code, _, err = cli("add", "yt", f"--url={YT}/{CANARY_KEY}", "--key-stdin", input=CANARY_KEY + "\n")
    assert code == 2


def test_add_duplicate_names_case_insensitive(cli, profile_path):
    add_canary(cli)
    before = profile_path().read_bytes()
    for name in ("youtube", "YouTube", "YOUTUBE"):
        code, _, err = cli("add", name, "--key", "other-key-123456")
        assert code == 2
        assert "already exists" in err and "case-insensitive" in err
    assert profile_path().read_bytes() == before


def test_add_without_a_key_and_without_a_terminal(cli, profile_path):
    code, _, err = cli("add", "youtube", input="")
    assert code == 2
    assert "no stream key given and no terminal" in err
    assert not profile_path().exists()


def test_add_with_an_empty_stdin_key(cli):
    code, _, err = cli("add", "youtube", "--key-stdin", input="\n")
    assert code == 2
    assert "no key on standard input" in err


@pytest.mark.parametrize("opts", [["--key", "k", "--key-env", "V"], ["--key", "k", "--key-stdin"],
                                  ["--key-env", "V", "--key-stdin"], ["--key-env", "V", "--no-key"],
                                  ["--key", "k", "--no-key"]])
def test_conflicting_key_options(cli, opts, profile_path):
    code, _, err = cli("add", "youtube", *opts, input="k\n")
    assert code == 2
    assert "cannot be used together" in err
    assert not profile_path().exists()


def test_bad_key_env_name(cli):
    code, _, err = cli("add", "youtube", "--key-env", "1-BAD")
    assert code == 2
    assert "invalid environment variable name" in err


def test_a_key_given_to_key_env_by_mistake_is_not_echoed(cli, profile_path):
    code, _, err = cli("add", "youtube", "--key-env", CANARY_KEY)  # the cli fixture checks for the canary
    assert code == 2
    assert "not the key itself" in err
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_text(f'version = 1\n[[destinations]]\nname = "yt"\nserver_url = "{YT}"\n'
                    f'stream_key_env = "{CANARY_KEY.replace(chr(92), chr(92) * 2)}"\n', encoding="utf-8")
    code, _, err = cli("list")
    assert code == 3
    assert "destination #1 ('yt'): invalid environment variable name" in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
@pytest.mark.timeout(30)
def test_add_prompts_for_the_key_without_echo_on_a_terminal(profile_path):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "restream", "add", "youtube"], env=dict(os.environ),
                          encoding="utf-8", timeout=20)
    child.expect("Stream key")
    child.sendline(CANARY_KEY)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "CANARY" not in child.before
    assert prof.load("default").get("youtube").stream_key == CANARY_KEY


# -- keys round trip byte-exact -----------------------------------------------------------------------------------

ROUND_TRIP_KEYS = [
    CANARY_KEY,
    "a?b&c=d:e|f[g]h\\i'j",
    "FB-123?s_bl=1&s_ps=1&s_psm=1&s_sw=0&s_vt=api-s&a=AbCdEf",
    "  leading and trailing spaces  ",
    "-starts-with-a-dash",
    "ключ 日本語 🎥 é",
    '"quoted" #hash \\n \\\\',
    "x" * 400,
]


@pytest.mark.parametrize("key", ROUND_TRIP_KEYS)
def test_keys_survive_add_file_show_exactly(cli, key, profile_path):
    code, _, err = cli("add", "fb", "--platform", "facebook", "--key-stdin", input=key + "\n")
    assert code == 0, err
    assert tomllib.loads(profile_path().read_text(encoding="utf-8"))["destinations"][0]["stream_key"] == key
    code, out, _ = cli("show", "fb", "--json", "--show-keys")
    assert code == 0 and json.loads(out)["stream_key"] == key
    code, out, _ = cli("show", "fb", "--show-keys")
    assert code == 0 and re.search(r"^key +" + re.escape(key) + "$", out, re.M)
    code, out, _ = cli("show", "fb")
    assert code == 0 and (key if len(key) > 4 else "\0") not in out


@pytest.mark.parametrize("key", [k for k in ROUND_TRIP_KEYS if not k.startswith("-")])
def test_keys_given_with_key_option_survive(cli, key):
    assert cli("add", "fb", "--platform", "facebook", "--key", key)[0] == 0
    assert listed(cli)["fb"]["stream_key"] == key


def test_canary_round_trip_end_to_end(cli, profile_path):
    code, _, err = cli("add", "youtube", "--key-stdin", input=CANARY_KEY + "\n", subprocess=True)
    assert code == 0, err
    code, out, _ = cli("show", "youtube", "--json", "--show-keys", subprocess=True)
    assert code == 0 and json.loads(out)["stream_key"] == CANARY_KEY
    code, out, _ = cli("list", subprocess=True)
    assert code == 0 and "youtube" in out and MASK + CANARY_KEY[-4:] in out


# -- list and show ------------------------------------------------------------------------------------------------

def test_list_masks_keys(cli):
    add_canary(cli)
    assert cli("add", "short", "--url", "rtmp://h/app", "--key", "abc")[0] == 0
    assert cli("add", "env", "--url", "rtmp://h/app2", "--key-env", "MY_KEY")[0] == 0
    code, out, err = cli("list")
    assert code == 0 and err == ""
    assert "youtube" in out and MASK + CANARY_KEY[-4:] in out
    short_row = next(line for line in out.splitlines() if "short" in line)
    assert short_row.split()[-1] == MASK * 2
    assert "$MY_KEY" in out
    code, out, _ = cli("list", "--json")
    rows = {d["name"]: d for d in json.loads(out)["destinations"]}
    assert rows["youtube"]["stream_key"] == MASK + CANARY_KEY[-4:]
    assert rows["short"]["stream_key"] == MASK * 2
    assert rows["env"]["stream_key"] is None and rows["env"]["stream_key_env"] == "MY_KEY"


def test_list_an_empty_default_profile(cli, profile_path):
    code, out, _ = cli("list")
    assert code == 0
    assert "no destinations yet" in out
    assert not profile_path().exists()


def test_list_warns_when_more_than_five_are_enabled(cli):
    for i in range(6):
        assert cli("add", f"d{i}", "--url", f"rtmp://h{i}/app", "--key", "k")[0] == 0
    code, _, err = cli("list")
    assert code == 0
    assert "6 destinations are enabled; at most 5" in err
    assert cli("disable", "d0")[0] == 0
    assert cli("list")[2] == ""


def test_show(cli):
    add_canary(cli)
    code, out, _ = cli("show", "YouTube")
    assert code == 0
    assert "name" in out and "youtube" in out and YT in out and "YouTube Live" in out
    assert MASK + CANARY_KEY[-4:] in out
    code, out, _ = cli("show", "youtube", "--json")
    assert json.loads(out)["stream_key"] == MASK + CANARY_KEY[-4:]


# -- edit, remove, enable, disable --------------------------------------------------------------------------------

def test_edit_url_key_and_rename(cli):
    add_canary(cli)
    code, out, err = cli("edit", "youtube", "--url", "rtmps://a.rtmps.youtube.com:443/live2")
    assert code == 0, err
    assert listed(cli)["youtube"]["server_url"] == "rtmps://a.rtmps.youtube.com:443/live2"
    assert listed(cli)["youtube"]["stream_key"] == CANARY_KEY
    assert cli("edit", "youtube", "--key-stdin", input="new-key-0123456789\n")[0] == 0
    assert listed(cli)["youtube"]["stream_key"] == "new-key-0123456789"
    assert cli("edit", "youtube", "--key-env", "YT_KEY")[0] == 0
    row = listed(cli)["youtube"]
    assert row["stream_key"] is None and row["stream_key_env"] == "YT_KEY"
    code, out, _ = cli("edit", "YOUTUBE", "--rename", "yt-main")
    assert code == 0 and "updated yt-main" in out
    assert list(listed(cli)) == ["yt-main"]
    assert cli("edit", "yt-main", "--rename", "YT-Main")[0] == 0  # a change of case only
    assert list(listed(cli)) == ["YT-Main"]


def test_edit_bad_input(cli, profile_path):
    add_canary(cli)
    assert cli("add", "twitch", "--key", "tw-key-1234567")[0] == 0
    before = profile_path().read_bytes()
    cases = [
        (["youtube"], 2, "nothing to change"),
        (["youtube", "--rename", "TWITCH"], 2, "already exists"),
        (["youtube", "--rename", "bad name"], 2, "invalid destination name"),
        (["youtube", "--url", "http://h/x"], 2, "unsupported URL scheme"),
        (["youtube", "--key", "k", "--key-env", "V"], 2, "cannot be used together"),
        (["youtube", "--url", f"{YT}/tw-key-1234567", "--key", "tw-key-1234567"], 2, "already ends with"),
        (["nope", "--key", "k"], 3, "no destination named 'nope'"),
    ]
    for args, want_code, message in cases:
        code, _, err = cli("edit", *args)
        assert code == want_code, (args, err)
        assert message in err, (args, err)
    assert profile_path().read_bytes() == before


def test_remove_enable_disable(cli):
    add_canary(cli)
    assert cli("add", "twitch", "--key", "tw-key-1234567")[0] == 0
    code, out, _ = cli("disable", "YouTube")
    assert code == 0 and out.strip() == "disabled YouTube"
    assert listed(cli)["youtube"]["enabled"] is False
    code, out, _ = cli("enable", "youtube")
    assert code == 0 and out.strip() == "enabled youtube"
    assert listed(cli)["youtube"]["enabled"] is True
    code, out, _ = cli("remove", "youtube")
    assert code == 0 and out.strip() == "removed youtube"
    assert list(listed(cli)) == ["twitch"]


@pytest.mark.parametrize("command", ["show", "remove", "enable", "disable"])
def test_missing_destination(cli, command, profile_path):
    add_canary(cli)
    before = profile_path().read_bytes()
    code, _, err = cli(command, "nope")
    assert code == 3
    assert "no destination named 'nope' in profile 'default'" in err
    assert profile_path().read_bytes() == before


# -- profiles: selection, missing, broken files, modes -----------------------------------------------------------

def test_profile_option_and_environment(cli, monkeypatch):
    add_canary(cli)
    assert cli("add", "twitch", "-p", "work", "--key", "tw-key-1234567")[0] == 0
    assert list(listed(cli)) == ["youtube"]
    assert list(listed(cli, "-p", "work")) == ["twitch"]
    assert list(listed(cli, "--profile", "work")) == ["twitch"]
    monkeypatch.setenv("RESTREAM_PROFILE", "work")
    assert list(listed(cli)) == ["twitch"]
    assert list(listed(cli, "-p", "default")) == ["youtube"]  # the option wins over the environment
    code, out, _ = cli("list", "--json", subprocess=True)
    assert code == 0 and json.loads(out)["profile"] == "work"


def test_profiles_command(cli):
    code, out, _ = cli("profiles")
    assert code == 0 and "no profiles yet" in out
    add_canary(cli)
    assert cli("add", "twitch", "-p", "work", "--key", "tw-key-1234567")[0] == 0
    code, out, _ = cli("profiles")
    assert code == 0 and out.split() == ["default", "work"]
    code, out, _ = cli("profiles", "--json")
    assert json.loads(out)["profiles"] == ["default", "work"]


@pytest.mark.parametrize("command", [["list"], ["show", "youtube"], ["export"], ["remove", "youtube"],
                                     ["enable", "youtube"], ["edit", "youtube", "--key", "k"]])
def test_missing_profile(cli, command, monkeypatch):
    add_canary(cli)
    code, _, err = cli(*command, "-p", "other")
    assert code == 3
    assert "'other'" in err and ("not found" in err or "no destination" in err)
    monkeypatch.setenv("RESTREAM_PROFILE", "other")
    assert cli(*command)[0] == 3


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "x" * 41])
def test_bad_profile_names(cli, name, config_dir):
    code, _, err = cli("add", "youtube", "-p", name, "--key", "k")
    assert code == 2
    assert "invalid profile name" in err
    assert not config_dir.exists()


def test_file_and_directory_modes(cli, profile_path, config_dir):
    add_canary(cli)
    assert stat.S_IMODE(profile_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(profile_path().parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700


BROKEN_TOML = (f'version = 1\n\n[[destinations]]\nname = "youtube"\nserver_url = "{YT}"\n'
               f'stream_key = "{CANARY_KEY[:10]}\nenabled = true\n')
ALL_COMMANDS = [["list"], ["show", "youtube"], ["add", "twitch", "--key", "k"], ["edit", "youtube", "--key", "k"],
                ["remove", "youtube"], ["enable", "youtube"], ["disable", "youtube"], ["export"],
                ["import", "-"]]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: c[0])
def test_a_toml_error_names_file_and_line_and_leaves_it_alone(cli, command, profile_path):
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_text(BROKEN_TOML, encoding="utf-8")
    before = path.read_bytes()
    code, _, err = cli(*command, input='[{"serverUrl": "rtmp://h/s"}]')
    assert code == 3
    assert str(path) in err and "line 6" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert path.read_bytes() == before


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: c[0])
def test_an_invalid_entry_is_named_and_the_file_left_alone(cli, command, profile_path):
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_text(f'version = 1\n[[destinations]]\nname = "youtube"\nserver_url = "{YT}"\nstream_key = "k"\n'
                    '[[destinations]]\nname = "studio"\nserver_url = "http://203.0.113.7/live"\n', encoding="utf-8")
    before = path.read_bytes()
    code, _, err = cli(*command, input='[{"serverUrl": "rtmp://h/s"}]')
    assert code == 3
    assert f"{path}: destination #2 ('studio'): unsupported URL scheme 'http'" in err
    assert path.read_bytes() == before


# -- platforms ----------------------------------------------------------------------------------------------------

def test_platforms(cli):
    code, out, _ = cli("platforms")
    assert code == 0
    assert "youtube" in out and "Facebook Live" in out and "RTMPS only" in out
    code, out, _ = cli("platforms", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    for name in ("youtube", "youtube-rtmps", "twitch", "facebook", "kick", "vimeo", "x", "trovo", "linkedin",
                 "apivideo", "apivideo-rtmps"):
        assert name in rows
    assert rows["apivideo"]["url"] == "rtmp://broadcast.api.video/s"
    assert rows["apivideo-rtmps"]["url"] == "rtmps://broadcast.api.video:1936/s"
    assert rows["facebook"]["url"].startswith("rtmps://")
    assert rows["kick"]["url"].startswith("(per account")


# -- export and import --------------------------------------------------------------------------------------------

def test_apivideo_import_export_round_trip(cli, tmp_path):
    doc = {"restreams": [{"name": "youtube", "serverUrl": YT, "streamKey": CANARY_KEY},
                         {"name": "twitch", "serverUrl": "rtmp://ingest.global-contribute.live-video.net/app",
                          "streamKey": "live_123_abcdefghijklmnop"}]}
    src = tmp_path / "restreams.json"
    src.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    code, out, err = cli("import", str(src))
    assert code == 0, err
    assert "imported 2 destination(s); profile 'default' now has 2" in out
    code, out, _ = cli("export", "--format", "apivideo", "--show-keys")
    assert code == 0 and json.loads(out) == doc
    # the bare-list form, into another profile
    code, _, err = cli("import", "-", "-p", "other", input=json.dumps(doc["restreams"]))
    assert code == 0, err
    code, out, _ = cli("export", "--format", "apivideo", "--show-keys", "-p", "other")
    assert json.loads(out) == doc


def test_export_without_show_keys_leaves_keys_out_and_says_so(cli):
    add_canary(cli)
    code, out, err = cli("export", "--format", "apivideo")
    assert code == 0
    assert json.loads(out) == {"restreams": [{"name": "youtube", "serverUrl": YT}]}
    assert "1 stream key(s) left out" in err and "--show-keys" in err
    code, out, err = cli("export")
    assert code == 0
    assert "stream_key" not in out and "left out" in out and "left out" in err


def test_toml_export_import_round_trip(cli, tmp_path):
    add_canary(cli)
    assert cli("add", "studio", "--url", "srt://203.0.113.7:9000", "--key-env", "STUDIO_KEY", "--disabled")[0] == 0
    code, out, _ = cli("export", "--show-keys")
    assert code == 0
    backup = tmp_path / "backup.toml"
    backup.write_text(out, encoding="utf-8")
    assert cli("import", str(backup), "-p", "copy")[0] == 0
    assert listed(cli, "-p", "copy") == listed(cli)


@pytest.mark.parametrize("content", ['[{"serverUrl": "rtmp://h/s", "streamKey": "abc"}]',
                                     'version = 1\n[[destinations]]\nname = "restream-1"\n'
                                     'server_url = "rtmp://h/s"\nstream_key = "abc"\n'], ids=["json", "toml"])
def test_import_a_file_with_a_byte_order_mark(cli, tmp_path, content):
    src = tmp_path / "bom.txt"
    src.write_bytes(b"\xef\xbb\xbf" + content.encode())
    code, _, err = cli("import", str(src))
    assert code == 0, err
    assert listed(cli)["restream-1"]["stream_key"] == "abc"


def test_import_refuses_duplicates_and_replace_replaces(cli, tmp_path, profile_path):
    add_canary(cli)
    src = tmp_path / "r.json"
    src.write_text(json.dumps([{"name": "YouTube", "serverUrl": YT, "streamKey": "other-key-12345"}]))
    before = profile_path().read_bytes()
    code, _, err = cli("import", str(src))
    assert code == 2 and "already exists" in err
    assert profile_path().read_bytes() == before
    code, out, _ = cli("import", str(src), "--replace")
    assert code == 0 and "now has 1" in out
    assert listed(cli)["YouTube"]["stream_key"] == "other-key-12345"


@pytest.mark.parametrize("content, message", [
    ('{"restreams": [', "not valid JSON"),
    ('[{"name": "a"}]', "needs at least 'serverUrl'"),
    ('[{"serverUrl": "http://h/s"}]', "unsupported URL scheme"),
    ('version = 1\n[[destinations]]\nname = "a"\n', "missing 'server_url'"),
])
def test_import_bad_files(cli, tmp_path, content, message, profile_path):
    src = tmp_path / "in.json"
    src.write_text(content)
    code, _, err = cli("import", str(src))
    assert code == 2
    assert message in err
    assert not profile_path().exists()
    code, _, err = cli("import", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err


def test_export_unknown_format(cli):
    code, _, err = cli("export", "--format", "yaml")
    assert code == 2 and "unknown export format" in err


# -- property: the CLI accepts valid input and refuses the rest cleanly -------------------------------------------

@CLI_FUZZ
@given(name=st.text(max_size=45), url=st.text(max_size=50), key=st.text(min_size=1, max_size=30))
def test_cli_add_never_tracebacks(cli, name, url, key):
    try:
        prof.make_destination(name, url, key)
        valid = True
    except prof.UsageError:
        valid = False
    code, _, err = cli("add", f"--url={url}", f"--key={key}", "--", name)
    assert "Traceback" not in err
    if valid:
        assert code in (0, 2), err  # 2: the same name was already added by an earlier example
        assert code == 0 or "already exists" in err
    else:
        assert code == 2, err
        assert err.startswith("restream: error: ")


# -- choosing what goes live: --only / --skip ----------------------------------------------------------------------

def _three(cli) -> None:
    for i, name in enumerate("abc"):
        code, _, err = cli("add", name, "--url", f"rtmp://127.0.0.1:{20000 + i}/live", "--key", f"key-{name}-0123")
        assert code == 0, err
    assert cli("disable", "c")[0] == 0


@pytest.mark.parametrize("args, chosen", [
    ((), ["a", "b"]),                 # the enabled ones
    (("--only", "b"), ["b"]),
    (("--only", "c,a"), ["c", "a"]),  # by name, enabled or not, in the order given
    (("--only", "a,a"), ["a"]),
    (("--skip", "a"), ["b"]),
    (("--skip", "c"), ["a", "b"]),    # skipping a disabled one changes nothing
])
def test_only_and_skip_choose_the_destinations(cli, args, chosen):
    # mutation caught: selection.select ignoring only/skip (the cases with --only/--skip)
    from restream.selection import select

    _three(cli)
    only = args[1] if args[:1] == ("--only",) else None
    skip = args[1] if args[:1] == ("--skip",) else None
    assert [d.name for d in select(prof.load("default"), only, skip)] == chosen


@pytest.mark.parametrize("args, chosen", [(("--only", "c,a"), ["c", "a"]), (("--skip", "a"), ["b"])])
def test_go_dry_run_honours_only_and_skip(cli, args, chosen):
    # mutation caught: `go` not passing --only/--skip on to selection.select (cli.go)
    _three(cli)
    code, out, err = cli("go", "--test-pattern", "--dry-run", *args)
    assert code == 0, err
    named = [line.split(":")[0][2:] for line in out.splitlines() if line.startswith("# ") and " key " in line]
    assert named == chosen, out


@pytest.mark.parametrize("args, message, exit_code", [
    (("--only", "ghost"), "no destination named 'ghost'", 3),  # an unknown name is a profile error everywhere
    (("--skip", "ghost"), "no destination named 'ghost'", 3),
    (("--only", "a", "--skip", "b"), "cannot be used together", 2),
    (("--only", ","), "no destination selected", 2),
])
def test_only_and_skip_errors(cli, args, message, exit_code):
    _three(cli)
    code, out, err = cli("go", "--test-pattern", "--dry-run", *args)
    assert code == exit_code, (code, out, err)
    assert message in err, err


# -- short keys are masked -----------------------------------------------------------------------------------------

def test_short_srt_key_is_masked_in_the_dry_run(cli):
    # mutation caught: redact.Redactor skipping secrets shorter than redact.SHORT (8)
    code, _, err = cli("add", "s", "--url", "srt://127.0.0.1:9000?mode=caller", "--key", "Q7z")
    assert code == 0, err
    code, out, err = cli("go", "--test-pattern", "--dry-run")
    assert code == 0, err
    assert "Q7z" not in out + err, out  # the SRT key travels in ffmpeg's URL: the dry run must mask it
    assert "streamid\\=" + MASK in out, out  # tee-escaped in the spec, masked
    code, out, _ = cli("go", "--test-pattern", "--dry-run", "--show-keys")
    assert code == 0 and "Q7z" in out  # control: the key is in that command line


# -- exit codes of go: 3 for the profile, 4 for ffmpeg -------------------------------------------------------------

def test_go_on_a_broken_profile_exits_3(cli, profile_path):
    # mutation caught: exit_code_for mapping ProfileError to anything but 3
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_text('version = 1\n[[destinations]]\nname = "a"\nserver_url = "rtmp://h/x\n')
    code, out, err = cli("go", "--test-pattern", "--dry-run")
    assert code == 3, (code, out, err)
    assert str(path) in err and "line 4" in err, err
    code, out, err = cli("go", "--test-pattern", "--dry-run", "-p", "nosuchprofile")
    assert code == 3 and "nosuchprofile" in err, (code, err)


@pytest.mark.parametrize("what", ["not-ffmpeg", "not-executable"])
def test_go_with_an_unusable_ffmpeg_exits_4(cli, tmp_path, what):
    # mutation caught: discover accepting a binary without an ffmpeg version line, or exit_code_for(FFmpegError) != 4
    assert cli("add", "a", "--url", "rtmp://127.0.0.1:20000/live", "--key", "key-a-0123")[0] == 0
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'this is not ffmpeg'\n")
    fake.chmod(0o755 if what == "not-ffmpeg" else 0o644)
    code, out, err = cli("go", "--test-pattern", "--dry-run", "--ffmpeg", str(fake))
    assert code == 4, (code, out, err)
    assert str(fake) in err, err
