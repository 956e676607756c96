"""The generated capture filter keeps every call: each capture in pcaps/ run through it
offline (tcpdump -r X -w Y FILTER) gives exactly the same call records."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from agent.capture.live import build_filter, compile_filter
from agent.config import CaptureSection, load_config
from agent.errors import ConfigError
from agent.replay import replay

REPO = Path(__file__).resolve().parents[2]
CAPTURES = sorted(p for p in (REPO / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng"))

needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")


def _records(path: Path) -> list[dict]:
    out = []

    def on_finished(finished) -> None:
        if finished.media_log is not None:
            finished.media_log.unlink(missing_ok=True)
        out.append(finished.record)

    engine = replay([path], load_config(env={}), on_finished, progress=False)
    engine.close()
    return sorted(out, key=lambda r: (r["start_ts_ns"], r["callid"]))


def test_filter_text_covers_sip_udp_fragments_tunnels_and_vlans() -> None:
    expr = build_filter(CaptureSection(sip_ports=(5060, 5080)))
    for part in ("udp", "tcp port 5060", "tcp port 5080", "ip[6:2] & 0x1fff != 0", "ip6 proto 44",
                 "ip proto 47", "ip proto 4", "ip proto 41", "vlan and"):
        assert part in expr
    assert expr.count("vlan") == 2                      # one tag and QinQ
    assert build_filter(CaptureSection(bpf_filter="udp port 5060")) == "udp port 5060"
    assert "or (tcp port 8080)" in build_filter(CaptureSection(bpf_extra="tcp port 8080"))


@needs_tcpdump
def test_compile_filter_gives_classic_bpf_and_rejects_nonsense() -> None:
    insns = compile_filter(build_filter(CaptureSection()), snaplen=1500)
    assert insns is not None and len(insns) > 20
    assert all(len(i) == 4 for i in insns)
    assert (0x6, 0, 0, 1500) in insns                   # "ret #snaplen": accept
    assert (0x6, 0, 0, 0) in insns                      # "ret #0": reject
    with pytest.raises(ConfigError):
        compile_filter("udp and and nonsense")


@needs_tcpdump
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_filtered_capture_gives_same_calls(capture: Path, tmp_path: Path) -> None:
    filtered = tmp_path / ("filtered" + capture.suffix)
    from agent.capture.pcapfile import read_capture
    from agent.counters import new_counters
    linktype = next(iter(read_capture(capture, new_counters())))[1]
    expr = build_filter(load_config(env={}).capture, linktype)
    proc = subprocess.run(["tcpdump", "-r", str(capture), "-w", str(filtered), expr],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    before, after = _records(capture), _records(filtered)
    assert len(after) == len(before) >= 1
    assert after == before


@needs_tcpdump
def test_filter_drops_non_voip_tcp(tmp_path: Path) -> None:
    from bench.synth import ETH_CALLER, ETH_PBX, PCAP_HEADER
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp80 = ETH_PBX + ETH_CALLER + b"\x08\x00" + ip + struct.pack("!HHIIHHHH", 40000, 80, 1, 0, 0x5002, 512, 0, 0)
    tcp5060 = tcp80[:34] + struct.pack("!HH", 40000, 5060) + tcp80[38:]
    src = tmp_path / "tcp.pcap"
    src.write_bytes(PCAP_HEADER + b"".join(struct.pack("<IIII", 1, 0, len(f), len(f)) + f
                                             for f in (tcp80, tcp5060)))
    out = tmp_path / "out.pcap"
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(out), build_filter(CaptureSection())],
                   check=True, capture_output=True)
    assert out.stat().st_size == len(PCAP_HEADER) + 16 + len(tcp5060)
