#!/usr/bin/env bash
# Re-record the real SDES-SRTP captures pcaps/baresip_*.pcap: calls between two baresip 1.0
# user agents (Debian 12 `baresip-core`) in two network namespaces joined by a veth pair, plus
# their truth files (pcaps/baresip_truth.py).
#
#   caller  ns calln_bs_a  veth-bs-a  10.81.0.1  02:00:0a:51:00:01  "Alice" <sip:1001@10.81.0.1>
#   callee  ns calln_bs_b  veth-bs-b  10.81.0.2  02:00:0a:51:00:02  "Bob"   <sip:1002@10.81.0.2>
#
# Direct UA-to-UA (no SIP server); the callee answers automatically. Each UA plays a known
# mono WAV (generated here, deterministic: caller a repeating 300->3000 Hz chirp, callee two
# amplitude-modulated tones) with `ausrc aufile`, and writes what it hears to a file nobody
# reads (`auplay aufile`): no sound devices. The script drives the calls through each UA's
# ctrl_tcp (dial/hold/resume/hangup) and cons (DTMF keys) on the namespace's own loopback.
# baresip 1.0 offers one crypto suite (AES_CM_128_HMAC_SHA1_80) and repeats its keys in every
# re-INVITE, so these captures have no re-keying (a synthetic capture covers that).
#
#   baresip_srtp_pcmu      mediaenc=srtp (optional: RTP/AVP + a=crypto), PCMU; caller holds
#                          and resumes (re-INVITE sendonly, then sendrecv)
#   baresip_srtpmand_pcma  mediaenc=srtp-mand (RTP/SAVP), PCMA; caller DTMF "12" and callee
#                          DTMF "#" (RFC 4733, encrypted like the audio); caller holds/resumes
#   baresip_srtpmand_g722  mediaenc=srtp-mand, G.722 (16 kHz sources); the CALLEE holds and
#                          resumes (re-INVITEs from the callee's side of the dialog)
#   baresip_srtp_declined  the caller offers optional SRTP (mediaenc=srtp), the callee has no
#                          mediaenc and answers without a=crypto: plain PCMU both ways although
#                          the offer carried a key; caller holds/resumes
#
# tcpdump captures UDP on the callee's side of the veth pair. Each call lasts ~5.5 s: answer,
# 2.5 s of talk, 1.5 s on hold (baresip 1.0 stops sending both ways), 1.5 s more, BYE.
#
# Needs root (ip netns) and the Debian packages baresip-core, tcpdump, tshark, ffmpeg
# (installed with apt-get when missing) and pylibsrtp for the truth. Only namespace-local
# addresses are used; namespaces and processes are removed on exit, even on failure.
# Usage: sudo pcaps/record_baresip.sh [capture-name ...]
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NS_A=calln_bs_a
NS_B=calln_bs_b
IP_A=10.81.0.1 IP_B=10.81.0.2
MAC_A=02:00:0a:51:00:01 MAC_B=02:00:0a:51:00:02
WORK="$(mktemp -d)"
PIDS=()

need=()
command -v baresip >/dev/null || need+=(baresip-core)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v tshark >/dev/null || need+=(tshark)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

stop_pids() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_pids
    for ns in "$NS_A" "$NS_B"; do
        # Anything still running inside a namespace we made is ours.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add veth-bs-a netns "$NS_A" type veth peer name veth-bs-b netns "$NS_B"
ip -n "$NS_A" link set veth-bs-a address "$MAC_A"
ip -n "$NS_B" link set veth-bs-b address "$MAC_B"
for ns in "$NS_A" "$NS_B"; do
    # No IPv6 on the link: keeps router/neighbour solicitations out of the capture.
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip -n "$ns" link set lo up
done
ip -n "$NS_A" addr add "$IP_A/24" dev veth-bs-a
ip -n "$NS_B" addr add "$IP_B/24" dev veth-bs-b
ip -n "$NS_A" link set veth-bs-a up
ip -n "$NS_B" link set veth-bs-b up
# Pre-resolve ARP so no ARP lands in the capture.
ip -n "$NS_A" neigh add "$IP_B" lladdr "$MAC_B" dev veth-bs-a nud permanent
ip -n "$NS_B" neigh add "$IP_A" lladdr "$MAC_A" dev veth-bs-b nud permanent

# The sources: 12 s (longer than any call; aufile stops at the end of its file), 8 and 16 kHz.
python3 - "$WORK" <<'PY'
import sys, wave
import numpy as np
for rate in (8000, 16000):
    t = np.arange(12 * rate) / rate
    tm = t % 2.0                                   # chirp 300 -> 3000 Hz, restarting every 2 s
    caller = 8000 * np.sin(2 * np.pi * (300 * tm + 2700 * tm ** 2 / 4.0))
    callee = ((5000 * np.sin(2 * np.pi * 600 * t) + 3000 * np.sin(2 * np.pi * 1450 * t))
              * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)))
    for name, x in (("caller", caller), ("callee", callee)):
        with wave.open(f"{sys.argv[1]}/{name}{rate}.wav", "wb") as w:
            w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
            w.writeframes(np.round(x).astype("<i2").tobytes())
PY

