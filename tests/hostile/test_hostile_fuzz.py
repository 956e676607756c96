"""Short CI run of every fuzz target in fuzz/targets.py (the long run: fuzz/run.py)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.targets import TARGETS

# Examples per target: enough to catch regressions in seconds; fuzz/run.py goes deep.
EXAMPLES = {"engine": 60, "capture_reader": 150, "frame_decoder": 120}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_short_run(name, caplog):
    caplog.set_level(logging.ERROR)
    strategy, check = TARGETS[name]
    test = settings(max_examples=EXAMPLES.get(name, 300), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))(given(strategy)(check))
    test()


def test_fuzz_runner_reports_ok(capsys):
    from fuzz.run import main

    assert main(["--minutes", "0.01", "uri", "rtp"]) == 0
    out = capsys.readouterr().out
    assert "uri" in out and "rtp" in out and "FAILED" not in out
