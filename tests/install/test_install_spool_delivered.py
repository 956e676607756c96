"""``calln-agent spool delivered [--since]``: what the ledger says was uploaded, joined with
the call's record and final state while the spool still keeps it; a read creates nothing."""

from __future__ import annotations

import json
import time

from agent.deliver.ledger_view import delivered_calls, parse_since
from agent.deliver.spool_state import fresh_state
from tests.install._install_testlib import cli

DAY = 86400.0


def _spool(tmp_path, now: float):
    spool = tmp_path / "spool"
    (spool / "ledger" / "0a").mkdir(parents=True)
    (spool / "ledger" / "ff").mkdir()
    (spool / "ledger" / "0a" / "11").write_text(f"delivered kept-1 {now - 3600:.0f}\n")
    (spool / "ledger" / "ff" / "22").write_text(f"delivered gone-2 {now - 3 * DAY:.0f}\n")
    (spool / "ledger" / "ff" / "33").write_text("queued waiting-3\n")
    (spool / "ledger" / "ff" / "44").write_text(f"skipped unanswered-4 {now:.0f}\n")
    (spool / "ledger" / "ff" / "55").write_text(
        f'delivered summed-5 {now - 2 * DAY:.0f} {{"state":"delivered_unconfirmed",'
        f'"startdatetimeutc":"2026-11-30 08:00:00","callerphone":"2005","destinationphone":"3005"}}\n')
    call = spool / "calls" / "kept-1"
    call.mkdir(parents=True)
    (call / "state.json").write_text(json.dumps(dict(fresh_state("kept-1", "k1"), state="delivered_unconfirmed")))
    (call / "record.json").write_text(json.dumps({"startdatetimeutc": "2026-12-01 09:00:00",
                                                  "callerphone": "2001\x1b[2J",
                                                  "destinationphone": "3001"}))
    return spool


def test_delivered_calls_from_the_ledger(tmp_path) -> None:
    now = time.time()
    spool = _spool(tmp_path, now)
    calls = delivered_calls(spool)
    assert [(c.id, c.state) for c in calls] == [("gone-2", None),
                                                 ("summed-5", "delivered_unconfirmed"),
                                                 ("kept-1", "delivered_unconfirmed")]
    assert calls[2].record["destinationphone"] == "3001" and calls[0].record is None
    assert calls[1].record == {"startdatetimeutc": "2026-11-30 08:00:00", "callerphone": "2005",
                               "destinationphone": "3005"}      # from the ledger line alone
    assert [c.id for c in delivered_calls(spool, parse_since("1d", now))] == ["kept-1"]


def test_parse_since() -> None:
    assert parse_since("90m", 10_000.0) == 10_000.0 - 5400
    assert parse_since("2026-12-04", 0) == parse_since("2026-12-04T00:00:00+00:00", 0)


def test_spool_delivered_command(tmp_path) -> None:
    spool = _spool(tmp_path, time.time())
    before = sorted(p.relative_to(spool) for p in spool.rglob("*"))
    proc = cli("spool", "--dir", str(spool), "delivered")
    out = proc.stdout.decode().splitlines()
    assert proc.returncode == 0, proc.stderr
    assert out[0].endswith("gone-2  (written by an older version: no summary)")
    assert out[1].endswith("summed-5  delivered_unconfirmed  2026-11-30 08:00:00  2005 -> 3005")
    assert out[2].endswith("kept-1  delivered_unconfirmed  2026-12-01 09:00:00  2001\\x1b[2J -> 3001")
    assert b"3 call(s) delivered" in proc.stderr
    recent = cli("spool", "--dir", str(spool), "delivered", "--since", "24h", "--json")
    rows = [json.loads(line) for line in recent.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == ["kept-1"] and rows[0]["callerphone"] == "2001\x1b[2J"
    assert sorted(p.relative_to(spool) for p in spool.rglob("*")) == before      # nothing created
    bad = cli("spool", "--dir", str(spool), "delivered", "--since", "yesterday")
    assert bad.returncode == 2 and b"expected e.g. 24h" in bad.stderr
