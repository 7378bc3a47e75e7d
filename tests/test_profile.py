"""Library-level tests: validation, TOML round trips, atomic and locked writes, interchange, redaction."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CANARY_KEY
from restream import interchange, paths
from restream import profile as prof
from restream.errors import NotFoundError, ProfileError, UsageError
from restream.redact import MASK, Redactor, backslash_escape, spellings

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# -- strategies ---------------------------------------------------------------------------------------------------

valid_names = st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
valid_hosts = st.one_of(st.lists(_label, min_size=1, max_size=4).map(".".join),
                        st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))))
valid_urls = st.builds(
    lambda scheme, host, port, segs: f"{scheme}://{host}{'' if port is None else f':{port}'}/{'/'.join(segs)}",
    st.sampled_from(["rtmp", "rtmps", "srt", "RTMP"]), valid_hosts, st.none() | st.integers(1, 65535),
    st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,12}", fullmatch=True), max_size=3))
# str.isprintable(): no Other (Cc Cf Cs Co Cn) and no Separator except the ASCII space.
_printable = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")) | st.just(" ")
valid_keys = st.text(_printable, min_size=1, max_size=80)

NASTY_KEYS = [
    CANARY_KEY,
    "a?b&c=d:e|f[g]h\\i'j",
    "FB-123?s_bl=1&s_ps=1&s_psm=1&s_sw=0&s_vt=api-s&a=AbCdEf",
    "  leading and trailing  ",
    "-starts-with-a-dash",
    "ключ 日本語 🎥 é",
    '"double" #hash \\n not-a-newline',
    "x" * 500,
]


def _dest(name="youtube", url="rtmp://a.rtmp.youtube.com/live2", key="abcd-efgh-ijkl-mnop", **kw):
    return prof.make_destination(name, url, key, **kw)


def _roundtrip(dests) -> tuple[prof.Destination, ...]:
    p = prof.Profile("t", Path("/nonexistent/t.toml"), tuple(dests))
    return prof.parse(prof.dumps(p), "t.toml")


# -- validation ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a b", "x" * 41, "é", "a/b", "../x", "a:b", "tab\there", "semi;colon"])
def test_bad_names_are_usage_errors(name):
    with pytest.raises(UsageError, match="invalid destination name"):
        prof.validate_name(name)


@pytest.mark.parametrize("name", ["a", "x" * 40, "You_Tube-2.backup", "..."])
def test_good_names(name):
    assert prof.validate_name(name) == name


@pytest.mark.parametrize("url, message", [
    ("http://example.com/live", "unsupported URL scheme"),
    ("example.com/live", "unsupported URL scheme"),
    ("rtmp:///live", "no host"),
    ("rtmp://:1935/live", "no host"),
    ("rtmp://host/live now", "whitespace"),
    (" rtmp://host/live", "whitespace"),
    ("rtmp://host/live\n", "whitespace"),
    ("rtmp://host:0/live", "port 0"),
    ("rtmp://host:99999/live", "malformed host or port"),
    ("rtmp://host:abc/live", "malformed host or port"),
    ("rtmp://[::1/live", "malformed host or port"),
    ("", "empty"),
])
def test_bad_urls_are_usage_errors(url, message):
    with pytest.raises(UsageError, match=message):
        prof.validate_url(url)


def test_url_errors_do_not_echo_credentials():
    with pytest.raises(UsageError) as info:
        prof.validate_url("rtmp://user:s3cret@host\uff0fx/live")
    assert "s3cret" not in str(info.value)


def test_key_glued_into_url_is_refused():
    with pytest.raises(UsageError, match="already ends with the stream key"):
        _dest(url="rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop")
    with pytest.raises(UsageError, match="already ends with the stream key"):
        _dest(url="rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop/")
    assert _dest(url="rtmp://a.rtmp.youtube.com/live2").stream_key == "abcd-efgh-ijkl-mnop"


@pytest.mark.parametrize("key, message", [("", "empty"), ("a\tb", "control"), ("a\nb", "control"),
                                          ("a\x00b", "control"), ("a\u2028b", "control"), (7, "string")])
def test_bad_keys(key, message):
    with pytest.raises(UsageError, match=message):
        prof.validate_key(key)


def test_key_and_key_env_are_exclusive():
    with pytest.raises(UsageError, match="not both"):
        prof.make_destination("a", "rtmp://h/app", "k", "VAR")
    with pytest.raises(UsageError, match="environment variable"):
        prof.make_destination("a", "rtmp://h/app", None, "1BAD")


def test_mask_key():
    assert prof.mask_key("abcdefghijklmnop") == MASK + "mnop"
    assert prof.mask_key("short") == MASK * 2
    assert prof.mask_key(None) == ""
    assert CANARY_KEY[:-4] not in prof.mask_key(CANARY_KEY)


def test_resolve_key_from_environment():
    d = prof.make_destination("a", "rtmp://h/app", stream_key_env="YT_KEY")
    assert d.key_source() == "$YT_KEY"
    assert prof.resolve_key(d, {"YT_KEY": CANARY_KEY}) == CANARY_KEY
    with pytest.raises(ProfileError, match=r"'a': its key variable \$YT_KEY is not set"):
        prof.resolve_key(d, {})


# -- TOML round trips (examples and properties) ------------------------------------------------------------------

@pytest.mark.parametrize("key", NASTY_KEYS)
def test_nasty_keys_round_trip_through_toml(key):
    d = _dest(key=key)
    assert _roundtrip([d]) == (d,)


def test_every_field_round_trips():
    dests = [_dest(enabled=False, platform="youtube", ca_file="/etc/ssl/ca.pem"),
             prof.make_destination("tw", "rtmps://ingest.example:443/app", stream_key_env="TW_KEY"),
             prof.make_destination("nokey", "srt://10.0.0.1:9000?streamid=x")]
    assert _roundtrip(dests) == tuple(dests)


@FUZZ
@given(name=valid_names, url=valid_urls, key=valid_keys, enabled=st.booleans())
def test_valid_values_round_trip(name, url, key, enabled):
    if prof.key_in_url(url, key):
        with pytest.raises(UsageError):
            prof.make_destination(name, url, key)
        return
    d = prof.make_destination(name, url, key, enabled=enabled)
    assert _roundtrip([d]) == (d,)


@FUZZ
@given(name=st.text(max_size=45), url=st.text(max_size=60), key=st.text(max_size=30) | st.none())
def test_arbitrary_values_are_accepted_or_refused_cleanly(name, url, key):
    try:
        d = prof.make_destination(name, url, key)
    except UsageError:
        return
    assert _roundtrip([d]) == (d,)


_toml_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False)


@FUZZ
@given(st.dictionaries(st.sampled_from(list(prof._FIELDS) + ["extra"]), _toml_scalars.filter(lambda v: v is not None)))
def test_arbitrary_entries_give_profile_errors_only(item):
    try:
        prof.from_document({"version": 1, "destinations": [item]}, "f.toml")
    except ProfileError as exc:
        assert str(exc).startswith("f.toml: ")


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text_gives_profile_errors_only(text):
    # mutation caught: parse letting a TOMLDecodeError/KeyError/TypeError escape, or a message without the file
    try:
        p = prof.parse(text, "f.toml")  # the destinations
    except ProfileError as exc:
        assert str(exc).startswith("f.toml"), exc  # names the file
        assert "\n" not in str(exc)
    else:
        assert isinstance(p, tuple) and all(isinstance(d, prof.Destination) for d in p)


@pytest.mark.parametrize("text, message", [
    ('version = 1\n[[destinations]]\nname = "a"\nserver_url = "rtmp://h/x\n', "line 4"),
    ('version = 2\n', "unsupported version"),
    ('version = true\n', "unsupported version"),
    ('version = 1\nstuff = 1\n', "unknown top-level"),
    ('version = 1\ndestinations = 3\n', "array of tables"),
    ('version = 1\n[[destinations]]\nname = "a"\n', "destination #1 ('a'): missing 'server_url'"),
    ('version = 1\n[[destinations]]\nname = "a"\nserver_url = "http://h/x"\n', "destination #1 ('a'): unsupported"),
    ('version = 1\n[[destinations]]\nname = "a"\nserver_url = "rtmp://h/x"\nkey = "k"\n', "unknown key(s): key"),
    ('version = 1\n[[destinations]]\nname = "a"\nserver_url = "rtmp://h/x"\n'
     '[[destinations]]\nname = "A"\nserver_url = "rtmp://h/y"\n', "destination #2 ('A'): duplicate name"),
    ('version = 1\n[[destinations]]\nname = "a"\nserver_url = "rtmp://h/x"\nenabled = "yes"\n', "true or false"),
])
def test_bad_documents_name_the_file_and_the_line_or_entry(text, message):
    with pytest.raises(ProfileError) as info:
        prof.parse(text, "/cfg/profiles/default.toml")
    assert str(info.value).startswith("/cfg/profiles/default.toml: ")
    assert message in str(info.value)


# -- disk: paths, modes, atomicity, locking ----------------------------------------------------------------------

def test_config_dir_comes_from_the_environment(config_dir):
    assert paths.config_dir() == config_dir
    assert paths.profile_path("work") == config_dir / "profiles" / "work.toml"


def test_missing_profile(config_dir):
    p = prof.load("default")
    assert p.destinations == () and not p.exists
    with pytest.raises(NotFoundError, match="profile 'other' not found"):
        prof.load("other", must_exist=True)


@pytest.mark.parametrize("name", ["", ".hidden", "../escape", "a/b", "x" * 41])
def test_bad_profile_names(name):
    with pytest.raises(UsageError):
        prof.load(name)


def test_saved_file_is_0600_in_a_0700_directory(config_dir, profile_path):
    prof.update("default", lambda p: p.added(_dest()))
    path = profile_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert tomllib.loads(path.read_text())["destinations"][0]["stream_key"] == "abcd-efgh-ijkl-mnop"


def test_update_leaves_the_file_untouched_when_the_change_fails(profile_path):
    prof.update("default", lambda p: p.added(_dest()))
    before = profile_path().read_bytes()
    with pytest.raises(UsageError):
        prof.update("default", lambda p: p.added(_dest(name="YOUTUBE")))
    with pytest.raises(NotFoundError):
        prof.update("default", lambda p: p.removed("nope"))
    assert profile_path().read_bytes() == before


def test_unreadable_and_non_utf8_files(profile_path):
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b'version = 1\n# \xff\xfe\n')
    with pytest.raises(ProfileError, match="not UTF-8"):
        prof.load("default")


def _big_profile(n: int, tag: str) -> prof.Profile:
    dests = tuple(prof.make_destination(f"d{i}", f"rtmp://host{i}.example/{tag}", f"{tag}-{CANARY_KEY}-{i}")
                  for i in range(n))
    return prof.Profile("big", paths.profile_path("big"), dests)


_SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from restream import profile as prof
    path = Path(sys.argv[1])
    texts = [Path(sys.argv[2]).read_text(), Path(sys.argv[3]).read_text()]
    i = 0
    while True:
        prof.atomic_write(path, texts[i % 2])
        if i == 0:
            print("ready", flush=True)
        i += 1
""")


