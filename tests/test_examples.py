"""Every machine-readable example loads: the profile TOML is a valid profile, YAML parses, shell scripts pass
`bash -n`, cron lines parse with croniter; and the events script does what it says on a scripted event stream."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from croniter import croniter

from restream import profile as prof
from restream import schedule

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_examples_are_there():
    for name in ("profile.toml", "cron-weekly.txt", "systemd/restream-weekly.service",
                 "systemd/restream-weekly.timer", "k8s/cronjob.yaml", "obs-relay.md", "on-events.sh"):
        assert (EXAMPLES / name).is_file(), name


def test_profile_example_is_a_valid_profile():
    path = EXAMPLES / "profile.toml"
    dests = prof.parse(path.read_text(encoding="utf-8"), str(path))
    assert len(dests) >= 3
    assert {d.scheme for d in dests} >= {"rtmp", "rtmps", "srt"}
    assert any(d.stream_key_env for d in dests) and any(d.ca_file for d in dests)
    assert any(d.stream_key_cmd for d in dests) and any(d.backup_url for d in dests)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.y*ml")), ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs and all(isinstance(d, dict) and d.get("kind") for d in docs)


def test_k8s_cronjobs_use_secrets_configmap_and_plain():
    docs = list(yaml.safe_load_all((EXAMPLES / "k8s" / "cronjob.yaml").read_text(encoding="utf-8")))
    kinds = [d["kind"] for d in docs]
    assert "Secret" in kinds and "ConfigMap" in kinds and kinds.count("CronJob") >= 2
    secret = next(d for d in docs if d["kind"] == "Secret")
    profiles = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    needed = set()
    for name, text in profiles.items():
        dests = prof.parse(text, name)
        assert all(d.stream_key is None and d.stream_key_file for d in dests)  # no keys in a ConfigMap
        needed |= {d.stream_key_file for d in dests}
    assert needed <= {f"/run/secrets/restream/{k}" for k in secret["stringData"]}
    for job in (d for d in docs if d["kind"] == "CronJob"):
        assert croniter.is_valid(job["spec"]["schedule"])
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["keys"] == "/run/secrets/restream"
        args = container["args"]
        assert args[:2] == ["restream", "go"] and "--plain" in args
        assert args[args.index("-p") + 1] + ".toml" in profiles


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_pass_bash_n(path):
    res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert os.access(path, os.X_OK), f"{path.name} is not executable"


def _cron_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#") and not ln.split()[0].count("=")]


def test_cron_example_parses():
    lines = _cron_lines((EXAMPLES / "cron-weekly.txt").read_text(encoding="utf-8"))
    assert len(lines) == 1
    fields = lines[0].split()
    assert croniter.is_valid(" ".join(fields[:5]))
    assert schedule.validate_expr(" ".join(fields[:5])) == "0 19 * * 1"
    entry = schedule.parse_line(lines[0])  # the same shape restream schedule writes
    assert entry is not None and entry.name == "weekly"
    assert entry.env.get("RESTREAM_CONFIG_DIR", "").startswith("/")  # as restream schedule writes it
    assert fields[6].startswith("/") and " go " in lines[0] and "--plain" in fields and "--log-file" in fields
    assert "{date}_{time}" in lines[0]  # a new recording each run, never refused as existing


def test_systemd_units_are_well_formed():
    import configparser

    for name in ("restream-weekly.service", "restream-weekly.timer"):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str
        cp.read_string((EXAMPLES / "systemd" / name).read_text(encoding="utf-8"))
        assert "Unit" in cp and "Install" in cp
    service = (EXAMPLES / "systemd" / "restream-weekly.service").read_text(encoding="utf-8")
    assert "--plain" in service and "ExecStart=/" in service and "--record" in service and "{date}" in service
    assert "LoadCredential=" in service and "$CREDENTIALS_DIRECTORY" in service


EVENTS = "\n".join([
    '{"event":"start","ts":"t","profile":"default","input":"x","ffmpeg":"f","pid":1,'
    '"destinations":[{"name":"yt","url":"u","host":"h"},{"name":"tw","url":"u","host":"h"}]}',
    '{"event":"state","ts":"t","destination":"yt","state":"live","error":null,"host":"h","reconnects":0,"uptime_s":0}',
    '{"event":"state","ts":"t","destination":"tw","state":"retrying","error":"Connection refused","host":"h",'
    '"reconnects":0,"uptime_s":0}',
    '{"event":"progress","ts":"t","live":1}',
    '{"event":"end","ts":"t","exit_code":1,"reason":"duration reached","destinations":{}}',
]) + "\n"


def _path_without_jq(tmp_path: Path) -> str:
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("bash", "python3", "date", "env"):
        found = shutil.which(tool, path="/usr/bin:/bin")
        if found:
            (folder / tool).symlink_to(found)
    return str(folder)


@pytest.mark.parametrize("with_jq", [True, False], ids=["jq", "python3"])
def test_events_script_alerts_and_exits_with_the_broadcast_code(with_jq, tmp_path):
    env = {"PATH": os.environ["PATH"] if with_jq else _path_without_jq(tmp_path)}
    if with_jq and not shutil.which("jq"):
        if os.environ.get("RESTREAM_REQUIRE_INTEROP") == "1":  # CI (.ci/run) installs jq: this branch must run
            pytest.fail("jq is not installed, and CI requires it (.ci/run)")
        pytest.skip("jq is not installed")
    script = str(EXAMPLES / "on-events.sh")
    res = subprocess.run(["bash", script], input=EVENTS, capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 1, res.stderr
    assert "ALERT tw is retrying: Connection refused" in res.stderr
    assert "yt is live" in res.stdout and "broadcast ended: duration reached (exit 1)" in res.stdout
    cut = subprocess.run(["bash", script], input=EVENTS.splitlines()[0] + "\n", capture_output=True, text=True,
                         env=env, timeout=30)
    assert cut.returncode == 5 and "no end event" in cut.stderr
