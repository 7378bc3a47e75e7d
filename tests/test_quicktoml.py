"""quicktoml answers only where tomllib gives the same answer, and it does answer for what restream writes."""

from __future__ import annotations

import random
import tomllib

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CANARY_KEY
from restream import profile as prof
from restream import quicktoml
from restream.errors import ProfileError


def same_as_tomllib(text: str) -> dict | None:
    """quicktoml's answer, after checking the claim: None, or exactly what tomllib reads (types included)."""
    fast = quicktoml.loads(text)
    if fast is None:
        return None
    assert tomllib.loads(text) == fast  # raises TOMLDecodeError if tomllib refuses what quicktoml accepted
    assert repr(tomllib.loads(text)) == repr(fast)  # 1 == 1.0 == True in Python: the types must match too
    return fast


def written(p: prof.Profile) -> str:
    return prof.dumps(p)


def plain_value(v) -> bool:
    """Written in quicktoml's subset: any string (tomli_w's escapes are TOML 1.0's), a float without exponent."""
    if isinstance(v, list):
        return all(map(plain_value, v))
    return not isinstance(v, float) or "e" not in repr(v)


text_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
documents = st.fixed_dictionaries({"version": st.just(1)}, optional={"destinations": st.lists(
    st.dictionaries(st.sampled_from(["name", "server_url", "stream_key", "enabled", "fps", "video_bitrate",
                                     "stream_key_cmd", "crop", "a-b_C9"]),
                    st.one_of(text_values, st.booleans(), st.integers(0, 10**20),
                              st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
                              st.lists(text_values, min_size=1, max_size=4))),
    max_size=5)})


@settings(max_examples=400, deadline=None)
@given(documents)
def test_what_restream_writes_reads_back_the_same(doc):
    text = prof.document_text(doc)
    assert tomllib.loads(text) == doc
    fast = same_as_tomllib(text)
    dests = doc.get("destinations", [])
    plain = all(dests) and all(map(plain_value, (v for d in dests for v in d.values())))  # (tomli_w writes {} inline)
    if plain:  # nothing but the escapes it reads: it must answer, or list/show pay for tomllib after all
        assert fast == doc


def test_a_profile_restream_writes_is_read_without_tomllib():
    dests = (prof.make_destination("yt", "rtmp://a.rtmp.youtube.com/live2", stream_key=CANARY_KEY, platform="youtube"),
             prof.make_destination("cmd", "rtmp://example.com/live", stream_key_cmd=["pass", "show", "x y"],
                                   enabled=False),
             prof.make_destination("v", "rtmp://example.com/live", stream_key_env="V_KEY", video_bitrate=3000,
                                   size="720x1280", crop="9:16", fps=29.97, copy=False),
             prof.make_destination("b", "rtmp://a.rtmp.youtube.com/live2", stream_key_file="~/keys/b",
                                   backup_url="rtmp://b.rtmp.youtube.com/live2?backup=1", backup="both"))
    text = written(prof.Profile("p", None, dests))  # type: ignore[arg-type]
    assert same_as_tomllib(text) is not None
    assert prof.parse(text, "p.toml") == dests


@pytest.mark.parametrize("text", [
    "version = 1 # a comment", "# a comment\nversion = 1", "version = 1\nversion = 1", "a.b = 1", '"a" = 1',
    "a = 1_000", "a = +1", "a = -1", "a = 01", "a = 1e3", "a = inf", "a = nan", "a = 0x10", "a = 1.", "a = .5",
    "a = 1979-05-27", "a = 'lit'", 'a = """x"""', 'a = "x\\q"', 'a = "x\\e"', 'a = "x\\u00e"', 'a = "\\u0"',
    'a = "\\ud800"', 'a = "\\U00110000"', 'a = "x\\', 'a = "\\uzzzz"', 'a = "x" "y"',
    "a = [1]", 'a = ["x" "y"]', 'a = ["x",,]', 'a = [,]', 'a = ["x"] 1', 'a = ["x"', 'a = [["x"]]', 'a = ["x",]]',
    'a = [ "x" , ] #', "destinations = []\n[[destinations]]", 'a = [\n"x"\n]', 'a = [\n"x",\n\n]', "a = {}",
    "[destinations]\nname = 1", "[[destinations]]\n[[destinations]]\nname = 1\nname = 2",
    "destinations = 1\n[[destinations]]", "[[ destinations ]]", "[[other]]", "version = 1\r\n", "\ufeffversion = 1",
    "a = \"x\x01\"", "a = \"x\x7f\"", "a = true\x0b", "a=", "=1", "a b = 1", "a = 1 2", 'a = "unterminated',
    'a = "x"y"', 'a = "x\\"', "a = True",
])
def test_anything_else_is_left_to_tomllib(text):
    assert same_as_tomllib(text) is None


