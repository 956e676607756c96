"""Short CI run of every fuzz target in fuzz/targets.py (the long run: fuzz/run.py)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from fuzz.targets import TARGETS

# Examples per target: enough to catch regressions in seconds; fuzz/run.py goes deep.
EXAMPLES = {"engine": 60, "capture_reader": 150, "frame_decoder": 120}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_short_run(name, caplog):
    caplog.set_level(logging.ERROR)
    strategy, check = TARGETS[name]
    # No shrinking in CI: a failure is reported as found (fuzz/run.py shrinks).
    test = settings(max_examples=EXAMPLES.get(name, 300), deadline=None, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))(given(strategy)(check))
    test()


def test_fuzz_runner_reports_ok(capsys):
    from fuzz.run import main

    assert main(["--minutes", "0.01", "uri", "rtp"]) == 0
    out = capsys.readouterr().out
    assert "uri" in out and "rtp" in out and "FAILED" not in out


@pytest.mark.parametrize("frame", [b"", b"\x00" * 10, b"\x00" * 12 + b"\x08\x00\x45" + b"\x00" * 5])
def test_engine_survives_runt_frames(tmp_path, frame):
    from collections import Counter

    from agent.config import Config
    from agent.pipeline.engine import Engine

    counters: Counter = Counter()
    engine = Engine(Config(), lambda f: None, counters=counters, workdir=tmp_path)
    engine.feed(1_000_000_000, 1, frame)
    engine.finish()
    assert counters["net.skip.truncated"] == 1
