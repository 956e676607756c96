#!/usr/bin/env bash
# Re-record pcaps/sipp_proxy_rtpengine.pcap: ONE real call from SIPp phone A through a
# Kamailio proxy with an rtpengine media relay to SIPp phone B, plus its truth file
# (pcaps/sipp_proxy_rtpengine.truth.json).
#
#   phone A  ns calln_px_a  veth-pxa  10.78.0.1  02:00:0a:4e:00:01  SIP 5061, RTP 6000
#   proxy    ns calln_px_p  veth-pxp  10.78.0.2  02:00:0a:4e:00:02  Kamailio 5060 + rtpengine
#   phone B  ns calln_px_b  veth-pxb  10.78.0.3  02:00:0a:4e:00:03  SIP 5060, RTP 6000
#   bridge   ns calln_px_br br-calln  (no address) joins the three veth peers
#
# tcpdump runs on the bridge, so the capture holds BOTH hops of the call: A <-> proxy and
# proxy <-> B, SIP (same Call-ID on both hops: Kamailio is a proxy) and RTP relayed by
# rtpengine (SDP rewritten per hop to the relay's ports).
# Phone A runs SIPp's built-in `uac_pcap` (PCMA: the first 3 s of g711a.pcap, then RFC 2833
# DTMF '1', BYE);
# phone B the built-in `uas` (its answer changed to PCMA + telephone-event) with -rtp_echo (it
# echoes every RTP packet back to the relay).
# Kamailio (pcaps/kamailio-proxy.cfg) and rtpengine (userspace forwarding only, --table=-1)
# run in the foreground in the proxy namespace and are stopped on exit.
#
# Needs root (ip netns) and the Debian packages kamailio, rtpengine-daemon, sip-tester,
# tcpdump, tshark, editcap (installed with apt-get when missing). Only namespace-local
# addresses are used; namespaces and processes are removed on exit, even on failure.
# Usage: sudo pcaps/record_proxy.sh
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/sipp_proxy_rtpengine.pcap"
NS_A=calln_px_a
NS_P=calln_px_p
NS_B=calln_px_b
NS_BR=calln_px_br
IP_A=10.78.0.1 IP_P=10.78.0.2 IP_B=10.78.0.3
MAC_A=02:00:0a:4e:00:01 MAC_P=02:00:0a:4e:00:02 MAC_B=02:00:0a:4e:00:03
WORK="$(mktemp -d)"
PIDS=()

need=()
command -v kamailio >/dev/null || need+=(kamailio)
command -v rtpengine >/dev/null || need+=(rtpengine-daemon)
command -v sipp >/dev/null || need+=(sip-tester)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v tshark >/dev/null || need+=(tshark)
command -v editcap >/dev/null || need+=(wireshark-common)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update
    # No recommends: rtpengine would pull in its kernel module (dkms); we forward in userspace.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for ns in "$NS_A" "$NS_P" "$NS_B" "$NS_BR"; do
        # Anything still running inside a namespace we made (e.g. SIPp -bg) is ours.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_BR"
ip -n "$NS_BR" link add br-calln type bridge
ip netns exec "$NS_BR" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip netns exec "$NS_BR" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
add_node() {   # tag namespace ip mac: a namespace with one veth port on the bridge
    local tag=$1 ns=$2 ip=$3 mac=$4
    ip netns add "$ns"
    # No IPv6 on the links: keeps router/neighbour solicitations out of the capture.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip -n "$NS_BR" link add "br-px$tag" type veth peer name "veth-px$tag" netns "$ns"
    ip -n "$ns" link set "veth-px$tag" address "$mac"
    ip -n "$ns" addr add "$ip/24" dev "veth-px$tag"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "veth-px$tag" up
    ip -n "$NS_BR" link set "br-px$tag" master br-calln
    ip -n "$NS_BR" link set "br-px$tag" up
}
add_node a "$NS_A" "$IP_A" "$MAC_A"
add_node p "$NS_P" "$IP_P" "$MAC_P"
add_node b "$NS_B" "$IP_B" "$MAC_B"
ip -n "$NS_BR" link set br-calln up
# Pre-resolve ARP so no ARP lands in the capture (every pair that talks).
ip -n "$NS_A" neigh add "$IP_P" lladdr "$MAC_P" dev veth-pxa nud permanent
ip -n "$NS_B" neigh add "$IP_P" lladdr "$MAC_P" dev veth-pxb nud permanent
ip -n "$NS_P" neigh add "$IP_A" lladdr "$MAC_A" dev veth-pxp nud permanent
ip -n "$NS_P" neigh add "$IP_B" lladdr "$MAC_B" dev veth-pxp nud permanent
sleep 1