@pytest.mark.parametrize("text, doc", [
    ("", {}), ("\n\n", {}), ("version = 1\ndestinations = []", {"version": 1, "destinations": []}),
    ("version=1", {"version": 1}), ("\tversion \t=\t 0 ", {"version": 0}),
    ('a = "x = \\"y\\" \\\\ # z"', {"a": 'x = "y" \\ # z'}), ('a = ""', {"a": ""}),
    ("a = 30.0\nb = 29.97\nc = 0.5", {"a": 30.0, "b": 29.97, "c": 0.5}),
    ('[[destinations]]\nk = [\n    "a",\n  "b" ,\n]\n[[destinations]]', {"destinations": [{"k": ["a", "b"]}, {}]}),
    ("a = [\n]", {"a": []}), ("a = [ ]", {"a": []}), ('a = ["x"]', {"a": ["x"]}),
    ('a = [ "x,\\"y]" ,"", ]', {"a": ['x,"y]', ""]}), ('a=["x","y"]', {"a": ["x", "y"]}),
    ('a = "\\b\\t\\n\\f\\r\\"\\\\ \\u00e9 \\U0001F600 \\uFFFF"', {"a": '\b\t\n\f\r"\\ é 😀 \uffff'}),
    ('a = "Ωé 日本 😀\t"', {"a": "Ωé 日本 😀\t"}),
])
def test_the_subset(text, doc):
    assert same_as_tomllib(text) == doc


HAND_WRITTEN = (  # as a user might edit it: inline arrays, escapes, indentation
    'version = 1\n\n[[destinations]]\n  name = "b"\n  server_url = "rtmp://h/x"\n'
    '  stream_key_cmd = ["pass", "show \\"b\\"", "\\u00e9\\t"]\n  enabled = false\n  fps = 30\n')


def test_a_number_too_long_for_int_is_a_profile_error_not_a_crash():
    text = "version = " + "9" * 5000
    assert quicktoml.loads(text) is None
    with pytest.raises(ProfileError, match="not valid TOML: a number too long"):
        prof.parse(text, "p.toml")


@pytest.mark.parametrize("which", ["written", "hand-written"])
def test_random_damage_to_a_profile(which):
    """Characters inserted, deleted or swapped anywhere: quicktoml either says no or agrees with tomllib."""
    base = HAND_WRITTEN if which == "hand-written" else prof.document_text({"version": 1, "destinations": [
        {"name": "a", "server_url": "rtmp://h/x", "stream_key": 'k"e\\y#1', "enabled": True, "fps": 29.97,
         "stream_key_cmd": ["pass", "show"], "video_bitrate": 6000}]})
    alphabet = '"\\#=[]{}, \t\n.-_+0123456789eEtrufalsnixuU\r\x00\'é'
    rng = random.Random(16)
    answered = 0
    for _ in range(15000):
        text = list(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text.insert(at, rng.choice(alphabet))
            elif op < 0.7:
                del text[at]
            else:
                text[at] = rng.choice(alphabet)
        text = "".join(text)
        try:
            expected = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            assert quicktoml.loads(text) is None, text
            continue
        fast = quicktoml.loads(text)
        if fast is not None:
            answered += 1
            assert repr(fast) == repr(expected), text
    assert answered > 1000  # the fuzz exercised the answering side too
