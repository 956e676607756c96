"""MAC attribution: a party's own MAC, never a router's; empty rather than wrong."""

from agent.calls.macs import MacTable

PHONE = bytes.fromhex("00908f0a393a")
ROUTER = bytes.fromhex("80fb06f045d7")


def test_a_mac_sending_for_two_ipv4_addresses_is_a_router():
    table = MacTable()
    table.observe(PHONE, "10.0.0.10")
    table.observe(ROUTER, "172.22.75.71")      # the provider's SIP server, via the ISP box
    table.observe(ROUTER, "109.3.79.137")      # the provider's media address, same box
    assert table.mac_for("10.0.0.10", PHONE) == "00908F0A393A"
    assert table.mac_for("109.3.79.137", ROUTER) == ""
    # the SIP MAC is the fallback when the RTP MAC is unusable
    assert table.mac_for("10.0.0.10", ROUTER, PHONE) == "00908F0A393A"


def test_dual_stack_phone_keeps_its_mac():
    table = MacTable()
    for ip in ("10.0.0.10", "fe80::1", "2001:db8::10", "2001:db8::beef"):
        table.observe(PHONE, ip)
    assert table.mac_for("2001:db8::10", PHONE) == "00908F0A393A"


def test_l2_networks_limit_and_formats():
    table = MacTable(l2_networks=("10.0.0.0/24",), mac_format="colon_lower")
    table.observe(PHONE, "10.0.0.10")
    assert table.mac_for("10.0.0.10", PHONE) == "00:90:8f:0a:39:3a"
    assert table.mac_for("192.0.2.1", PHONE) == ""
    assert table.mac_for("10.0.0.10", b"\0" * 6) == ""