ip netns exec "$NS_BR" tcpdump -i br-calln -U -n -s 0 -w "$WORK/cap.pcap" udp \
    >"$WORK/tcpdump.log" 2>&1 &
PIDS+=($!)

# rtpengine: userspace only (--table=-1), no config file, NG control on loopback.
ip netns exec "$NS_P" rtpengine --config-file=none --foreground --log-stderr --log-level=6 \
    --table=-1 --interface="$IP_P" --listen-ng=127.0.0.1:2223 --port-min=30000 \
    --port-max=30099 --pidfile="$WORK/rtpengine.pid" >"$WORK/rtpengine.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_P" kamailio -f "$HERE/kamailio-proxy.cfg" -DD -E -Y "$WORK" -w "$WORK" \
    -P "$WORK/kamailio.pid" >"$WORK/kamailio.log" 2>&1 &
PIDS+=($!)
sleep 2

# Phone B answers with the offered codecs (PCMA + telephone-event). The built-in uas answers
# PCMU whatever is offered; rtpengine would then TRANSCODE (new SSRCs, new sequence numbers,
# 20 ms repacketisation), which is not the plain relay this capture is about.
# (sipp -sd exits with 99 after dumping the scenario.)
{ sipp -sd uas || true; } | sed -e 's|RTP/AVP 0$|RTP/AVP 8 101|' \
    -e 's|a=rtpmap:0 PCMU/8000|a=rtpmap:8 PCMA/8000\n      a=rtpmap:101 telephone-event/8000|' \
    >"$WORK/uas_pcma.xml"
grep -q 'RTP/AVP 8 101' "$WORK/uas_pcma.xml"
(cd "$WORK" && ip netns exec "$NS_B" sipp -sf "$WORK/uas_pcma.xml" -i "$IP_B" -p 5060 -mi "$IP_B" -mp 6000 \
    -rtp_echo -bg -nostdin >"$WORK/uas.log" 2>&1) || true
sleep 0.5
for p in $(ip netns pids "$NS_B"); do
    if grep -q sipp "/proc/$p/comm" 2>/dev/null; then PIDS+=("$p"); fi
done

# uac_pcap refers to "pcap/g711a.pcap" relative to the working directory.
mkdir -p "$WORK/uac/pcap"
# Only the first PLAYED_PACKETS of g711a.pcap (30 ms each): four RTP legs of the full 7 s
# would make the capture ~300 KB; the tests keep captures under 200 KB.
PLAYED_PACKETS=100
editcap -r /usr/share/sip-tester/g711a.pcap "$WORK/uac/pcap/g711a.pcap" "1-$PLAYED_PACKETS"
ln -s /usr/share/sip-tester/dtmf_2833_1.pcap "$WORK/uac/pcap/dtmf_2833_1.pcap"
(cd "$WORK/uac" && ip netns exec "$NS_A" sipp -sn uac_pcap "$IP_P:5060" -i "$IP_A" \
    -p 5061 -mi "$IP_A" -mp 6000 -s service -m 1 -nostdin -timeout 30s \
    >"$WORK/uac.log" 2>&1) || {
    cat "$WORK/uac.log"; tail -n 30 "$WORK/kamailio.log" "$WORK/rtpengine.log"; exit 1; }
