"""Live capture from network interfaces: AF_PACKET with a TPACKET_V3 ring, BPF, drop counters.

Owns: opening one packet socket per interface (promiscuous, memory-mapped TPACKET_V3
ring of ``buffer_mb``), building the BPF filter text from the configuration,
compiling it with ``tcpdump -dd`` (run offline against an empty capture of the
right link type, so no privileges and no interface are needed) and attaching it
with ``SO_ATTACH_FILTER``, walking ring blocks into ``(ts_ns, linktype, frame)``
records, and reading the kernel's drop counters (``PACKET_STATISTICS``, which reset
on every read, plus the interface's ``rx_dropped``).
Does not own: what happens to the frames (the engine), processes, signals (agent.run).

Pure Python over ``mmap``: no libpcap binding. Without tcpdump the socket runs
unfiltered (the engine copes; it just sees more traffic).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from agent.capture.batches import FrameBatch
from agent.config import CaptureSection
from agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
# Live frames reach the engine in batches of up to this many frames, or after this long.
LIVE_BATCH_FRAMES = 65_536
LIVE_BATCH_WAIT_S = 1.0
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

# tpacket_block_desc: version u32, offset_to_priv u32, then tpacket_hdr_v1:
# block_status u32 (@8), num_pkts u32 (@12), offset_to_first_pkt u32 (@16).
_BLOCK_HDR = struct.Struct("=III").unpack_from
_BLOCK_STATUS = 8
# tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status (u32), mac, net (u16),
# rxhash, vlan_tci (u32), vlan_tpid (u16).
_PKT_HDR = struct.Struct("=IIIIIIHHIIH").unpack_from
_STATUS_ZERO = struct.Struct("=I").pack_into
_STATS = struct.Struct("=III")          # tpacket_stats_v3: packets, drops, freeze_q_cnt
_VLAN = struct.Struct("!HH").pack


# ---------------------------------------------------------------------- BPF

def build_filter(capture: CaptureSection, linktype: int = 1) -> str:
    """The capture filter text (tcpdump syntax) the configuration asks for.

    SIP on the configured ports (UDP and TCP), every UDP datagram (RTP ports are
    negotiated in SDP, so they cannot be listed), IPv4 non-first fragments (they carry
    no ports) and IPv6 fragments, tunnels (GRE/ERSPAN, IP-in-IP, 6in4; VXLAN is UDP)
    and the same behind one or two VLAN tags (the kernel strips the outer tag before
    the filter runs; QinQ leaves the inner one in the frame). VLAN variants exist only
    on Ethernet (``linktype`` 1): other link types carry no tags libpcap can match.
    """
    if capture.bpf_filter.strip():
        return capture.bpf_filter.strip()
    tcp_ports = " or ".join(f"tcp port {p}" for p in capture.sip_ports) or "tcp port 5060"
    inner = (f"udp or {tcp_ports} or (ip[6:2] & 0x1fff != 0) or ip6 proto 44 "
             f"or ip proto 47 or ip proto 4 or ip proto 41 or ip6 proto 47 or ip6 proto 4 or ip6 proto 41")
    if capture.bpf_extra.strip():
        inner += f" or ({capture.bpf_extra.strip()})"
    if linktype != LINKTYPE_ETHERNET:
        return inner
    # `vlan` shifts the offsets of everything after it, so the tagged variants nest.
    return f"({inner}) or (vlan and (({inner}) or (vlan and ({inner}))))"


def _empty_capture(linktype: int, snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


def compile_filter(expr: str, *, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 65535,
                   tcpdump: str | None = None) -> list[tuple[int, int, int, int]] | None:
    """Classic BPF instructions for ``expr`` (None: no tcpdump here). ConfigError on a bad expression."""
    tcpdump = tcpdump or shutil.which("tcpdump") or next(
        (p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump") if os.access(p, os.X_OK)), None)
    if tcpdump is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".pcap") as fh:
        fh.write(_empty_capture(linktype, snaplen))
        fh.flush()
        proc = subprocess.run([tcpdump, "-r", fh.name, "-s", str(snaplen), "-dd", expr],
                              capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ConfigError(f"capture filter {expr!r} does not compile: {proc.stderr.strip()}")
    insns = []
    for line in proc.stdout.splitlines():
        line = line.strip().strip(",").strip("{}").strip()
        if not line:
            continue
        code, jt, jf, k = (int(x.strip(), 0) for x in line.split(","))
        insns.append((code, jt, jf, k))
    if not insns:
        raise ConfigError(f"capture filter {expr!r} compiled to nothing")
    return insns


def attach_filter(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with a ``struct sock_fprog`` built by hand."""
    prog = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HP", len(insns), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# ---------------------------------------------------------------------- interfaces

