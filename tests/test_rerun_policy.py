"""The rerun policy itself (README, Development): one rerun at most, only for a timing failure, never for a plain
``assert``, never for a pure test, never per module. Runs a small suite with this folder's conftest.py and
support.py in a temporary directory (pytester)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

HERE = Path(__file__).parent


@pytest.fixture
def suite(pytester):
    for name in ("conftest.py", "support.py", "faultproxy.py"):
        shutil.copy(HERE / name, pytester.path / name)
    pytester.makeini("[pytest]\nmarkers =\n    e2e: e2e\n    interop: interop\n")
    return pytester


def test_only_timing_failures_rerun_and_only_once(suite):
    # mutations caught: @timing with reruns=2, without only_rerun/rerun_except, or AssertionError in RERUN_ON
    suite.makepyfile(test_probe='''
        import subprocess
        import pytest
        from support import TimingError, timing

        @pytest.mark.e2e
        @timing
        def test_bound_missed():
            raise TimingError("late")

        @pytest.mark.e2e
        @timing
        def test_deadline_missed():
            raise subprocess.TimeoutExpired("ffmpeg", 5)

        @pytest.mark.e2e
        @timing
        def test_key_leak():
            assert "CANARY" not in "xCANARYx"

        @pytest.mark.e2e
        @timing
        def test_exit_code_checked_while_handling_a_timeout():
            try:
                raise TimeoutError("t")
            except TimeoutError:
                assert 1 == 0, "exit code"
    ''')
    result = suite.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("failed"), outcomes.get("rerun")) == (4, 2), outcomes
    result.stdout.fnmatch_lines(["reruns: 2 *", "  rerun *test_bound_missed: *TimingError: late",
                                 "  rerun *test_deadline_missed: *TimeoutExpired*"])


@pytest.mark.parametrize("source, problem", [
    ("pytestmark = [pytest.mark.e2e, pytest.mark.flaky(reruns=1, only_rerun=[TimingError], "
     "rerun_except=[AssertionError])]\ndef test_x():\n    pass", "mark each test instead"),
    ("@pytest.mark.e2e\n@pytest.mark.flaky(reruns=2, only_rerun=[TimingError], rerun_except=[AssertionError])\n"
     "def test_x():\n    pass", "at most 1"),
    ("@pytest.mark.e2e\n@pytest.mark.flaky(reruns=1)\ndef test_x():\n    pass", "only on a timing failure"),
    ("@timing\ndef test_x():\n    pass", "a pure test never reruns"),
])
def test_a_marker_against_the_policy_stops_the_run(suite, source, problem):
    suite.makepyfile(test_probe="import pytest\nfrom support import TimingError, timing\n" + source)
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_x: *{problem}*"])