sleep 1
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
if [ -n "${KEEP_LOGS:-}" ]; then cp "$WORK"/*.log "$KEEP_LOGS"/; fi
cp "$WORK/cap.pcap" "$OUT"
python3 - "$OUT" <<'PY'
"""Truth of the proxied call: expected values from the scenario and the namespace setup; what
SIPp/rtpengine make up per run (Call-ID, tags, time, relay ports, SSRCs) is read with tshark.
Exits non-zero when the capture's RTP disagrees with the scenario."""
import datetime as dt, json, subprocess, sys
from collections import Counter
from pathlib import Path

A, P, B = "10.78.0.1", "10.78.0.2", "10.78.0.3"
PACKETS = 100 + 8   # PLAYED_PACKETS of g711a.pcap + distinct (SSRC, seq) DTMF packets (see sipp_truth.py)
pcap = Path(sys.argv[1])

def fields(flt, names, extra=()):
    cmd = ["tshark", "-n", "-r", str(pcap), *extra, "-Y", flt, "-T", "fields"]
    for n in names:
        cmd += ["-e", n]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [l.split("\t") for l in out.splitlines() if l.strip()]

inv = fields("sip.Method == INVITE", ["frame.time_epoch", "sip.Call-ID", "sip.from.tag", "ip.src"])
ok = fields("sip.Status-Code == 200 && sip.CSeq.method == INVITE", ["sip.to.tag"])
rtp = fields("rtp", ["frame.time_epoch", "ip.src", "udp.srcport", "ip.dst", "rtp.ssrc", "rtp.seq"],
             ["-o", "rtp.heuristic_rtp:TRUE"])
# Two INVITEs (one per hop), same Call-ID and From tag.
if len(inv) != 2 or len({(c, t) for _, c, t, _ in inv}) != 1 or not ok:
    sys.exit(f"expected the INVITE on both hops with one Call-ID, got {inv}")
t_inv, callid, from_tag = float(inv[0][0]), inv[0][1], inv[0][2]
hop = lambda s, d: {(r[4], r[5]) for r in rtp if r[1] == s and r[3] == d}
legs = {"A->P": hop(A, P), "P->B": hop(P, B), "B->P": hop(B, P), "P->A": hop(P, A)}
counts = {k: len(v) for k, v in legs.items()}
if set(counts.values()) != {PACKETS}:
    sys.exit(f"RTP counts per hop differ from the scenario ({PACKETS}): {counts}")
# rtpengine forwards without touching SSRC or sequence numbers: the second hop carries
# the same (SSRC, seq) packets as the first.
if legs["A->P"] != legs["P->B"] or legs["B->P"] != legs["P->A"]:
    sys.exit("rtpengine changed SSRC/seq across hops")
first = lambda s: min(float(r[0]) for r in rtp if r[1] == s)
ssrcs = lambda s: sorted({int(r[4], 16) for r in rtp if r[1] == s})
call = {
    "callid": callid, "from_tag": from_tag, "to_tag": ok[0][0],
    "callerphone": "sipp", "callername": "sipp",
    "destinationphone": "service", "destinationname": "service",
    "startdatetimeutc": dt.datetime.fromtimestamp(int(t_inv), dt.timezone.utc)
                          .strftime("%Y-%m-%d %H:%M:%S"),
    "answered": True, "end_reason": "bye", "final_status": 200,
    "callermacaddress": "02000A4E0001", "destinationmacaddress": "02000A4E0003",
    "callermediaendpoint": f"{A}:6000", "destinationmediaendpoint": f"{B}:6000",
    "partial_start": False, "transport": "udp", "callerdtmf": "1",
    "audio": {
        "caller_tone_hz": None, "callee_tone_hz": None,
        "caller_rtp_packets": PACKETS, "callee_rtp_packets": PACKETS,
        "caller_ssrcs": ssrcs(A), "callee_ssrcs": ssrcs(B),
        "first_rtp_offset_ms": {"caller": int((first(A) - t_inv) * 1000),
                                "callee": int((first(B) - t_inv) * 1000)},
        # The relay's copies (both hops it sends on), distinct (SSRC, seq) per SSRC: for
        # the tshark oracle, which otherwise sees them as RTP the truth does not explain.
        "relay_rtp": [{"ip": P, "ssrc": int(s, 16), "packets": n} for s, n in sorted(
            Counter(s for s, _ in legs["P->B"] | legs["P->A"]).items())],
    },
}
relay_ports = sorted({int(r[2]) for r in rtp if r[1] == P})
truth = {
    "capture": pcap.name,
    "description": "Real call through a proxy and a media relay (record_proxy.sh): SIPp uac_pcap "
                   f"phone A {A} -> Kamailio 5.6 proxy {P} with rtpengine (userspace) -> SIPp uas "
                   f"-rtp_echo phone B {B}; captured on the bridge, so both hops are in it.",
    "generator": "pcaps/record_proxy.sh",
    "calls": [call],
    "notes": "Both hops carry the same Call-ID/tags (proxy, not B2BUA) and the same RTP "
             f"(SSRC, seq): rtpengine relays from {P} ports {relay_ports} without rewriting "
             "them, so each direction is counted once. Call-ID, tags, start time, SSRCs and "
             "first_rtp_offset_ms are read from the capture; the rest is the scenario's "
             "(see sipp_g711a.truth.json for the DTMF and echo conventions).",
}
out = pcap.with_name(pcap.name.rsplit(".", 1)[0] + ".truth.json")
out.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
PY
echo "wrote $OUT ($(stat -c %s "$OUT") bytes) and its truth file"
