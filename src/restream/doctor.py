"""`restream doctor`: can this machine run a broadcast? A report of findings, built here, printed by the CLI.

Each finding is ok, warn or fail; any fail means a broadcast cannot run (the CLI exits 4).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from restream import __version__, discover, paths, platforms
from restream import profile as prof
from restream.errors import RestreamError

OK, WARN, FAIL = "ok", "warn", "fail"
REQUIRED = {"muxer": ("tee", "fifo", "flv"), "protocol": ("rtmp",), "encoder": ("libx264", "aac")}
OPTIONAL = {"protocol": ("rtmps", "srt")}


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warn | fail
    topic: str
    detail: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def add(self, level: str, topic: str, detail: str) -> None:
        self.findings.append(Finding(level, topic, detail))

    @property
    def can_broadcast(self) -> bool:
        return not any(f.level == FAIL for f in self.findings)

    def to_dict(self) -> dict:
        return {"can_broadcast": self.can_broadcast, **self.facts, "findings": [asdict(f) for f in self.findings]}


def mode_of(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def permission_problem(mode: int, is_dir: bool) -> str | None:
    """Pure: what is wrong with a profile file's (0600) or config directory's (0700) mode, if anything."""
    if mode & 0o044 and not is_dir:
        who = {0o044: "group and others", 0o040: "group", 0o004: "others"}[mode & 0o044]
        return f"mode {mode:04o}: readable by {who} (fix: chmod 600)"
    if mode & 0o022:
        return f"mode {mode:04o}: writable by group or others (fix: chmod {'700' if is_dir else '600'})"
    if is_dir and mode & 0o055:
        return f"mode {mode:04o}: others can list it (fix: chmod 700)"
    return None


def _ffmpeg(report: Report, override: str | None, profile: prof.Profile | None) -> None:
    try:
        path = discover.locate(override)
    except RestreamError as exc:
        report.add(FAIL, "ffmpeg", str(exc))
        return
    try:
        ff = discover.inspect(path)
    except RestreamError as exc:
        report.add(FAIL, "ffmpeg", str(exc))
        return
    source = "--ffmpeg" if override else "RESTREAM_FFMPEG" if os.environ.get("RESTREAM_FFMPEG") else "bundled/PATH"
    report.facts["ffmpeg"] = {"path": ff.path, "version": ff.version, "source": source}
    report.add(OK, "ffmpeg", f"{ff.path} (version {ff.version}, {source})")
    have = {"muxer": ff.muxers, "protocol": ff.protocols, "encoder": ff.encoders}
    present = {}
    for kind, names in REQUIRED.items():
        missing = [n for n in names if n not in have[kind]]
        present.update({n: n in have[kind] for n in names})
        if missing:
            report.add(FAIL, f"{kind}s", f"missing {', '.join(missing)} (needed for every broadcast)")
        else:
            report.add(OK, f"{kind}s", " ".join(names))
    srt_used = bool(profile and any(d.scheme == "srt" for d in profile.enabled()))
    for kind, names in OPTIONAL.items():
        for n in names:
            present[n] = n in have[kind]
            if n in have[kind]:
                report.add(OK, kind, f"{n} (optional)")
            elif n == "srt" and srt_used:
                report.add(FAIL, kind, "srt missing, and the profile has enabled srt:// destinations")
            else:
                why = ("RTMPS destinations still work: restream's relay does their TLS" if n == "rtmps"
                       else "needed only for srt:// destinations")
                report.add(WARN if n == "srt" else OK, kind, f"{n} missing ({why})")
    report.facts["capabilities"] = present


def _config(report: Report, profile_name: str) -> prof.Profile | None:
    folder = paths.config_dir()
    report.facts["config_dir"] = str(folder)
    mode = mode_of(folder)
    if mode is None:
        report.add(OK, "config dir", f"{folder} (not created yet)")
    else:
        problem = permission_problem(mode, is_dir=True)
        report.add(WARN if problem else OK, "config dir", f"{folder}" + (f": {problem}" if problem else f" ({mode:04o})"))
        if not os.access(folder, os.W_OK):
            report.add(FAIL, "config dir", f"{folder} is not writable (the broadcast lock lives there)")
    names = prof.list_profiles()
    report.facts["profiles"] = names
    for name in names:
        path = paths.profile_path(name)
        mode = mode_of(path)
        problem = permission_problem(mode, is_dir=False) if mode is not None else None
        if problem:
            report.add(WARN, "profile", f"{path}: {problem}")
    selected: prof.Profile | None = None
    try:
        selected = prof.load(prof.validate_profile_name(profile_name))
    except RestreamError as exc:
        report.add(FAIL, "profile", str(exc))
        return None
    report.facts["profile"] = {"name": selected.name, "path": str(selected.path), "exists": selected.exists,
                               "destinations": len(selected.destinations), "enabled": len(selected.enabled())}
    if not selected.exists:
        report.add(WARN, "profile", f"{selected.name!r} has no file yet ({selected.path}); add a destination: "
                                    f"restream add youtube --key-stdin")
        return selected
    enabled = selected.enabled()
    level = OK if 0 < len(enabled) <= prof.MAX_LIVE else WARN
    extra = "" if len(enabled) <= prof.MAX_LIVE else f"; at most {prof.MAX_LIVE} go live at once (--only/--skip)"
    if not enabled:
        extra = "; none would go live"
    report.add(level, "profile", f"{selected.name!r} at {selected.path}: {len(selected.destinations)} destination(s), "
                                 f"{len(enabled)} enabled{extra}")
    for d in enabled:
        if d.stream_key_env and not os.environ.get(d.stream_key_env):
            report.add(WARN, "keys", f"{d.name}: ${d.stream_key_env} is not set in this environment "
                                     f"(go would refuse it here; cron and systemd need it set explicitly)")
        if d.ca_file and not Path(d.ca_file).is_file():
            report.add(WARN, "keys", f"{d.name}: CA file {d.ca_file} not found")
        if d.stream_key_file:  # checked, never read (nor its path printed: see keysource)
            from restream import keysource

            try:
                found = Path(keysource.expand_path(d.stream_key_file)).is_file()
            except KeyError as exc:
                report.add(WARN, "keys", f"{d.name}: its key file is under ${exc.args[0]}, which is not set here")
            else:
                if not found:
                    report.add(WARN, "keys", f"{d.name}: its key file does not exist here (go would refuse it)")
        if d.stream_key_cmd and shutil.which(d.stream_key_cmd[0]) is None:
            report.add(WARN, "keys", f"{d.name}: its key command's program is not found here (go would refuse it)")
    return selected


def build(profile_name: str = paths.DEFAULT_PROFILE, ffmpeg_override: str | None = None) -> Report:
    report = Report()
    report.facts.update({"restream": __version__, "python": sys.executable,
                         "python_version": sys.version.split()[0], "presets": len(platforms.PLATFORMS)})
    config = Report()
    selected = _config(config, profile_name)
    _ffmpeg(report, ffmpeg_override, selected)  # ffmpeg first in the report, but it needs the profile's schemes
    report.findings += config.findings
    report.facts.update(config.facts)
    report.add(OK, "presets", f"{len(platforms.PLATFORMS)} platform presets (restream platforms)")
    crontab = shutil.which("crontab")
    report.facts["crontab"] = crontab
    report.add(OK, "schedule", f"crontab at {crontab}" if crontab
               else "no crontab command: restream schedule add needs --print (or install cron)")
    return report
