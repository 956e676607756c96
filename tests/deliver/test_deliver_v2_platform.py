"""Issue 18: v2 ``telephonyplatform`` is the User-Agent / Server header of the PBX side, null when
no side is a known PBX (legs.py ``telephony_platform``)."""

from __future__ import annotations

import os
from pathlib import Path

from scapy.all import IP, UDP, Raw, rdpcap, wrpcap

from agent.deliver.client import api_body_v2
from tests.conftest import PCAPS, run_inspect

PHONE_UA = b"CallN-TestPhone/1.0"
PBX_UA = b"Acme-PBX-Server/1.0"      # same length: no IP/UDP length to fix
PBX_IP = "10.0.0.1"


def _pbx_renamed(out: Path) -> Path:
    """pbx_b2bua.pcap with the PBX's own User-Agent / Server headers saying ``PBX_UA`` (the
    generator gives every party the same one, which could not tell the sides apart)."""
    packets = rdpcap(str(PCAPS / "pbx_b2bua.pcap"))
    renamed = 0
    for pkt in packets:
        if IP in pkt and pkt[IP].src == PBX_IP and Raw in pkt and PHONE_UA in pkt[Raw].load:
            pkt[Raw].load = pkt[Raw].load.replace(PHONE_UA, PBX_UA)
            pkt[UDP].chksum = 0                # IPv4: no checksum
            renamed += 1
    assert renamed > 0
    path = out / "pbx_b2bua_named.pcap"
    wrpcap(str(path), packets)
    return path


def test_pbx_side_names_the_platform_on_every_leg(tmp_path: Path) -> None:
    records = run_inspect(_pbx_renamed(tmp_path))
    assert len(records) == 2
    for record in records:
        # leg 1: phone -> PBX (the PBX is the callee); leg 2: PBX -> phone (the caller).
        assert api_body_v2(record)["telephonyplatform"] == PBX_UA.decode(), record["user_agents"]


def test_phone_to_phone_has_no_platform() -> None:
    [record] = run_inspect(PCAPS / "basic_udp.pcap")
    assert record["user_agents"]["callee"] == PHONE_UA.decode()
    assert api_body_v2(record)["telephonyplatform"] is None


def test_configured_pbx_address_names_the_platform() -> None:
    # basic_udp's callee (10.0.0.20) declared a PBX: its header becomes the platform.
    env = dict(os.environ, CALLN_SIP_PBX_ADDRESSES="10.0.0.20")
    [record] = run_inspect(PCAPS / "basic_udp.pcap", env=env)
    assert api_body_v2(record)["telephonyplatform"] == PHONE_UA.decode()
