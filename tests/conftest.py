"""Shared test set-up: an isolated config directory for every test, a canary key, and a `cli` runner.

* Every test gets its own ``RESTREAM_CONFIG_DIR`` (no test touches real config), ``RESTREAM_PROFILE`` and
  ``RESTREAM_FFMPEG`` cleared, ``COLUMNS=100`` and ``NO_COLOR=1`` (stable Rich output).
* ``CANARY_KEY`` is the stream key to use throughout the suite. The ``cli`` fixture fails a test whose command
  printed it without ``--show-keys``; a report hook fails any test whose captured output contains it.
* ``cli(*args, input=None, env=None, subprocess=False)`` runs the real CLI and returns
  ``(exit_code, stdout, stderr)``: in-process through Typer's CliRunner (fast, the bulk), or as
  ``python -m restream`` in a child process (end to end). An unexpected Python exception fails the test.
"""

from __future__ import annotations

import os
import subprocess as sp
import sys
from pathlib import Path

import pytest

CANARY_KEY = "CANARY-k3y?s_bl=1&s_psm=1&a=Z|[x]:y\\'q w-Ωé-tail9"
"""A long stream key with ``? & = : | [ ] \\ '``, a space and non-ASCII characters."""

_CANARY_MARK = "CANARY-k3y"  # the raw head: what a leak would most likely contain


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point restream at a fresh config directory (returned; it does not exist yet)."""
    folder = tmp_path / "config"
    monkeypatch.setenv("RESTREAM_CONFIG_DIR", str(folder))
    for var in ("RESTREAM_PROFILE", "RESTREAM_FFMPEG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    return folder


@pytest.fixture
def profile_path(config_dir: Path):
    """``profile_path(name="default")``: where a profile's TOML file lives in the test's config dir."""

    def where(name: str = "default") -> Path:
        return config_dir / "profiles" / f"{name}.toml"

    return where


def assert_no_canary(text: str, what: str = "output") -> None:
    assert _CANARY_MARK not in text and CANARY_KEY not in text, f"the canary key leaked into {what}:\n{text}"


class CLI:
    def __init__(self) -> None:
        from typer.testing import CliRunner

        self._runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
                 subprocess: bool = False, timeout: float = 30) -> tuple[int, str, str]:
        args = tuple(str(a) for a in args)
        if subprocess:
            full_env = {**os.environ, **(env or {})}
            proc = sp.run([sys.executable, "-m", "restream", *args], input=input, capture_output=True,
                          text=True, encoding="utf-8", env=full_env, timeout=timeout)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            from restream.cli import app

            result = self._runner.invoke(app, list(args), input=input, env=env, prog_name="restream")
            exc = result.exception
            if exc is not None and not isinstance(exc, SystemExit):
                raise AssertionError(f"restream {' '.join(args)} raised {exc!r}") from exc
            code, out, err = result.exit_code, result.stdout, result.stderr
        if "--show-keys" not in args:
            assert_no_canary(out, f"stdout of: restream {' '.join(args)}")
            assert_no_canary(err, f"stderr of: restream {' '.join(args)}")
        return code, out, err


@pytest.fixture
def cli() -> CLI:
    return CLI()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fail, loudly, any test whose captured stdout/stderr/log contains the canary key."""
    outcome = yield
    report = outcome.get_result()
    for section, text in report.sections:
        if section.endswith(report.when) and _CANARY_MARK in text:
            report.outcome = "failed"
            report.longrepr = f"the canary stream key appeared in captured output ({section})"
            break


@pytest.fixture
def procs(tmp_path: Path):
    """A ``support.Procs``: receivers, proxies and ``restream go`` children, reaped by PID in teardown."""
    from support import Procs

    p = Procs(tmp_path)
    yield p
    p.close()


@pytest.fixture
def add(cli):
    """``add(name, url, key)``: ``restream add NAME --url URL --key-stdin`` with the key on stdin."""

    def do(name: str, url: str, key: str, *extra: str) -> None:
        code, out, err = cli("add", name, "--url", url, "--key-stdin", *extra, input=key + "\n")
        assert code == 0, err

    return do


# -- the rerun policy ------------------------------------------------------------------------------------------------

MAX_RERUNS = 1


def _rerun_policy_problems(item) -> list[str]:
    """What is wrong with ``item``'s rerun marker (pytest-rerunfailures' ``flaky``), if anything."""
    from support import RERUN_ON

    problems = []
    for node, marker in item.iter_markers_with_node("flaky"):
        if node is not item:
            problems.append(f"a rerun marker on {type(node).__name__.lower()} {node.name}: mark each test instead")
        if marker.args or marker.kwargs.get("reruns", 1) > MAX_RERUNS:
            problems.append(f"reruns={marker.kwargs.get('reruns', marker.args)}: at most {MAX_RERUNS}")
        only = marker.kwargs.get("only_rerun")
        if not only or any(not (isinstance(e, type) and issubclass(e, RERUN_ON)) for e in only):
            problems.append("a rerun only on a timing failure: only_rerun from support.RERUN_ON (use @timing)")
        if AssertionError not in marker.kwargs.get("rerun_except", ()):
            problems.append("rerun_except=[AssertionError] (use @timing)")
        if not (item.get_closest_marker("e2e") or item.get_closest_marker("interop")):
            problems.append("a pure test never reruns")
        if item.get_closest_marker("no_rerun"):
            problems.append("marked no_rerun")
    return problems


def pytest_collection_modifyitems(config, items):
    """Enforce the rerun policy (README, Development): reruns are per test (never per module or class), at most one,
    only on a timing failure (support.RERUN_ON: a missed deadline or a bound on seconds), never for a pure test.
    Every plain ``assert`` (exit codes, states, key leaks) is final. A test that breaks the policy stops the run."""
    bad = [f"{item.nodeid}: {problem}" for item in items for problem in _rerun_policy_problems(item)]
    if getattr(config.option, "reruns", None):
        bad.append(f"--reruns {config.option.reruns}: reruns are chosen per test (@timing), not for the whole run")
    if bad:
        raise pytest.UsageError("rerun policy broken (see tests/support.py, timing):\n  " + "\n  ".join(bad))


_reruns: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.outcome == "rerun":
        crash = getattr(report.longrepr, "reprcrash", None)
        _reruns.append((report.nodeid, crash.message.splitlines()[0][:160] if crash else str(report.longrepr)[:160]))


def pytest_terminal_summary(terminalreporter):
    """Always say how many reruns the run needed, and why each one."""
    terminalreporter.write_line(f"reruns: {len(_reruns)} (timing failures only, at most {MAX_RERUNS} per test)")
    for nodeid, why in _reruns:
        terminalreporter.write_line(f"  rerun {nodeid}: {why}")


CLOSED_URL = "rtmp://127.0.0.1:9/live"  # nothing listens on the discard port: a go that got that far would fail later


@pytest.fixture
def dest(cli):
    """One destination that nothing answers: for tests of what is refused before anything connects."""
    code, _, err = cli("add", "here", "--url", CLOSED_URL, "--key", "key-here-12345")
    assert code == 0, err


def one_error_line(err: str) -> str:
    """The one ``restream: error: …`` line (a hint line may follow)."""
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("restream: error: "), err
    return lines[0]
