"""deploy/grafana/calln-agent.json: every metric a panel queries is served by /metrics."""

import json
import re
import urllib.request
from collections import Counter

from agent.media.quality import observe_call
from agent.metrics import HealthLimits, MetricsServer, Snapshot
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "calln-agent.json"
_NAME = re.compile(r"\bcalln_[a-z_]+\b")


def queried_metrics(dashboard: dict) -> set[str]:
    return {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in _NAME.findall(target["expr"])}


def served_metrics() -> set[str]:
    """The sample names /metrics serves (a real server on 127.0.0.1), with one call observed."""
    counters = Counter()
    observe_call({"quality": {"caller": {"mos": 4.1, "loss_pct": 1.0, "jitter_max_ms": 9.0}}}, counters, 4.3)
    server = MetricsServer("127.0.0.1:0", lambda: Snapshot(counters=counters), HealthLimits)
    server.start()
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_queried_metric_exists():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = queried_metrics(dashboard)
    assert len(queried) >= 9                                  # the test is not vacuous
    missing = queried - served_metrics()
    assert not missing, f"dashboard queries metrics /metrics does not serve: {sorted(missing)}"


def test_dashboard_has_the_panels_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    queried = queried_metrics(dashboard)
    for name in ("calln_active_calls", "calln_recordings_written_total", "calln_call_mos_bucket",
                 "calln_call_loss_percent_bucket", "calln_call_jitter_max_milliseconds_bucket", "calln_drops_total",
                 "calln_spool_calls", "calln_upload_faults_total"):
        assert name in queried, name
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
