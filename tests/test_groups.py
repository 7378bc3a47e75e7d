"""Encode groups (issue 14), pure parts and the CLI without a broadcast: a destination's own encoding in the
profile and on the command line, platform caps, grouping, the argv of several encodes in one ffmpeg (golden),
the slot layout with the tee's per-slave ``select``, ``--dry-run``'s groups, live changes refused or applied."""

from __future__ import annotations

import json

import pytest

from restream import plan, run
from restream import profile as prof
from restream.errors import ProfileError, UsageError
from restream.plan import Encoding, Group, Input, Override

BASE = Encoding(video_bitrate_k=8000, audio_bitrate_k=64, size=(320, 180), fps=15)
CAPPED = Encoding(video_bitrate_k=6000, audio_bitrate_k=64, size=(320, 180), fps=15)
VERTICAL = Encoding(video_bitrate_k=1000, audio_bitrate_k=64, size=(180, 320), fps=15, crop="9:16")


# -- a destination's encoding: own settings on top of the broadcast's, caps ----------------------------------------

@pytest.mark.parametrize("own, caps, expected, note", [
    (Override(), (None, None), BASE, None),
    (Override(), (6000, None), CAPPED, "capped: video 8000k -> 6000k"),
    (Override(), (12000, 320), BASE, None),  # under the caps: the broadcast's own encode
    (Override(video_bitrate_k=9000), (6000, None), Encoding(video_bitrate_k=9000, audio_bitrate_k=64,
                                                           size=(320, 180), fps=15), None),  # its own setting wins
    (Override(audio_bitrate_k=320), (None, 128), Encoding(video_bitrate_k=8000, audio_bitrate_k=320,
                                                          size=(320, 180), fps=15), None),
    (Override(), (None, 32), Encoding(video_bitrate_k=8000, audio_bitrate_k=32, size=(320, 180), fps=15),
     "capped: audio 64k -> 32k"),
    (Override(video_bitrate_k=1000, crop="9:16", size=(180, 320)), (None, None), VERTICAL, None),
    (Override(crop="1:1"), (None, None), Encoding(video_bitrate_k=8000, audio_bitrate_k=64, fps=15, crop="1:1"),
     None),  # a crop without a size: the crop's own size (720x720), not the broadcast's 16:9 size
    (Override(copy=True), (6000, None), Encoding(copy=True, video_bitrate_k=8000, audio_bitrate_k=64), None),
])
def test_effective_encoding(own, caps, expected, note):
    assert plan.effective(BASE, own, *caps) == (expected, note)


def test_copy_broadcast_copies_unless_a_destination_needs_an_encode():
    copy = Encoding(copy=True, video_bitrate_k=4500, audio_bitrate_k=160)
    assert plan.effective(copy, Override(), 3000)[0].copy  # caps cannot apply to a copy
    assert not plan.effective(copy, Override(size=(640, 360)))[0].copy
    assert not plan.effective(copy, Override(copy=False))[0].copy
    assert plan.effective(copy, Override(copy=False), 3000) == (
        Encoding(video_bitrate_k=3000, audio_bitrate_k=160), "capped: video 4500k -> 3000k")


def test_out_size_and_describe():
    assert VERTICAL.out_size == (180, 320) and Encoding(crop="9:16").out_size == (720, 1280)
    assert VERTICAL.describe() == "1000k video, 64k audio, 180x320 (9:16 crop), 15 fps"
    assert Encoding(copy=True).describe() == "copy (no encode)"
    assert Encoding().describe() == "4500k video, 160k audio"


def test_groups_by_identical_settings_broadcasts_own_first():
    gs = plan.groups([("v1", VERTICAL), ("a", BASE), ("tw", CAPPED), ("b", BASE), ("v2", VERTICAL)], BASE)
    assert gs == (Group(0, BASE, ("a", "b")), Group(1, VERTICAL, ("v1", "v2")), Group(2, CAPPED, ("tw",)))
    assert [g.select for g in gs] == ["v:0,a:0", "v:1,a:1", "v:2,a:2"]
    assert plan.groups([("x", VERTICAL)], BASE) == (Group(0, VERTICAL, ("x",)),)
    assert plan.groups([], BASE) == (Group(0, BASE, ()),)


# -- the argv: several encodes in one ffmpeg (golden) ----------------------------------------------------------------

SLOT = plan.Slave("slot-0", "rtmp://127.0.0.1:5000/slot/slot-0", "flv", (("select", "v:1,a:1"),))
HEAD = ["ffmpeg", "-hide_banner", "-loglevel", "level+info", "-progress", "pipe:1", "-stats_period", "0.5", "-nostats"]
FIFO = ("attempt_recovery=1:recover_any_error=1:recovery_wait_time=1:drop_pkts_on_overflow=1:"
        "restart_with_keyframe=1:queue_size=600")
