"""The fast path (fastpath.py: list, show and the root help without Typer) prints exactly what the Typer app
prints: stdout, stderr and exit code, byte for byte, over a matrix of profiles, options and environments.

Each case runs both as child processes: ``python -m restream ARGS`` (the entry point: fast path first) and the
Typer app alone (``restream.cli.main``). A case the fast path declines must still answer the same (through Typer).

The stored root help (src/restream/helptext.py) is regenerated with ``python tests/test_fastpath.py --write-help``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CANARY_KEY

SRC = Path(__file__).resolve().parent.parent / "src"
TYPER_PATH = "import sys; sys.argv[0] = 'restream'; from restream.cli import main; main()"
FAST_ONLY = ("import sys; from restream.fastpath import serve; code = serve(sys.argv[1:]); "
             "sys.exit(99 if code is None else code)")


def _run(code_or_module: list[str], args, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([sys.executable, *code_or_module, *args], capture_output=True, env=env, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def both(args, env: dict[str, str]) -> tuple[tuple, tuple]:
    return _run(["-m", "restream"], args, env), _run(["-c", TYPER_PATH], args, env)


def fast_only(args, env: dict[str, str]) -> int:
    """99 when the fast path declines (and prints nothing)."""
    return _run(["-c", FAST_ONLY], args, env)[0]


@pytest.fixture
def env(config_dir: Path) -> dict[str, str]:
    e = {**os.environ, "RESTREAM_CONFIG_DIR": str(config_dir), "PYTHONIOENCODING": "utf-8"}
    for var in ("RESTREAM_PROFILE", "_RESTREAM_COMPLETE", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"):
        e.pop(var, None)
    return e


def write_profile(config_dir: Path, text: str, name: str = "default") -> None:
    folder = config_dir / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(text, encoding="utf-8")


def dest(name: str, url: str = "rtmp://a.rtmp.youtube.com/live2", **fields) -> str:
    lines = ["[[destinations]]", f"name = {json.dumps(name)}", f"server_url = {json.dumps(url)}"]
    lines += [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


SEVERAL = "version = 1\n" + "".join([
    dest("youtube", stream_key=CANARY_KEY, platform="youtube"),
    dest("twitch", "rtmp://ingest.global-contribute.live-video.net/app", stream_key_env="TWITCH_KEY"),
    dest("off", "rtmps://live-api-s.facebook.com:443/rtmp/", stream_key="fb-0123456789", enabled=False),
    dest("studio", "srt://203.0.113.7:9000"),
    dest("filed", "rtmp://example.com/live", stream_key_file="/run/keys/filed"),
    dest("cmd", "rtmp://example.com/live", stream_key_cmd=["pass", "show", "cmd"]),
    dest("backed", "rtmp://a.rtmp.youtube.com/live2", stream_key="bk-0123456789",
         backup_url="rtmp://b.rtmp.youtube.com/live2?backup=1", backup="both"),
    dest("vertical", "rtmp://example.com/live", stream_key="v-0123456789", video_bitrate=3000, size="720x1280",
         crop="9:16", fps=30),
    dest("cred", "rtmp://user:secret@example.com/live", stream_key="c-0123456789"),
])
SIX_ON = "version = 1\n" + "".join(dest(f"d{i}", stream_key=f"key-{i}-0123456789") for i in range(6))

PROFILES = {
    "none": None,
    "empty": "version = 1\n",
    "several": SEVERAL,
    "six-on": SIX_ON,
    "corrupt": "version = 1\n[[destinations]\nname = 'x'\n",
    "invalid": "version = 1\n" + dest("bad name!", "http://example.com/"),
    "not-utf8": b"version = 1\n# \xff\xfe\n",
}

ARGS = [
    ["list"], ["list", "--json"], ["list", "--show-keys"], ["list", "--json", "--show-keys"],
    ["list", "-p", "default"], ["list", "--profile", "other"], ["list", "--profile=default"], ["list", "-p", "bad/name"],
    ["show", "youtube"], ["show", "youtube", "--json"], ["show", "--json", "twitch"], ["show", "off"],
    ["show", "filed"], ["show", "cmd", "--show-keys"], ["show", "backed"], ["show", "vertical", "--json"],
    ["show", "cred"], ["show", "studio"], ["show", "nope"], ["show", "youtube", "--show-keys", "--json"],
    ["show", "youtube", "-p", "other"],
]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_list_and_show_print_what_the_typer_app_prints(profile, env, config_dir):
    text = PROFILES[profile]
    if text is not None:
        if isinstance(text, bytes):
            (config_dir / "profiles").mkdir(parents=True)
            (config_dir / "profiles" / "default.toml").write_bytes(text)
        else:
            write_profile(config_dir, text)
    write_profile(config_dir, "version = 1\n" + dest("youtube", stream_key="other-0123456789"), name="other")
    for args in ARGS:
        fast, typer_path = both(args, env)
        assert fast == typer_path, f"restream {' '.join(args)} (profile {profile})"
        if "--show-keys" not in args:
            assert CANARY_KEY.encode() not in fast[1] + fast[2]


def test_the_fast_path_serves_what_it_claims(env, config_dir):
    """Not a silent fall-through: these are answered without Typer."""
    write_profile(config_dir, SEVERAL)
    for args in (["list"], ["list", "--json", "-p", "default"], ["show", "youtube"], ["show", "nope"],
                 ["--help"], ["-h"], []):
        assert fast_only(args, env) != 99, args


DECLINED = [
    ["list", "extra"], ["list", "--json", "--json"], ["list", "-p"], ["list", "-pdefault"], ["list", "--"],
    ["list", "--help"], ["list", "-p", "--json"], ["list", "--profile="], ["list", "--jso"], ["show"],
    ["show", "a", "b"], ["show", "-"], ["show", "--help"], ["--version"], ["--help", "list"], ["status"],
    ["list", "-p", "default", "--profile", "default"], ["show", ""], ["platforms"],
]


@pytest.mark.parametrize("args", DECLINED, ids=" ".join)
def test_what_the_fast_path_declines_goes_to_typer_unchanged(args, env, config_dir):
    write_profile(config_dir, SEVERAL)
    assert fast_only(args, env) == 99
    fast, typer_path = both(args, env)
    assert fast == typer_path


@pytest.mark.parametrize("extra", [
    {"RESTREAM_PROFILE": "other"}, {"RESTREAM_PROFILE": ""}, {"RESTREAM_PROFILE": "../x"},
    {"_RESTREAM_COMPLETE": "bash_complete", "COMP_WORDS": "restream li", "COMP_CWORD": "1"},
    {"PYTHONIOENCODING": "ascii"}, {"PYTHONIOENCODING": "latin-1"}, {"COLUMNS": "60"}, {"COLUMNS": "79"},
    {"COLUMNS": "80"}, {"COLUMNS": "250"}, {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
])
def test_environments(extra, env, config_dir):
    write_profile(config_dir, SEVERAL)
    write_profile(config_dir, "version = 1\n" + dest("youtube", stream_key="other-0123456789"), name="other")
    env = {**env, **extra}
    for args in (["list"], ["show", "youtube"], ["show", "youtube", "--json"], ["--help"], ["-h"], []):
        fast, typer_path = both(args, env)
        assert fast == typer_path, (args, extra)


def test_the_config_dir_from_the_platform(env, tmp_path):
    """Without RESTREAM_CONFIG_DIR (platformdirs: XDG_CONFIG_HOME)."""
    env = {k: v for k, v in env.items() if k != "RESTREAM_CONFIG_DIR"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    write_profile(tmp_path / "xdg" / "restream", SEVERAL)
    for args in (["list"], ["show", "twitch"]):
        fast, typer_path = both(args, env)
        assert fast == typer_path and fast[0] == 0 and b"twitch" in fast[1]


def test_escape_sequences_in_a_profile_go_to_typer(env, config_dir):
    """Click strips ANSI escapes off a pipe; the fast path does not copy that, it declines."""
    write_profile(config_dir, "version = 1\n" + dest("a", "rtmp://example.com/li\u001b[31mve", stream_key="k-0123456789"))
    fast, typer_path = both(["list"], env)
    assert fast == typer_path


@pytest.mark.parametrize("columns", [80, 60])
def test_on_a_terminal(columns, env, config_dir):
    """On a terminal (stdout and stderr one pty: their order shows) the two paths print the same."""
    pexpect = pytest.importorskip("pexpect")
    write_profile(config_dir, SIX_ON)
    env = {k: v for k, v in env.items() if k != "COLUMNS"}

    def on_a_pty(argv) -> tuple[int, bytes]:
        child = pexpect.spawn(sys.executable, argv, env=env, dimensions=(24, columns), timeout=60)
        child.expect(pexpect.EOF)
        child.close()
        return child.exitstatus, child.before

    for args in (["list"], ["show", "d1"], ["--help"], []):
        assert on_a_pty(["-m", "restream", *args]) == on_a_pty(["-c", TYPER_PATH, *args]), args


@pytest.mark.parametrize("args", [["list"], ["show", "youtube"], ["--help"], ["-h"], [], ["show", "nope"]],
                         ids=" ".join)
def test_the_fast_path_imports_no_typer_click_rich_or_asyncio(args, env, config_dir):
    """Nor tomllib (quicktoml reads what restream wrote) or dataclasses (with inspect): ~30 ms of 80 (issue 16)."""
    write_profile(config_dir, SEVERAL)
    script = ("import atexit, sys\n"
              "def report():\n"
              "    print('HEAVY', sorted(m for m in ('typer', 'click', 'rich', 'asyncio', 'ffmpeg', 'subprocess',"
              " 'tomllib', 'dataclasses', 'inspect', 'typing') if m in sys.modules), file=sys.stderr)\n"
              "atexit.register(report)\n"
              "from restream.__main__ import main\n"
              "main()\n")
    code, _, err = _run(["-c", script], args, env)
    assert err.decode().splitlines()[-1] == "HEAVY []"


def render_root_help() -> str:
    """The root help as the Typer app prints it today, at 80 columns (the widest Click renders)."""
    env = {k: v for k, v in os.environ.items() if k not in ("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION",)}
    env.update(COLUMNS="80", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-c", TYPER_PATH, "--help"], capture_output=True, env=env, timeout=60,
                          check=True)
    return proc.stdout.decode("utf-8").removesuffix("\n")


def test_the_stored_root_help_is_what_click_renders():
    """With the Click and Typer it was rendered with, the stored help is what they render now (a changed command
    help fails here until it is written again); with any other versions (a newer release on PyPI), the fast path
    never serves it: `--help` goes to the Typer app, so the stored text cannot be shown stale."""
    from importlib.metadata import version

    from restream import fastpath, helptext

    if helptext.RENDERED_WITH == (("click", version("click")), ("typer", version("typer"))):
        assert helptext.ROOT_HELP == render_root_help(), "stale: python tests/test_fastpath.py --write-help"
    else:
        assert fastpath._help(["--help"]) is None, "stored help served with other Click/Typer versions"
        print(f"stored help rendered with {helptext.RENDERED_WITH}, installed click {version('click')}, typer "
              f"{version('typer')}: the fast path declines --help (python tests/test_fastpath.py --write-help)")


def test_the_stored_help_is_not_served_with_other_click_or_typer_versions(monkeypatch):
    from restream import fastpath, helptext

    monkeypatch.setattr(helptext, "RENDERED_WITH", (("click", "0.0.1"), ("typer", helptext.RENDERED_WITH[1][1])))
    assert fastpath._help(["--help"]) is None and fastpath._help([]) is None


def _literal(text: str) -> str:
    """A triple-quoted literal that reads like the help itself (repr() where that cannot be exact)."""
    if "\\" in text or '"""' in text or text.endswith('"') or any(not c.isprintable() and c != "\n" for c in text):
        return repr(text)
    return '"""\\\n' + text + '"""'


def write_help() -> None:
    from importlib.metadata import version

    text = render_root_help()
    target = SRC / "restream" / "helptext.py"
    target.write_text(
        '"""The root help (`restream --help`) as Click renders it, for the fast path (fastpath.py) to print without\n'
        "importing Typer. Generated by `python tests/test_fastpath.py --write-help`; tests/test_fastpath.py fails when\n"
        'it differs from what the Typer app renders now. Served only with these Click and Typer versions installed and\n'
        'a terminal at least MIN_COLUMNS wide (Click wraps help to min(columns, 80) - 2)."""\n\n'
        f"RENDERED_WITH = (('click', {version('click')!r}), ('typer', {version('typer')!r}))\n"
        "MIN_COLUMNS = 80\n"
        f"ROOT_HELP = {_literal(text)}\n", encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-help"]:
        write_help()
    else:
        sys.exit("usage: python tests/test_fastpath.py --write-help")
