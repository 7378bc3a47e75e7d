"""Schedules belong to their config dir (list/remove see only the entries made with the same one), and
`schedule list` fits 100 columns (details with --wide or --json)."""

from __future__ import annotations

import json

import pytest

from restream import schedule
from restream.cli import ops as cli_ops
from test_ops import _crontab, real_crontab, rs  # noqa: F401  (real_crontab is a fixture)

LONG = "/srv/a-rather-long-directory/with/several/levels/of/folders/weekly-show-of-the-community.mp4"


def _line(name: str, folder: str | None) -> str:
    env = {"RESTREAM_CONFIG_DIR": folder} if folder else {}
    return schedule.build_line("@daily", name, ["/usr/bin/python3", "-m", "restream", "go", LONG, "-p", "default"],
                               env)


def test_entries_carry_their_config_dir(monkeypatch, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    text = _line("default", a) + "\n" + _line("default", b) + "\n" + _line("old", None) + "\n"
    found = schedule.entries(text)
    assert [e.config_dir("DEFAULT") for e in found] == [a, b, "DEFAULT"]
    assert found[0].summary == f"go {LONG}" and found[0].profile == "default"
    monkeypatch.setenv("RESTREAM_CONFIG_DIR", a)
    assert [e.config_dir("x") for e in found if cli_ops._mine(e)] == [a]
    new, gone = schedule.remove(text, "default", cli_ops._mine)
    assert [e.config_dir("x") for e in gone] == [a]
    assert [e.config_dir("DEFAULT") for e in schedule.entries(new)] == [b, "DEFAULT"]
    assert schedule.add(new, _line("default", a), cli_ops._mine)  # the name is free again in a
    with pytest.raises(Exception, match="already exists"):
        schedule.add(text, _line("default", a), cli_ops._mine)


def test_a_line_without_a_config_dir_belongs_to_the_default_one(monkeypatch):
    monkeypatch.delenv("RESTREAM_CONFIG_DIR")
    assert cli_ops._mine(schedule.entries(_line("old", None))[0])


@pytest.mark.timeout(90)
def test_list_and_remove_see_only_their_config_dir(real_crontab, tmp_path):  # noqa: F811
    envs = {d: {"RESTREAM_CONFIG_DIR": str(tmp_path / d)} for d in ("a", "b")}
    for d, env in envs.items():
        assert rs("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abcdefgh", env=env).returncode == 0
        added = rs("schedule", "add", "0 19 * * 1", "--", "go", LONG, "--duration", "30d", "--record",
                   str(tmp_path / "rec-{date}_{time}.mkv"), env=env)
        assert added.returncode == 0, added.stderr
    assert len(schedule.entries(_crontab("-l").stdout)) >= 2

    listed = rs("schedule", "list", env=envs["b"])
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(map(len, lines)) <= 100, listed.stdout
    assert sum(1 for ln in lines if ln.startswith("default ")) == 1 and "go /srv/" in listed.stdout
    wide = rs("schedule", "list", "--wide", env=envs["b"]).stdout
    assert LONG in wide and str(tmp_path / "b") in wide and str(tmp_path / "a") not in wide
    rows = json.loads(rs("schedule", "list", "--json", env=envs["b"]).stdout)
    assert [r["config_dir"] for r in rows] == [str(tmp_path / "b")]

    assert rs("schedule", "remove", "default", env=envs["a"]).returncode == 0
    left = schedule.entries(_crontab("-l").stdout)
    assert [e.config_dir("") for e in left if e.name == "default"] == [str(tmp_path / "b")]
    again = rs("schedule", "remove", "default", env=envs["a"])
    assert again.returncode == 2 and "no scheduled broadcast named 'default'" in again.stderr
    assert rs("schedule", "remove", "default", env=envs["b"]).returncode == 0


def test_a_fixed_record_path_in_a_schedule_is_warned_about(cli):
    assert cli("add", "studio", "--url", "rtmp://127.0.0.1:1935/live", "--key", "abcdefgh")[0] == 0
    code, out, err = cli("schedule", "add", "@weekly", "--print", "--", "go", "--test-pattern", "--record",
                         "/tmp/weekly.mkv")
    assert code == 0 and "has no {date} or {time}" in err
    code, out, err = cli("schedule", "add", "@weekly", "--print", "--", "go", "--test-pattern", "--record",
                         "/tmp/weekly-{date}.mkv")
    assert code == 0 and err.count("warning") == 0 and "weekly-{date}.mkv" in out
