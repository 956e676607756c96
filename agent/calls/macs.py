"""Which Ethernet MAC belongs to a party, and which MACs are routers.

A party's MAC is the source MAC of the RTP it sent, else of its SIP. That is only
the device's own MAC when the device is on the tapped segment: a MAC seen sending
for many IP addresses is a router (or the PBX's uplink) and is never reported, and
when ``l2_networks`` is configured only addresses inside it get a MAC. Empty is
better than wrong.
"""

from __future__ import annotations

import ipaddress

MAC_FORMATS = ("plain_upper", "colon_lower", "colon_upper")
MAX_IPS_TRACKED = 64   # per MAC: enough to call it a router, bounded memory


class MacTable:
    def __init__(self, *, router_ip_threshold: int = 1, l2_networks: tuple[str, ...] = (),
                 mac_format: str = "plain_upper") -> None:
        if mac_format not in MAC_FORMATS:
            raise ValueError(f"mac_format must be one of {MAC_FORMATS}")
        self.router_ip_threshold = router_ip_threshold
        self.networks = [ipaddress.ip_network(n, strict=False) for n in l2_networks]
        self.mac_format = mac_format
        self._ips_by_mac: dict[bytes, set[str]] = {}

    def observe(self, mac: bytes, ip: str) -> None:
        """Note that ``mac`` sent a packet from ``ip`` (called for SIP and new media, not per RTP)."""
        if len(mac) != 6:
            return
        ips = self._ips_by_mac.get(mac)
        if ips is None:
            ips = self._ips_by_mac[mac] = set()
        if len(ips) < MAX_IPS_TRACKED:
            ips.add(ip)

    def is_router(self, mac: bytes) -> bool:
        """A device has one IPv4 address; a router forwards for many. IPv6 hosts use several
        addresses (link-local, stable, temporary), so IPv6 gets four times the allowance."""
        ips = self._ips_by_mac.get(mac, ())
        v6 = sum(1 for ip in ips if ":" in ip)
        return len(ips) - v6 > self.router_ip_threshold or v6 > 4 * self.router_ip_threshold

    def mac_for(self, ip: str, *candidates: bytes) -> str:
        """The formatted MAC for a party at ``ip``, from the first usable candidate, or ""."""
        if self.networks:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return ""
            if not any(addr in net for net in self.networks):
                return ""
        for mac in candidates:
            if len(mac) == 6 and mac != b"\0" * 6 and not self.is_router(mac):
                return self.format(mac)
        return ""

    def format(self, mac: bytes) -> str:
        text = mac.hex()
        if self.mac_format == "plain_upper":
            return text.upper()
        pairs = ":".join(text[i:i + 2] for i in range(0, 12, 2))
        return pairs.upper() if self.mac_format == "colon_upper" else pairs