@pytest.mark.timeout(60)
def test_a_save_killed_midway_leaves_the_old_or_the_new_file(tmp_path, profile_path):
    old, new = _big_profile(4000, "old"), _big_profile(4000, "new")
    old_text, new_text = prof.dumps(old), prof.dumps(new)
    (tmp_path / "a.toml").write_text(old_text)
    (tmp_path / "b.toml").write_text(new_text)
    prof.save(old)
    path = profile_path("big")
    rng = random.Random(1234)
    leaked = 0
    for _ in range(8):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path), str(tmp_path / "a.toml"),
                                  str(tmp_path / "b.toml")], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
            child.stdout.close()
        text = path.read_text()
        assert text in (old_text, new_text), f"truncated or mixed file: {len(text)} chars"
        assert prof.load("big").destinations in (old.destinations, new.destinations)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        leaked += len(list(path.parent.glob("*.tmp")))
    # Killed saves may leave temp files; they never show up as profiles, and the next edit removes them.
    assert prof.list_profiles() == ["big"]
    prof.update("big", lambda p: p.removed("d0"))
    assert [f.name for f in path.parent.iterdir() if f.name.endswith(".tmp")] == []
    print(f"temp files left by killed saves: {leaked}")


@pytest.mark.timeout(90)
def test_twenty_concurrent_adds_all_land(profile_path):
    procs = [subprocess.Popen([sys.executable, "-m", "restream", "add", f"dest{i}", "--url",
                               f"rtmp://host{i}.example/app", "--key", f"key-{i}-{'x' * 12}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(20)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert [code for code, _ in results] == [0] * 20, results
    names = {d.name for d in prof.load("default").destinations}
    assert names == {f"dest{i}" for i in range(20)}


def test_lock_times_out_with_a_profile_error():
    with prof.locked("default"):
        with pytest.raises(ProfileError, match="being edited by another command"):
            with prof.locked("default", timeout=0.1):
                pass


# -- interchange --------------------------------------------------------------------------------------------------

def _profile(*dests) -> prof.Profile:
    return prof.Profile("default", paths.profile_path("default"), tuple(dests))


def test_apivideo_export_import_round_trip():
    p = _profile(_dest(key=CANARY_KEY), _dest("studio", "rtmps://broadcast.api.video:1936/s", "k" * 20))
    text, left_out = interchange.export(p, "apivideo", include_keys=True)
    assert left_out == 0
    doc = json.loads(text)
    assert doc == {"restreams": [
        {"name": "youtube", "serverUrl": "rtmp://a.rtmp.youtube.com/live2", "streamKey": CANARY_KEY},
        {"name": "studio", "serverUrl": "rtmps://broadcast.api.video:1936/s", "streamKey": "k" * 20}]}
    assert interchange.parse_import(text, "x.json") == p.destinations
    assert interchange.parse_import(json.dumps(doc["restreams"]), "x.json") == p.destinations


def test_apivideo_export_without_keys_leaves_them_out():
    p = _profile(_dest(key=CANARY_KEY), prof.make_destination("env", "rtmp://h/app", stream_key_env="K"))
    text, left_out = interchange.export(p, "apivideo", include_keys=False)
    assert left_out == 1
    assert CANARY_KEY not in text and "streamKey" not in text


def test_toml_export_import_round_trip():
    p = _profile(_dest(key=CANARY_KEY, enabled=False), prof.make_destination("e", "srt://h:9000", stream_key_env="K"))
    text, _ = interchange.export(p, "toml", include_keys=True)
    assert interchange.parse_import(text, "b.toml") == p.destinations
    text, left_out = interchange.export(p, "toml", include_keys=False)
    assert left_out == 1 and CANARY_KEY not in text and text.startswith("# 1 stream key(s) left out")


def test_apivideo_import_sanitizes_names_and_refuses_bad_items():
    got = interchange.parse_import('[{"name": "My Stream!", "serverUrl": "rtmp://h/s", "streamKey": "k"},'
                                   ' {"serverUrl": "rtmp://h/s"}]', "x.json")
    assert [d.name for d in got] == ["My-Stream", "restream-2"]
    assert got[1].stream_key is None
    for bad in ('{"restreams": 3}', '[{"name": "a"}]', '[{"serverUrl": "http://h/s"}]', '{"restreams": [',
                '[{"serverUrl": "rtmp://h/s", "streamKey": 5}]', '[7]'):
        with pytest.raises(UsageError):
            interchange.parse_import(bad, "x.json")
    with pytest.raises(UsageError):
        interchange.export(_profile(), "yaml", include_keys=False)


def test_merge_adds_or_replaces():
    p = _profile(_dest())
    incoming = (_dest("twitch", "rtmp://ingest.example/app"),)
    assert [d.name for d in interchange.merge(p, incoming, False).destinations] == ["youtube", "twitch"]
    assert [d.name for d in interchange.merge(p, incoming, True).destinations] == ["twitch"]
    with pytest.raises(UsageError, match="already exists"):
        interchange.merge(p, (_dest("YouTube"),), False)


# -- redaction ----------------------------------------------------------------------------------------------------

def _canary_spellings() -> dict[str, str]:
    from urllib.parse import quote, quote_plus

    return {
        "raw": CANARY_KEY,
        "url-encoded": quote(CANARY_KEY, safe=""),
        "url-encoded (plus)": quote_plus(CANARY_KEY),
        "url-encoded (query-safe)": quote(CANARY_KEY, safe="/:?&="),
        "%20 for space": CANARY_KEY.replace(" ", "%20"),
        "backslash-escaped once": backslash_escape(CANARY_KEY),
        "backslash-escaped twice": backslash_escape(backslash_escape(CANARY_KEY)),
        "cut at the space": CANARY_KEY.split(" ")[0],
    }


@pytest.mark.parametrize("spelling", list(_canary_spellings()))
def test_redactor_masks_every_spelling(spelling):
    form = _canary_spellings()[spelling]
    redact = Redactor([CANARY_KEY, None, ""])
    line = f"[tee @ 0x55] rtmp://a.rtmp.youtube.com/live2/{form}: I/O error"
    out = redact(line)
    assert form not in out and "CANARY" not in out
    assert out.startswith("[tee @ 0x55] rtmp://a.rtmp.youtube.com/live2/" + MASK)


def test_redactor_handles_several_keys_and_no_keys():
    assert Redactor()("nothing to hide") == "nothing to hide"
    redact = Redactor(["key-one-1234", "key-two-5678"])
    assert redact("a key-one-1234 b key-two-5678 c") == f"a {MASK} b {MASK} c"
    assert CANARY_KEY in spellings(CANARY_KEY)


@pytest.mark.parametrize("line, masked", [
    ("srt://127.0.0.1:9000?streamid=Q7z&mode=caller", f"srt://127.0.0.1:9000?streamid={MASK}&mode=caller"),
    ("rtmp://h/live/Q7z: I/O error", f"rtmp://h/live/{MASK}: I/O error"),
    ("Q7z", MASK),
    ("the key is Q7z.", f"the key is {MASK}."),
    ("xQ7z Q7zx Q7z9", "xQ7z Q7zx Q7z9"),  # inside a longer word: left alone (a one-letter key must not shred logs)
])
def test_redactor_masks_a_short_key_where_it_stands_alone(line, masked):
    # mutation caught: Redactor ignoring secrets shorter than redact.SHORT, or masking them inside words
    assert Redactor(["Q7z"])(line) == masked
    assert Redactor(["k"])("a k b") == f"a {MASK} b" and Redactor(["k"])("kick") == "kick"
