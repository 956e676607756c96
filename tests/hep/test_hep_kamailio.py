"""A real HEP sender: Kamailio 5.6 (Debian's) with siptrace in HEP mode proxies a SIPp call
between network namespaces and mirrors every SIP message it receives and sends to the agent's
HEP listener (in its own namespace, with an auth key). The call must come out as from a SPAN
capture of the same traffic (tcpdump on the bridge joining the namespaces).

siptrace mirrors SIP only (the RTP flows phone to phone and is not in the HEP feed), so the
comparison is of the call's signalling facts; recordings from HEP RTP are covered by
test_hep_capture/test_hep_run. The HEP datagrams on the bridge are also captured: `inspect` of
that capture gives the listener's record.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.live._live_testlib import require_root_netns, unique

pytestmark = [pytest.mark.netns, pytest.mark.slow]

A, P, B, C = "10.79.0.1", "10.79.0.2", "10.79.0.3", "10.79.0.4"
KEY = "kam-hep-k3y"
# Call facts that come from RTP (not in a siptrace feed: streams, RFC 4733 key presses) or L2
# (HEP carries no MACs).
NOT_IN_SIPTRACE = {"callermacaddress", "destinationmacaddress", "media", "streams", "capture_files",
                   "no_audio_reason", "callerdtmf", "destinationdtmf", "dtmf", "keypresses", "quality"}
# Kamailio stamps a message when it handles it, not when the wire carried it: within this.
STAMP_TOLERANCE_NS = 20_000_000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _ns_exec(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def _wait_for(path: Path, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path}: {path.read_text(errors='replace') if path.exists() else ''}")


def _inspect(capture: Path, **env: str) -> list[dict]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_")}
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "inspect", "--json", "-q", str(capture)],
                          capture_output=True, text=True, cwd=REPO, env=dict(clean, **env), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _signalling(record: dict) -> dict:
    """The record without RTP/L2 facts and without times (compared with a tolerance)."""
    return {k: v for k, v in record.items() if k not in NOT_IN_SIPTRACE and not k.endswith("_ts_ns")
            and k not in ("startdatetimeutc", "duration_ms")}


def _assert_same_call(hep: dict, span: dict) -> None:
    assert _signalling(hep) == _signalling(span)
    stamps = [k for k in span if k.endswith("_ts_ns") and span[k]]
    assert "start_ts_ns" in stamps and "answer_ts_ns" in stamps and "end_ts_ns" in stamps, stamps
    for k in stamps:
        assert abs(hep[k] - span[k]) <= STAMP_TOLERANCE_NS, (k, hep[k], span[k])
    assert abs(hep["duration_ms"] - span["duration_ms"]) <= STAMP_TOLERANCE_NS // 1_000_000


def test_kamailio_siptrace_hep_gives_the_span_call(tmp_path: Path):
    require_root_netns()
    for tool in ("kamailio", "sipp", "tcpdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh --tests installs it)")
    tag = unique("")
    ns = {n: f"cnhep{n}{tag}"[:15] for n in ("br", "a", "p", "b", "c")}
    procs: list[subprocess.Popen] = []
    with ExitStack() as stack:
        def cleanup() -> None:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
            for name in ns.values():
                for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                          text=True).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)     # what sipp -bg left behind in our namespaces
                    except ProcessLookupError:
                        pass
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        stack.callback(cleanup)

        _ip("netns", "add", ns["br"])
        _ip("-n", ns["br"], "link", "add", "br0", "type", "bridge")
        for i, (node, addr) in enumerate((("a", A), ("p", P), ("b", B), ("c", C)), start=1):
            _ip("netns", "add", ns[node])
            subprocess.run(_ns_exec(ns[node], "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"))
            _ip("-n", ns["br"], "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0",
                "netns", ns[node])
            _ip("-n", ns[node], "link", "set", "eth0", "address", f"02:00:0a:4f:00:0{i}")
            _ip("-n", ns[node], "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns[node], "link", "set", "lo", "up")
            _ip("-n", ns[node], "link", "set", "eth0", "up")
            _ip("-n", ns["br"], "link", "set", f"port{i}", "master", "br0")
            _ip("-n", ns["br"], "link", "set", f"port{i}", "up")
        _ip("-n", ns["br"], "link", "set", "br0", "up")

        span, hep = tmp_path / "span.pcap", tmp_path / "hep.pcap"
        for out, flt in ((span, "udp and not port 9060"), (hep, "udp port 9060")):
            log = open(tmp_path / f"{out.stem}.tcpdump.log", "w")
            procs.append(subprocess.Popen(_ns_exec(ns["br"], "tcpdump", "-i", "br0", "-U", "-n", "-s", "0",
                                                   "-w", str(out), flt), stdout=log, stderr=log))
            _wait_for(tmp_path / f"{out.stem}.tcpdump.log", "listening on")

        collector_err = tmp_path / "collector.err"
        with open(tmp_path / "collector.out", "w") as cout, open(collector_err, "w") as cerr:
            collector = subprocess.Popen(_ns_exec(ns["c"], sys.executable, "-m", "tests.hep._hep_collect",
                                                  "udp:0.0.0.0:9060", KEY),
                                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                         stdout=cout, stderr=cerr)
        procs.append(collector)
        _wait_for(collector_err, "ready")

        cfg = (Path(__file__).parent / "kamailio-hep.cfg").read_text()
        for k, v in {"@PROXY@": P, "@CALLEE@": B, "@COLLECTOR@": C, "@KEY@": KEY}.items():
            cfg = cfg.replace(k, v)
        (tmp_path / "kamailio.cfg").write_text(cfg)
        kam_log = tmp_path / "kamailio.log"
        with open(kam_log, "w") as klog:
            procs.append(subprocess.Popen(_ns_exec(ns["p"], "kamailio", "-f", str(tmp_path / "kamailio.cfg"),
                                                   "-DD", "-E", "-Y", str(tmp_path), "-w", str(tmp_path),
                                                   "-P", str(tmp_path / "kamailio.pid")),
                                          stdout=klog, stderr=subprocess.STDOUT))
        time.sleep(2)
        assert procs[-1].poll() is None, kam_log.read_text()

        uas_log = open(tmp_path / "uas.log", "w")
        procs.append(subprocess.Popen(_ns_exec(ns["b"], "sipp", "-sn", "uas", "-i", B, "-p", "5060",
                                               "-mi", B, "-mp", "6000", "-rtp_echo", "-nostdin"),
                                      cwd=tmp_path, stdout=uas_log, stderr=subprocess.STDOUT))
        time.sleep(0.5)
        (tmp_path / "uac" / "pcap").mkdir(parents=True)
        for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
            os.symlink(f"/usr/share/sip-tester/{name}", tmp_path / "uac" / "pcap" / name)
        uac = subprocess.run(_ns_exec(ns["a"], "sipp", "-sn", "uac_pcap", f"{P}:5060", "-i", A, "-p", "5061",
                                      "-mi", A, "-mp", "6000", "-s", "service", "-m", "1", "-nostdin",
                                      "-timeout", "40s"),
                             cwd=tmp_path / "uac", capture_output=True, text=True, timeout=60)
        assert uac.returncode == 0, uac.stdout[-2000:] + kam_log.read_text()[-2000:]
        time.sleep(1)
        collector.send_signal(signal.SIGTERM)
        collector.wait(30)
        for p in procs[:2]:                               # tcpdump: flush and close the files
            p.terminate()
            p.wait(10)
    live = [json.loads(line) for line in (tmp_path / "collector.out").read_text().splitlines() if line]
    counters = json.loads(collector_err.read_text().splitlines()[-1])
    span_records = _inspect(span, CALLN_CAPTURE_HEP_PORTS="")

    assert len(span_records) == 1 and len(live) == 1, (span_records, live, counters)
    assert counters.get("hep.datagrams", 0) >= 10, counters
    assert not {k: v for k, v in counters.items() if k.startswith("hep.skip.")}, counters
    _assert_same_call(live[0], span_records[0])
    assert live[0]["callermediaendpoint"] == f"{A}:6000" and live[0]["destinationmediaendpoint"] == f"{B}:6000"
    assert live[0]["callerphone"] == "sipp" and live[0]["destinationphone"] == "service"
    assert live[0]["answered"] and live[0]["end_reason"] == "bye"
    # The captured HEP (the same datagrams, on the bridge) gives the listener's call...
    (from_capture,) = _inspect(hep, CALLN_HEP_AUTH_KEY=KEY)
    _assert_same_call(from_capture, live[0])
    # ...and nothing without the right key.
    assert _inspect(hep, CALLN_HEP_AUTH_KEY="other") == []
