"""Where quality shows: the [quality] mos_below setting, the Prometheus histograms, the inspect column."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from agent.config import ConfigError, load_config
from agent.media.quality import observe_call, summary
from agent.metrics import Snapshot, render_metrics
from tests.conftest import PCAPS, REPO

GOOD = {"mos": 4.3, "loss_pct": 0.2, "jitter_max_ms": 3.0}
BAD = {"mos": 3.1, "loss_pct": 6.0, "jitter_max_ms": 40.0}


def test_mos_below_is_validated(tmp_path):
    path = tmp_path / "agent.toml"
    for value, ok in (("0", True), ("3.6", True), ("4.5", True), ("0.5", False), ("7", False), ("-1", False)):
        path.write_text(f"[quality]\nmos_below = {value}\n")
        if ok:
            assert load_config(path).quality.mos_below == float(value)
        else:
            with pytest.raises(ConfigError, match=r"\[quality\] mos_below"):
                load_config(path)


def test_a_call_below_the_threshold_is_marked_and_counted():
    counters = Counter()
    bad = {"quality": {"caller": dict(GOOD), "callee": dict(BAD)}}
    good = {"quality": {"caller": dict(GOOD), "callee": dict(GOOD)}}
    assert observe_call(bad, counters, 3.6) is True
    assert observe_call(good, counters, 3.6) is False
    assert observe_call({"streams": []}, counters, 3.6) is False          # no audio: nothing observed
    assert bad["quality"]["mos_below"] == 3.6 and "mos_below" not in good["quality"]
    assert observe_call({"quality": {"caller": dict(BAD)}}, counters, 0.0) is False     # 0 = off
    assert counters["quality.mos_below"] == 1
    assert counters["quality.observations"] == 5


def test_histograms_are_cumulative_with_sum_and_count():
    counters = Counter()
    observe_call({"quality": {"caller": dict(GOOD), "callee": dict(BAD)}}, counters, 3.6)
    text = render_metrics(Snapshot(counters=counters))
    lines = set(text.splitlines())
    assert "# TYPE calln_call_mos histogram" in lines
    assert 'calln_call_mos_bucket{le="3.0"} 0' in lines
    assert 'calln_call_mos_bucket{le="3.5"} 1' in lines        # 3.1
    assert 'calln_call_mos_bucket{le="4.4"} 2' in lines        # and 4.3
    assert 'calln_call_mos_bucket{le="+Inf"} 2' in lines
    assert "calln_call_mos_sum 7.4" in lines and "calln_call_mos_count 2" in lines
    assert 'calln_call_loss_percent_bucket{le="0.5"} 1' in lines
    assert 'calln_call_loss_percent_bucket{le="10.0"} 2' in lines
    assert 'calln_call_jitter_max_milliseconds_bucket{le="5.0"} 1' in lines
    assert 'calln_call_jitter_max_milliseconds_bucket{le="50.0"} 2' in lines
    assert "calln_calls_mos_below_total 1" in lines
    assert "quality." not in text                              # not repeated as internal events


def test_summary_text():
    assert summary({"caller": GOOD, "callee": BAD}) == "MOS 4.3/3.1, loss 6.0 %"
    assert summary({"caller": None, "callee": GOOD}) == "MOS -/4.3, loss 0.2 %"
    assert summary({"caller": GOOD, "callee": BAD, "mos_below": 3.6}).endswith(" !")
    assert summary(None) == "-"


def _inspect(*args):
    proc = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_inspect_shows_the_column_and_marks_below_threshold(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text("[quality]\nmos_below = 4.3\n")
    capture = PCAPS / "dtmf_rfc4733.pcap"                        # ~2 % loss on the caller's stream
    (record,) = [json.loads(line) for line in _inspect("--config", str(config), "inspect", "--json", "-q",
                                                         str(capture)).splitlines()]
    caller, callee = record["quality"]["caller"], record["quality"]["callee"]
    assert caller["loss_pct"] > 1.0 and callee["loss_pct"] == 0.0
    assert caller["mos"] < 4.3 <= callee["mos"]
    assert record["quality"]["mos_below"] == 4.3
    table = _inspect("--config", str(config), "inspect", "-q", str(capture)).splitlines()
    assert "quality (caller/callee)" in table[0]
    assert f"MOS {caller['mos']:.1f}/{callee['mos']:.1f}, loss {caller['loss_pct']:.1f} % !" in table[1]
