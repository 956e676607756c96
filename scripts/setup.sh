#!/usr/bin/env bash
# Installs everything the agent, its demo and its tests need on a fresh Debian machine
# (root, Python >= 3.11). Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v tshark  >/dev/null 2>&1 || need_apt+=(tshark)       # independent oracle (pyshark)
command -v ffmpeg  >/dev/null 2>&1 || need_apt+=(ffmpeg)       # independent decoder in audio tests
command -v sipp    >/dev/null 2>&1 || need_apt+=(sip-tester)   # real SIP software for recorded captures
command -v tcpdump >/dev/null 2>&1 || need_apt+=(tcpdump)
command -v ip      >/dev/null 2>&1 || need_apt+=(iproute2)     # network namespaces in live tests
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "setup: not root; please install: ${need_apt[*]}" >&2
    fi
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -E "^WARNING: (Running pip as|Location)" || true
"$PY" -c "import agent, numpy, av, httpx, scapy, pyshark" 