# ctrl_tcp: one JSON command in a netstring; cons: key presses over UDP, each followed by
# KEYCODE_REL (0x04) so baresip ends the RFC 4733 event instead of sending it until hangup.
cat >"$WORK/ctl.py" <<'PY'
import json, socket, sys, time
if sys.argv[1] == "keys":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for key in sys.argv[2]:
        s.sendto(key.encode(), ("127.0.0.1", 5555)); time.sleep(0.12)
        s.sendto(b"\x04", ("127.0.0.1", 5555)); time.sleep(0.15)
    sys.exit(0)
msg = json.dumps({"command": sys.argv[1], "params": " ".join(sys.argv[2:]), "token": "t"}).encode()
with socket.create_connection(("127.0.0.1", 4444), timeout=5) as s:
    s.sendall(b"%d:%s," % (len(msg), msg))
    reply = b""
    while b'"response":true' not in reply:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
if b'"ok":true' not in reply:
    sys.exit(f"ctrl_tcp {sys.argv[1]}: {reply!r}")
PY

ua_config() {   # dir ip source-wav user display mediaenc codec
    local d=$1 ip=$2 src=$3 user=$4 display=$5 enc=$6 codec=$7
    mkdir -p "$d"
    cat >"$d/config" <<C
poll_method		epoll
sip_listen		$ip:5060
audio_player		aufile,$d/heard.wav
audio_source		aufile,$src
audio_alert		aufile,$d/alert.wav
rtp_ports		40000-40010
rtcp_mux		no
module_path		/usr/lib/baresip/modules
module			g711.so
module			g722.so
module			aufile.so
module			srtp.so
module			cons.so
module_tmp		account.so
module_app		menu.so
module_app		ctrl_tcp.so
cons_listen		127.0.0.1:5555
ctrl_tcp_listen		127.0.0.1:4444
C
    echo "\"$display\" <sip:$user@$ip>;regint=0;answermode=auto${enc:+;mediaenc=$enc};audio_codecs=$codec" \
        >"$d/accounts"
    : >"$d/contacts"
}

record_call() {   # name mediaenc codec source-rate holder(a|b) caller-dtmf callee-dtmf [callee-mediaenc]
    local name=$1 enc=$2 codec=$3 rate=$4 holder=$5 dtmf_a=$6 dtmf_b=$7 enc_b=${8-$2}
    local w="$WORK/$name" hold_ns
    hold_ns=$([ "$holder" = a ] && echo "$NS_A" || echo "$NS_B")
    ua_config "$w/a" "$IP_A" "$WORK/caller$rate.wav" 1001 Alice "$enc" "$codec"
    ua_config "$w/b" "$IP_B" "$WORK/callee$rate.wav" 1002 Bob "$enc_b" "$codec"
    ip netns exec "$NS_B" tcpdump -i veth-bs-b -U -n -s 0 -w "$w/cap.pcap" udp \
        >"$w/tcpdump.log" 2>&1 &
    PIDS+=($!)
    ip netns exec "$NS_A" baresip -f "$w/a" >"$w/a.log" 2>&1 &
    PIDS+=($!)
    ip netns exec "$NS_B" baresip -f "$w/b" >"$w/b.log" 2>&1 &
    PIDS+=($!)
    sleep 1.5
    ip netns exec "$NS_A" python3 "$WORK/ctl.py" dial "sip:1002@$IP_B"
    sleep 1
    if [ -n "$dtmf_a" ]; then ip netns exec "$NS_A" python3 "$WORK/ctl.py" keys "$dtmf_a"; fi
    if [ -n "$dtmf_b" ]; then ip netns exec "$NS_B" python3 "$WORK/ctl.py" keys "$dtmf_b"; fi
    sleep 1.5
    ip netns exec "$hold_ns" python3 "$WORK/ctl.py" hold
    sleep 1.5
    ip netns exec "$hold_ns" python3 "$WORK/ctl.py" resume
    sleep 1.5
    ip netns exec "$NS_A" python3 "$WORK/ctl.py" hangup
    sleep 1
    if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS/$name"; cp "$w"/*.log "$KEEP_LOGS/$name/"; fi
    stop_pids
    cp "$w/cap.pcap" "$HERE/$name.pcap"
    python3 "$HERE/baresip_truth.py" "$HERE/$name.pcap" --sources "$WORK"
    echo "wrote $HERE/$name.pcap ($(stat -c %s "$HERE/$name.pcap") bytes) and its truth file"
}

SELECTED=" $* "
selected() { [ "$SELECTED" = "  " ] || [[ "$SELECTED" == *" $1 "* ]]; }
if selected baresip_srtp_pcmu; then
    record_call baresip_srtp_pcmu srtp PCMU 8000 a "" ""
fi
if selected baresip_srtpmand_pcma; then
    record_call baresip_srtpmand_pcma srtp-mand PCMA 8000 a 12 "#"
fi
if selected baresip_srtpmand_g722; then
    # baresip names G.722 by its audio rate (16 kHz), not its RTP clock (8 kHz).
    record_call baresip_srtpmand_g722 srtp-mand G722/16000/1 16000 b "" ""
fi
if selected baresip_srtp_declined; then
    record_call baresip_srtp_declined srtp PCMU 8000 a "" "" ""
fi
