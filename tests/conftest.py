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


def pytest_collection_modifyitems(config, items):
    """Real-process tests (e2e, interop) get up to two reruns, shown as R in the report and counted in its summary.

    They run real ffmpeg encodes and receivers on a 2-core machine with wall-clock bounds; a run that loses its
    CPU for a few seconds can miss a bound without any bug. Pure tests never rerun: a failure there is final.
    """
    for item in items:
        if item.get_closest_marker("no_rerun"):
            continue
        if item.get_closest_marker("e2e") or item.get_closest_marker("interop"):
            if item.get_closest_marker("flaky") is None:
                item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=1))
