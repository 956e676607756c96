"""The record the network layers hand to SIP and RTP: one UDP datagram or one
in-order chunk of a TCP stream, with the L2 facts the call metadata needs.

IP addresses are kept in text form (``"10.0.0.1"``, ``"2001:db8::1"``) because
every consumer (SDP matching, metadata) speaks text; MACs are kept as raw
6-byte ``bytes`` and formatted only when a call record is written.
"""

from dataclasses import dataclass

UDP = "udp"
TCP = "tcp"


@dataclass(slots=True)
class Datagram:
    ts_ns: int                 # capture timestamp, integer ns since the epoch
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: str             # UDP or TCP
    payload: bytes             # UDP payload, or newly in-order TCP stream bytes
    src_mac: bytes = b""       # innermost Ethernet source MAC (b"" when the link has none)
    dst_mac: bytes = b""
    vlan_ids: tuple[int, ...] = ()
