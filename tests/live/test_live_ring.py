"""The TPACKET_V3 ring on a veth pair: every frame arrives intact, VLAN tags the kernel
took out are put back, the kernel filter drops non-VoIP traffic, statistics count."""

from __future__ import annotations

import select
import time

import pytest

from agent.capture.live import open_sources
from agent.config import CaptureSection

from _live_testlib import PCAPS, pcap_frames, require_root_netns, send_frames, veth_pair

pytestmark = pytest.mark.netns


def _collect(src, expected: int, timeout_s: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        select.select([src], [], [], 0.1)
        src.read_batches(lambda batch: got.extend(batch.frame(i) for i in range(len(batch))), flush=True)
    return got


@pytest.mark.parametrize("name", ["sipp_g711a.pcap", "vlan.pcap", "qinq.pcap", "fragmented_invite.pcap"])
def test_ring_delivers_frames_intact(name: str) -> None:
    require_root_netns()
    frames = [f for _, f in pcap_frames(PCAPS / name)]
    with veth_pair() as (a, b):
        src = open_sources([b], CaptureSection(buffer_mb=4, block_kb=64, block_timeout_ms=20))[0]
        try:
            send_frames(a, frames)
            got = _collect(src, len(frames))
            stats = src.poll_stats()
        finally:
            src.close()
    assert got == frames
    assert stats.packets == len(frames) and stats.ring_drops == 0


def test_kernel_filter_drops_other_tcp() -> None:
    require_root_netns()
    import struct
    from bench.synth import ETH_CALLER, ETH_PBX, udp_frame
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    tcp80 = ETH_PBX + ETH_CALLER + b"\x08\x00" + ip + struct.pack("!HHIIHHHH", 40000, 80, 1, 0, 0x5002, 512, 0, 0)
    udp = udp_frame(ETH_CALLER, ETH_PBX, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 4000, 4002, b"x" * 50)
    with veth_pair() as (a, b):
        src = open_sources([b], CaptureSection(buffer_mb=2, block_kb=64, block_timeout_ms=20))[0]
        try:
            send_frames(a, [tcp80] * 50 + [udp])
            got = _collect(src, 1)
            time.sleep(0.2)
            got += _collect(src, 1, 0.3)
        finally:
            src.close()
    assert got == [udp]


def test_ring_overflow_is_counted_as_ring_drops() -> None:
    require_root_netns()
    from bench.synth import ETH_CALLER, ETH_PBX, udp_frame
    frame = udp_frame(ETH_CALLER, ETH_PBX, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 4000, 4002, b"y" * 1000)
    with veth_pair() as (a, b):
        # 2 blocks of 64 KiB hold ~120 frames; nobody reads while 2,000 arrive.
        src = open_sources([b], CaptureSection(buffer_mb=0, block_kb=64, block_timeout_ms=10))[0]
        try:
            send_frames(a, [frame] * 2000)
            time.sleep(0.2)
            stats = src.poll_stats()
            got = _collect(src, 2000, 0.5)
        finally:
            src.close()
    assert stats.packets == 2000
    assert stats.ring_drops == 2000 - len(got) > 1000


def test_frames_are_gathered_into_batches_until_flushed(monkeypatch) -> None:
    """Without ``flush``, frames taken from the ring wait for LIVE_BATCH_FRAMES or
    LIVE_BATCH_WAIT_S; with it (shutdown, a quiet tap) they are delivered at once."""
    require_root_netns()
    import agent.capture.live as live

    monkeypatch.setattr(live, "LIVE_BATCH_WAIT_S", 30.0)
    frames = [f for _, f in pcap_frames(PCAPS / "sipp_g711a.pcap")][:50]
    with veth_pair() as (a, b):
        src = open_sources([b], CaptureSection(buffer_mb=4, block_kb=64, block_timeout_ms=20))[0]
        try:
            send_frames(a, frames)
            batches = []
            deadline = time.monotonic() + 0.3
            taken = 0
            while time.monotonic() < deadline:
                select.select([src], [], [], 0.05)
                taken += src.read_batches(batches.append)[0]
            assert taken == len(frames) and batches == []          # taken from the ring, held
            src.read_batches(batches.append, flush=True)
        finally:
            src.close()
    assert len(batches) == 1 and [batches[0].frame(i) for i in range(len(batches[0]))] == frames
