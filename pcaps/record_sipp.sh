#!/usr/bin/env bash
# Re-record pcaps/sipp_g711a.pcap: ONE real call made by SIPp (Debian sip-tester) between two
# network namespaces joined by a veth pair, plus its truth file (pcaps/sipp_g711a.truth.json).
#
#   UAC  ns calln_uac  veth-calln-uac  10.77.0.1  02:00:0a:4d:00:01  SIP 5061, RTP 6000 (auto)
#   UAS  ns calln_uas  veth-calln-uas  10.77.0.2  02:00:0a:4d:00:02  SIP 5060, RTP 6000
#
# The UAC runs the built-in `uac_pcap` scenario: INVITE (PCMA + telephone-event) / 100 / 180 /
# 200 / ACK, plays /usr/share/sip-tester/g711a.pcap (236 PCMA packets, ~7 s) then an RFC 2833
# DTMF '1' (dtmf_2833_1.pcap), then BYE / 200. The UAS runs the built-in `uas` scenario with
# -rtp_echo, so every RTP packet it receives is echoed back: callee RTP = echo of caller RTP.
# tcpdump captures UDP on the UAS side of the veth pair.
#
# Needs root (ip netns). Only namespace-local addresses are used; the namespaces are deleted
# on exit, even on failure. Usage: sudo pcaps/record_sipp.sh
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/sipp_g711a.pcap"
NS_A=calln_uac
NS_B=calln_uas
WORK="$(mktemp -d)"
TCPDUMP_PID=""
UAS_PID=""

cleanup() {
    [ -n "$UAS_PID" ] && kill "$UAS_PID" 2>/dev/null || true
    [ -n "$TCPDUMP_PID" ] && kill "$TCPDUMP_PID" 2>/dev/null || true
    sleep 0.5
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add veth-calln-uac netns "$NS_A" type veth peer name veth-calln-uas netns "$NS_B"
ip -n "$NS_A" link set veth-calln-uac address 02:00:0a:4d:00:01
ip -n "$NS_B" link set veth-calln-uas address 02:00:0a:4d:00:02
# No IPv6 on the link: keeps router/neighbour solicitations out of the capture.
ip netns exec "$NS_A" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$NS_B" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip -n "$NS_A" addr add 10.77.0.1/24 dev veth-calln-uac
ip -n "$NS_B" addr add 10.77.0.2/24 dev veth-calln-uas
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set veth-calln-uac up
ip -n "$NS_B" link set veth-calln-uas up
# Pre-resolve ARP so the first SIP packet is not delayed and no ARP lands in the capture.
ip -n "$NS_A" neigh add 10.77.0.2 lladdr 02:00:0a:4d:00:02 dev veth-calln-uac nud permanent
ip -n "$NS_B" neigh add 10.77.0.1 lladdr 02:00:0a:4d:00:01 dev veth-calln-uas nud permanent

ip netns exec "$NS_B" tcpdump -i veth-calln-uas -U -n -s 0 -w "$WORK/cap.pcap" udp \
    >"$WORK/tcpdump.log" 2>&1 &
TCPDUMP_PID=$!
sleep 1

(cd "$WORK" && ip netns exec "$NS_B" sipp -sn uas -i 10.77.0.2 -p 5060 -mi 10.77.0.2 -mp 6000 \
    -rtp_echo -bg -nostdin >"$WORK/uas.log" 2>&1) || true
sleep 0.5
UAS_PID="$(ip netns pids "$NS_B" | while read -r p; do
    if grep -q sipp "/proc/$p/comm" 2>/dev/null; then echo "$p"; fi; done | head -n1)"

# uac_pcap refers to "pcap/g711a.pcap" relative to the working directory.
mkdir -p "$WORK/uac/pcap"
ln -s /usr/share/sip-tester/g711a.pcap "$WORK/uac/pcap/g711a.pcap"
ln -s /usr/share/sip-tester/dtmf_2833_1.pcap "$WORK/uac/pcap/dtmf_2833_1.pcap"
(cd "$WORK/uac" && ip netns exec "$NS_A" sipp -sn uac_pcap 10.77.0.2:5060 -i 10.77.0.1 \
    -p 5061 -mi 10.77.0.1 -mp 6000 -s service -m 1 -nostdin -timeout 30s \
    >"$WORK/uac.log" 2>&1) || { cat "$WORK/uac.log"; exit 1; }
sleep 1
kill "$TCPDUMP_PID"; wait "$TCPDUMP_PID" 2>/dev/null || true
TCPDUMP_PID=""
cp "$WORK/cap.pcap" "$OUT"
python3 "$HERE/sipp_truth.py" "$OUT"
echo "wrote $OUT ($(stat -c %s "$OUT") bytes) and its truth file"