TEE = ["-flags", "+global_header", "-f", "tee", "-use_fifo", "1", "-fifo_options", FIFO,
       r"[f=flv:onfail=ignore:select=v\\\:1\\\,a\\\:1]rtmp\:\/\/127\.0\.0\.1\:5000\/slot\/slot\-0"]


def x264(i: int, kbps: int, gop: int) -> list[str]:
    return [f"-c:v:{i}", "libx264", f"-preset:v:{i}", "veryfast", f"-profile:v:{i}", "high", f"-pix_fmt:v:{i}",
            "yuv420p", f"-b:v:{i}", f"{kbps}k", f"-maxrate:v:{i}", f"{kbps}k", f"-bufsize:v:{i}", f"{2 * kbps}k",
            f"-sc_threshold:v:{i}", "0", f"-g:v:{i}", str(gop), f"-keyint_min:v:{i}", str(gop),
            f"-force_key_frames:v:{i}", "expr:gte(t,n_forced*2)"]


def aac(i: int, kbps: int) -> list[str]:
    return [f"-c:a:{i}", "aac", f"-b:a:{i}", f"{kbps}k", f"-ar:a:{i}", "48000", f"-ac:a:{i}", "2"]


GROUPS3 = (Group(0, BASE, ("main",)), Group(1, CAPPED, ("twitch",)), Group(2, VERTICAL, ("vertical",)))