def interface_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def interface_linktype(name: str) -> int:
    try:
        arphrd = int(Path("/sys/class/net", name, "type").read_text())
    except (OSError, ValueError):
        raise AgentError(f"interface {name!r} does not exist") from None
    if arphrd in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return LINKTYPE_ETHERNET
    if arphrd == ARPHRD_NONE:
        return LINKTYPE_RAW
    raise AgentError(f"interface {name!r}: link type {arphrd} is not supported (Ethernet or raw IP)")


def _rx_dropped(name: str) -> int:
    try:
        return int(Path("/sys/class/net", name, "statistics", "rx_dropped").read_text())
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------- the ring

@dataclass(slots=True)
class RingStats:
    packets: int = 0        # seen by the socket (after the filter), ring drops included
    ring_drops: int = 0     # the ring was full (the agent did not keep up)
    freeze_q: int = 0
    kernel_drops: int = 0   # the interface's rx_dropped since the socket opened


class LiveSource:
    """One interface: a packet socket with a TPACKET_V3 receive ring."""

    def __init__(self, interface: str, *, buffer_mb: int = 256, block_kb: int = 1024,
                 block_timeout_ms: int = 100, snaplen: int = 65535, promiscuous: bool = True,
                 filter_insns: list[tuple[int, int, int, int]] | None = None) -> None:
        self.interface = interface
        self.linktype = interface_linktype(interface)
        page = mmap.PAGESIZE
        self.block_size = max(page, (block_kb * 1024 + page - 1) // page * page)
        self.block_nr = max(2, (buffer_mb * 1024 * 1024) // self.block_size)
        frame_size = 2048                 # only a hint for V3 (variable-size frames)
        try:
            # Protocol 0: nothing is queued before the filter is attached and the bind below.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise AgentError("live capture needs CAP_NET_RAW (run as root or give the service "
                             "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN)") from None
        self.sock = sock
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            if filter_insns:
                attach_filter(sock, filter_insns)
            req = struct.pack("=IIIIIII", self.block_size, self.block_nr, frame_size,
                              self.block_size * self.block_nr // frame_size, block_timeout_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.mm = mmap.mmap(sock.fileno(), self.block_size * self.block_nr,
                                mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((interface, ETH_P_ALL))
            if promiscuous:
                ifindex = socket.if_nametoindex(interface)
                mreq = struct.pack("=iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            sock.close()
            raise AgentError(f"cannot capture on {interface!r}: {exc.strerror or exc}") from None
        self._block = 0
        self._held = _Held()
        self.stats = RingStats()
        self._rx_dropped0 = _rx_dropped(interface)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_batches(self, deliver: Callable[[FrameBatch], None], max_blocks: int = 64, *,
                     flush: bool = False) -> tuple[int, int]:
        """Copy every ready block out of the ring (up to its last frame) and give it back to the
        kernel; hand the frames to ``deliver`` as FrameBatches, the replay path's unit (the
        engine treats live and replayed frames alike). Frames are gathered across calls up to
        LIVE_BATCH_FRAMES or LIVE_BATCH_WAIT_S (``flush``: now), because the batch path's cost
        per call and batch is what a ring block of ~100 ms would otherwise pay over and over.
        Returns (packets, bytes) taken from the ring by this call."""
        mm = self.mm
        bs = self.block_size
        nr = self.block_nr
        linktype = self.linktype
        block = self._block
        total = 0
        nbytes = 0
        held = self._held
        for _ in range(max_blocks):
            base = block * bs
            status, num, first = _BLOCK_HDR(mm, base + _BLOCK_STATUS)
            if not status & TP_STATUS_USER:
                break
            offset = held.size
            pkt = first
            for _number in range(num):
                nxt, sec, nsec, caplen, _len, st, mac, _net, _hash, tci, tpid = _PKT_HDR(mm, base + pkt)
                if st & TP_STATUS_VLAN_VALID and linktype == LINKTYPE_ETHERNET:
                    # The kernel took the outer 802.1Q tag out: put it back (as libpcap does).
                    tag = (tpid if st & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100) << 16 | tci
                    held.tags.append((len(held.starts), tag))
                held.starts.append(offset + pkt + mac)
                held.lens.append(caplen)
                held.stamps.append(sec * 1_000_000_000 + nsec)
                nbytes += caplen
                end = pkt + mac + caplen
                pkt += nxt
            used = end if num else 0
            held.bufs.append(mm[base:base + used])
            held.size += used
            _STATUS_ZERO(mm, base + _BLOCK_STATUS, TP_STATUS_KERNEL)   # give the block back
            block = (block + 1) % nr
            total += num
            if num and not held.since:
                held.since = time.monotonic()
        self._block = block
        if held.starts and (flush or len(held.starts) >= LIVE_BATCH_FRAMES
                            or time.monotonic() - held.since >= LIVE_BATCH_WAIT_S):
            self._held = _Held()
            deliver(_block_batch(b"".join(held.bufs), held.starts, held.lens, held.stamps, held.tags, linktype))
        return total, nbytes

    def poll_stats(self) -> RingStats:
        """Accumulate the kernel counters (PACKET_STATISTICS resets on every read)."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
            packets, drops, freeze = _STATS.unpack(raw[:_STATS.size])
        except OSError:
            packets = drops = freeze = 0
        s = self.stats
        s.packets += packets
        s.ring_drops += drops
        s.freeze_q += freeze
        s.kernel_drops = max(0, _rx_dropped(self.interface) - self._rx_dropped0)
        return s

    def close(self) -> None:
        try:
            self.mm.close()
        except (BufferError, ValueError):
            pass
        self.sock.close()


@dataclass(slots=True)
class _Held:
    """Frames copied out of the ring, not yet delivered: the blocks' bytes and, per frame, its
    offset into their concatenation, length and time; (frame number, tag) where the kernel
    took an 802.1Q tag out."""
    bufs: list[bytes] = field(default_factory=list)
    size: int = 0
    starts: list[int] = field(default_factory=list)
    lens: list[int] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    tags: list[tuple[int, int]] = field(default_factory=list)
    since: float = 0.0


def _block_batch(buf: bytes, starts: list[int], lens: list[int], stamps: list[int],
                 tagged: list[tuple[int, int]], linktype: int) -> FrameBatch:
    """Ring frames as a FrameBatch; frames whose outer 802.1Q tag the kernel took out get it
    back (as libpcap does), so VLAN ids reach the decoder."""
    if not tagged:
        return FrameBatch(buf, np.array(starts, dtype=np.int64), np.array(lens, dtype=np.int64),
                          np.array(stamps, dtype=np.int64), linktype)
    frames = [buf[a:a + n] for a, n in zip(starts, lens)]
    for number, tag in tagged:
        frame = frames[number]
        frames[number] = frame[:12] + _VLAN(tag >> 16, tag & 0xFFFF) + frame[12:]
    sizes = np.fromiter(map(len, frames), dtype=np.int64, count=len(frames))
    offsets = np.zeros(len(frames), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return FrameBatch(b"".join(frames), offsets, sizes, np.array(stamps, dtype=np.int64), linktype)


def open_sources(interfaces: Iterable[str], capture: CaptureSection) -> list[LiveSource]:
    """Open every interface with the configured filter. AgentError if one cannot be opened."""
    interfaces = list(interfaces)
    if not interfaces:
        raise ConfigError("no capture interface: set [capture] interfaces or pass --interface")
    compiled: dict[int, list | None] = {}
    sources: list[LiveSource] = []
    try:
        for name in interfaces:
            linktype = interface_linktype(name)
            if linktype not in compiled:
                compiled[linktype] = compile_filter(build_filter(capture, linktype), linktype=linktype,
                                                    snaplen=capture.snaplen)
                if compiled[linktype] is None:
                    log.warning("tcpdump not found: capturing on %s without a kernel filter", name)
            sources.append(LiveSource(name, buffer_mb=max(1, capture.buffer_mb // len(interfaces)),
                                      block_kb=capture.block_kb, block_timeout_ms=capture.block_timeout_ms,
                                      snaplen=capture.snaplen, promiscuous=capture.promiscuous,
                                      filter_insns=compiled[linktype]))
    except BaseException:
        for s in sources:
            s.close()
        raise
    return sources