GOLDEN = {
    # the test card is made at the broadcast's size: only the vertical group is scaled and cropped
    "test card, 3 groups": (Input("test"), BASE, GROUPS3, [
        *HEAD, "-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-re", "-f", "lavfi", "-i",
        "sine=frequency=1000:sample_rate=48000:beep_factor=4",
        "-filter_complex", "[0:v:0]split=3[s0][s1][s2];[s2]scale=180:320:force_original_aspect_ratio=increase[s3];"
                           "[s3]crop=180:320[s4];[s4]setsar=1[s5]",
        "-map", "[s0]", "-map", "1:a:0", "-map", "[s1]", "-map", "1:a:0", "-map", "[s5]", "-map", "1:a:0",
        *x264(0, 8000, 30), *aac(0, 64), *x264(1, 6000, 30), *aac(1, 64), *x264(2, 1000, 30), *aac(2, 64), *TEE]),
    # relay mode / go --copy: the copy group maps the input as it is, next to one encode (no split needed)
    "relay copy + a capped encode": (Input("listen", "rtmp://127.0.0.1:20000/live/ingest"),
                                     Encoding(copy=True),
                                     (Group(0, Encoding(copy=True), ("yt",)),
                                      Group(1, Encoding(video_bitrate_k=3000), ("tw",))), [
        *HEAD, "-fpsprobesize", "0", "-f", "flv", "-i", "pipe:0",
        "-map", "0:v:0", "-map", "0:a:0?", "-map", "0:v:0", "-map", "0:a:0?",
        "-c:v:0", "copy", "-c:a:0", "copy", *x264(1, 3000, 0)[:16], "-force_key_frames:v:1",
        "expr:gte(t,n_forced*2)", *aac(1, 160), *TEE]),
    # a file: every group converted to its rate; a cropped group alone still gets its graph
    "file, one vertical group": (Input("file", "in.mp4", fps=25.0), Encoding(), (Group(0, VERTICAL, ("v",)),), [
        *HEAD, "-re", "-i", "in.mp4",
        "-filter_complex", "[0:v:0]scale=180:320:force_original_aspect_ratio=increase[s0];[s0]crop=180:320[s1];"
                           "[s1]setsar=1[s2];[s2]fps=15[s3]",
        "-map", "[s3]", "-map", "0:a:0?", *x264(0, 1000, 30), *aac(0, 64), *TEE]),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_group_argv(case):
    inp, enc, groups, expected = GOLDEN[case]
    assert list(plan.build("ffmpeg", inp, enc, (SLOT,), groups=groups).argv) == expected


def test_one_group_is_todays_argv():
    """One group (even a capped one) is today's single encode, byte for byte: the golden argv tests hold."""
    one = plan.build("ffmpeg", Input("test"), BASE, (SLOT,), groups=(Group(0, CAPPED, ("tw",)),)).argv
    assert one == plan.build("ffmpeg", Input("test"), CAPPED, (SLOT,)).argv
    assert "-filter_complex" not in one and "-b:v" in one


def test_audio_only_and_video_only_inputs_with_groups():
    still = Input("file", "talk.m4a", has_video=False)
    argv = plan.build("ffmpeg", still, BASE, (SLOT,), groups=GROUPS3).argv
    assert argv[argv.index("-filter_complex") + 1].startswith("[1:v:0]split=3")
    assert "-shortest" in argv and argv.count("0:a:0") == 3
    with pytest.raises(UsageError, match="picture"):
        plan.build("ffmpeg", still, BASE, (SLOT,), groups=(GROUPS3[0], Group(1, Encoding(copy=True), ("c",))))


def test_ffmpeg_python_sorts_options_and_puts_global_options_last():
    """Why the argv around the graph is kept by hand: ffmpeg-python sorts output options alphabetically (so
    ``-c:v libx264 -c copy``, where the later ``-c`` must win, cannot be written) and puts global options after
    the output, where ffmpeg reads them as trailing options. restream's own argv keeps both in order."""
    import ffmpeg

    args = (ffmpeg.input("in.mp4", re=None).output("out.flv", **{"c:v": "libx264", "c": "copy"})
            .global_args("-progress", "pipe:1").get_args())
    assert args == ["-re", "-i", "in.mp4", "-c", "copy", "-c:v", "libx264", "out.flv", "-progress", "pipe:1"]
    ours = plan.build("ffmpeg", Input("test"), BASE, (SLOT,), groups=GROUPS3).argv
    assert ours.index("-progress") < ours.index("-i") < ours.index("-filter_complex") < ours.index("tee")


def test_ffmpeg_python_cannot_make_a_source_so_the_test_card_and_silence_stay_by_hand():
    """The test card (testsrc2 + drawtext), the still's black picture and the silence (anullsrc) are lavfi
    sources given as inputs: ffmpeg-python 0.2.0 has no node without an input, so those strings stay by hand."""
    from ffmpeg.nodes import FilterNode

    with pytest.raises(ValueError, match="at least 1 input"):
        FilterNode([], "testsrc2", kwargs={"size": "320x180"})


# -- the slot layout: each slave selects its group's streams ----------------------------------------------------------

def slot_url(i: int) -> str:
    return f"rtmp://127.0.0.1:{7000 + i}/slot/slot-{i}"


def test_layout_selects_each_groups_streams_and_spreads_free_slots():
    targets = [run.Target("main", "rtmp://a/live", "k1", enc=BASE), run.Target("tw", "rtmp://b/app", "k2", enc=CAPPED),
               run.Target("srt", "srt://c:9000", None, enc=VERTICAL)]
    groups = run.encode_groups(targets, BASE)
    assert [g.members for g in groups] == [("main",), ("tw",), ("srt",)]
    slaves, slot_of, slots = run.layout(targets, slot_url, "rec.ts", groups)
    assert (slot_of, slots) == ({"main": 0, "tw": 1}, 4)
    assert [(s.name, dict(s.options)["select"]) for s in slaves] == [
        ("slot-0", "v:0,a:0"), ("slot-1", "v:1,a:1"), ("slot-2", "v:0,a:0"), ("slot-3", "v:1,a:1"),
        ("srt", "v:2,a:2"), ("record", "v:0,a:0")]
    # one group: no select (today's tee spec)
    one = run.layout(targets[:1], slot_url, None, run.encode_groups(targets[:1], BASE))[0]
    assert all("select" not in dict(s.options) for s in one)


def test_live_change_inside_a_group_applies_one_needing_a_new_encoder_is_refused():
    seen = []
    main = run.Target("main", "rtmp://127.0.0.1:1/live", "k1", enc=BASE)
    vert = run.Target("vert", "rtmp://127.0.0.1:2/live", "k2", enc=VERTICAL)
    b = run.Broadcast("ffmpeg", Input("test"), BASE, [main, vert], seen.append)
    b.groups = run.encode_groups([main, vert], BASE)
    b.slot_group = run.slot_groups([main, vert], b.groups)
    b.slot_of = {"main": 0, "vert": 1}
    assert b.slot_group == {0: 0, 1: 1, 2: 0, 3: 1, 4: 0}
    # a new destination in the vertical group: a free slot carrying that group
    new = run.Target("shorts", "rtmp://127.0.0.1:3/live", "k3", enc=VERTICAL)
    assert b.apply([main, vert, new]) == []
    assert b.slot_of["shorts"] == 3
    # one that would need a new encoder (a capped encode): refused, saying when it applies
    tw = run.Target("tw", "rtmp://127.0.0.1:4/live", "k4", enc=CAPPED)
    problems = b.apply([main, vert, new, tw])
    assert problems == ["tw: its encoding (6000k video, 64k audio, 320x180, 15 fps) needs an encoder this "
                        "broadcast does not run; it applies at the next 'restream go'"]
    assert "tw" not in b.slot_of
    # an edit moving main to a new encoding: refused, and main stays on air as it was
    problems = b.apply([run.Target("main", "rtmp://127.0.0.1:1/live", "k1", enc=CAPPED), vert, new])
    assert problems and problems[0].startswith("main: its encoding") and b.slot_of["main"] == 0
    # an edit moving main into the vertical group (a free vertical slot is left? no: slots 1 and 3 are taken)
    problems = b.apply([run.Target("main", "rtmp://127.0.0.1:1/live", "k1", enc=VERTICAL), vert, new])
    assert problems == ["main: no free slot carries its new encoding (1000k video, 64k audio, 180x320 (9:16 "
                        "crop), 15 fps); it applies at the next 'restream go'"]
    assert b.targets["main"].enc == BASE


# -- the profile and the CLI ------------------------------------------------------------------------------------------

def test_encoding_fields_round_trip_and_validate():
    d = prof.make_destination("v", "rtmp://h/live", "k", video_bitrate=1000, audio_bitrate=96, size="720x1280",
                              fps=30, crop="9:16")
    text = prof.dumps(prof.Profile("p", None, (d,)))  # type: ignore[arg-type]
    assert 'video_bitrate = 1000\naudio_bitrate = 96\nsize = "720x1280"\nfps = 30.0\ncrop = "9:16"' in text
    assert prof.parse(text, "p.toml") == (d,)
    assert d.describe_encoding() == "video 1000k, audio 96k, size 720x1280, fps 30, crop 9:16"
    for bad, message in [({"video_bitrate": "6M"}, "video_bitrate"), ({"size": "721x1280"}, "size"),
                         ({"fps": 0}, "fps"), ({"crop": "4:3"}, "crop"), ({"copy": "yes"}, "copy"),
                         ({"copy": True, "size": "720x1280"}, "cannot go with size")]:
        with pytest.raises(UsageError, match=message):
            prof.make_destination("v", "rtmp://h/live", "k", **bad)
    with pytest.raises(ProfileError, match="crop"):
        prof.parse('[[destinations]]\nname = "v"\nserver_url = "rtmp://h/live"\ncrop = "16:9"\n', "p.toml")


def test_add_edit_list_show_export_import(cli, tmp_path):
    code, _, err = cli("add", "vert", "--url", "rtmp://127.0.0.1:9/live", "--key", "k-vert-123456",
                       "--crop", "9:16", "--video-bitrate", "3M", "--fps", "30")
    assert code == 0, err
    assert cli("add", "main", "--url", "rtmp://127.0.0.1:9/live", "--key", "k-main-123456")[0] == 0
    code, out, _ = cli("list", "--json")
    rows = {r["name"]: r for r in json.loads(out)["destinations"]}
    assert rows["vert"]["encoding"] == {"video_bitrate": 3000, "fps": 30.0, "crop": "9:16"}
    assert "encoding" not in rows["main"]
    code, out, _ = cli("list")
    assert "ENCODING" in out and "video 3000k, fps 30, crop 9:16" in out
    code, out, _ = cli("show", "vert")
    assert "encoding        video 3000k, fps 30, crop 9:16" in out
    code, _, err = cli("edit", "vert", "--size", "720x1280", "--fps", "default", "--audio-bitrate", "96k")
    assert code == 0, err
    assert cli("show", "vert", "--json")[1] and json.loads(cli("show", "vert", "--json")[1])["encoding"] == {
        "video_bitrate": 3000, "audio_bitrate": 96, "size": "720x1280", "crop": "9:16"}
    code, _, err = cli("edit", "main", "--copy", "--size", "640x360")
    assert code == 2 and "cannot go with size" in err
    code, _, err = cli("edit", "main", "--crop", "4:3")
    assert code == 2 and "--crop" in err
    # export/import keep them; the apivideo format leaves them out, with a warning
    code, text, _ = cli("export", "--show-keys")
    (tmp_path / "b.toml").write_text(text)
    assert cli("import", str(tmp_path / "b.toml"), "--replace")[0] == 0
    assert json.loads(cli("show", "vert", "--json")[1])["encoding"]["size"] == "720x1280"
    code, out, err = cli("export", "--format", "apivideo")
    assert code == 0 and "crop" not in out
    assert "no per-destination encoding: left out for vert" in err


DRY_GROUPS = """\
# 3 encode group(s): one decode, one encode per group
# group 1: 8000k video, 64k audio, 320x180, 15 fps: main
# group 2: 6000k video, 64k audio, 320x180, 15 fps: twitch
# group 3: 1000k video, 64k audio, 180x320 (9:16 crop), 15 fps: vertical, shorts
# main: rtmp://127.0.0.1:9/live key •••••••• (slot-0 via restream's relay)
# twitch: rtmp://127.0.0.1:9/app key •••••••• (slot-1 via restream's relay)
# vertical: rtmp://127.0.0.1:9/live key •••••••• (slot-2 via restream's relay)
# shorts: rtmp://127.0.0.1:9/live key •••••••• (slot-3 via restream's relay)
"""


def _three_groups(cli) -> None:
    for args in (["main", "--url", "rtmp://127.0.0.1:9/live"],
                 ["twitch", "--platform", "twitch", "--url", "rtmp://127.0.0.1:9/app"],
                 ["vertical", "--url", "rtmp://127.0.0.1:9/live", "--crop", "9:16", "--size", "180x320",
                  "--video-bitrate", "1000k"],
                 ["shorts", "--url", "rtmp://127.0.0.1:9/live", "--crop", "9:16", "--size", "180x320",
                  "--video-bitrate", "1000k"]):
        code, _, err = cli("add", *args, "--key", f"k-{args[0][:3]}")
        assert code == 0, err


GO = ["go", "--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "8000k", "--audio-bitrate",
      "64k", "--dry-run"]


def test_dry_run_shows_the_groups_golden(cli):
    _three_groups(cli)
    code, out, err = cli(*GO)
    assert code == 0, err
    lines = out.splitlines()
    assert "\n".join(lines[1:9]) + "\n" == DRY_GROUPS
    assert err == ("restream: notice: twitch: capped: video 8000k -> 6000k (Twitch's limit): it gets its own "
                   "encode (--no-caps to send it the broadcast's)\n")
    cmd = lines[9]
    assert "split=3" in cmd and cmd.count("-c:v:") == 3 and "-b:v:1 6000k" in cmd
    selects = [part.split("]")[0] for part in cmd.split("select=")[1:]]
    assert selects == [r"v\\\:0\\\,a\\\:0", r"v\\\:1\\\,a\\\:1", r"v\\\:2\\\,a\\\:2", r"v\\\:2\\\,a\\\:2",
                       r"v\\\:0\\\,a\\\:0"]  # slot-4 is free: it carries the broadcast's own group


def test_dry_run_no_caps_keeps_one_encode_and_warns(cli):
    _three_groups(cli)
    code, out, err = cli(*GO, "--no-caps", "--skip", "vertical,shorts")
    assert code == 0, err
    assert "# 1 encode group(s)" in out and "# group 1: 8000k video, 64k audio, 320x180, 15 fps: main, twitch" in out
    assert "-filter_complex" not in out and "select=" not in out
    assert "warning: twitch: Twitch accepts at most 6000 kbit/s of video; --video-bitrate is 8000k" in err


def test_copy_destination_with_the_test_card_is_refused(cli):
    assert cli("add", "c", "--url", "rtmp://127.0.0.1:9/live", "--key", "k-c-123456", "--copy")[0] == 0
    code, _, err = cli("go", "--test-pattern", "--dry-run")
    assert code == 2 and "c: set to copy, but the test card must be encoded" in err


def test_the_vertical_crop_keeps_the_centre_real_ffmpeg():
    """The 9:16 group's graph, run by the bundled ffmpeg on a 640x360 picture, green from x=210 to 430 (red
    left, blue right): its 9:16 centre (x=219 to 421) fills the vertical picture, so that is green edge to edge
    (the centre kept; a squeezed or off-centre picture would show red or blue at an edge)."""
    import subprocess

    from support import FFMPEG

    graph, maps = plan.group_graph(Input("file", "in"), BASE, (Group(0, BASE, ("m",)), Group(1, VERTICAL, ("v",))))
    src = ("color=c=red:size=640x360:rate=1,drawbox=x=210:y=0:w=220:h=360:color=green:t=fill,"
           "drawbox=x=430:y=0:w=210:h=360:color=blue:t=fill")
    out = subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-f", "lavfi", "-i", src, "-frames:v", "1",
                          "-filter_complex", graph, "-map", maps[1], "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
                          "-map", maps[0], "-frames:v", "1", "-f", "null", "-"], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    out = out.stdout
    w, h = VERTICAL.size
    assert len(out) == w * h * 3
    for x in (2, w // 2, w - 3):  # left edge, centre, right edge of the middle row
        r, g, b = out[(h // 2 * w + x) * 3:(h // 2 * w + x) * 3 + 3]
        assert g > 100 and r < 60 and b < 60, (x, (r, g, b))
