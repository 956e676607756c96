#!/usr/bin/env bash
# Installs the agent, its demo and its tests on a Debian-like machine, with the system's own
# Python (PEP 668 "externally managed" is fine: nothing is installed into it):
#   1. tcpdump (the live capture's kernel filter) and, with --tests (what scripts/test.sh
#      passes), the system tools the tests use (tshark, ffmpeg, SIPp, iproute2, Kamailio) with
#      apt, when root. The demo needs none of them;
#   2. .venv in this checkout, made by the newest Python >= 3.11 found on PATH (python3-venv
#      is installed with apt when that Python lacks it);
#   3. the agent (editable) with its test extras into .venv;
#   4. calln-agent on PATH: a symlink in /usr/local/bin when root, else in ~/.local/bin.
# Safe to run again: each step is skipped when already done. Any failure stops the script
# with the real error.  PYTHON=/path/to/python3.x picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
is_root=false; [ "$(id -u)" = 0 ] && is_root=true
with_tests=false
case "${1:-}" in
    --tests) with_tests=true ;;
    "") ;;
    *) echo "usage: bash scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac

apt_install() {
    if ! $is_root; then
        echo "setup: not root; install with: sudo apt-get install $*" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "setup: apt-get install $*"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. system tools: tcpdump compiles the live capture's kernel filter (`run` warns without it);
#    the rest only the tests use
need_apt=()
command -v tcpdump >/dev/null 2>&1 || need_apt+=(tcpdump)
if $with_tests; then
    command -v tshark  >/dev/null 2>&1 || need_apt+=(tshark)       # independent oracle (pyshark)
    command -v ffmpeg  >/dev/null 2>&1 || need_apt+=(ffmpeg)       # independent decoder in audio tests
    command -v sipp    >/dev/null 2>&1 || need_apt+=(sip-tester)   # real SIP software for recorded captures
    command -v ip      >/dev/null 2>&1 || need_apt+=(iproute2)     # network namespaces in live tests
    command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || need_apt+=(kamailio)  # a real HEP sender (tests/hep)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if $is_root; then
        apt_install "${need_apt[@]}"
        # The tests start Kamailio themselves, in network namespaces; a distribution service
        # listening on the host's port 5060 beside a PBX is not wanted.
        if [[ " ${need_apt[*]} " == *" kamailio "* ]] && [ -d /run/systemd/system ]; then
            if systemctl cat kamailio.service >/dev/null 2>&1; then
                systemctl disable --now kamailio.service
            fi
        fi
    else
        echo "setup: not root; the tests that need them will skip: ${need_apt[*]}" >&2
    fi
fi

# 2. the virtual environment
version_of() {   # prints e.g. "3 12" for a Python >= 3.11, nothing otherwise
    "$1" -c 'import sys; v = sys.version_info; print(v[0], v[1]) if v >= (3, 11) else None' 2>/dev/null || true
}
if [ ! -x "$VENV/bin/python" ] || [ -z "$(version_of "$VENV/bin/python")" ]; then
    PY=${PYTHON:-}
    if [ -z "$PY" ]; then
        best=0
        for name in python3.14 python3.13 python3.12 python3.11 python3; do
            command -v "$name" >/dev/null 2>&1 || continue
            read -r major minor <<<"$(version_of "$name")" || continue
            [ -n "${minor:-}" ] || continue
            if [ "$minor" -gt "$best" ]; then best=$minor; PY=$(command -v "$name"); fi
            minor=
        done
    fi
    if [ -z "$PY" ] || [ -z "$(version_of "$PY")" ]; then
        echo "setup: no Python >= 3.11 found on PATH (apt-get install python3, or set PYTHON=)" >&2
        exit 1
    fi
    read -r major minor <<<"$(version_of "$PY")"
    if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install "python$major.$minor-venv"   # Debian/Ubuntu split venv out of python3
    fi
    echo "setup: creating $VENV with $PY (Python $major.$minor)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi

# 3. the agent and its test extras, again only when pyproject.toml changed
stamp=$VENV/.calln-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $ROOT"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
   || ! "$VENV/bin/python" -c "import agent, numpy, av, httpx, scapy, pyshark" >/dev/null 2>&1; then
    echo "setup: installing the agent and its test extras into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
    "$VENV/bin/python" -c "import agent, numpy, av, httpx, scapy, pyshark"
    echo "$want" >"$stamp"
fi

# 4. calln-agent on PATH
if $is_root; then bindir=/usr/local/bin; else bindir=$HOME/.local/bin; fi
target=$VENV/bin/calln-agent
if [ "$(readlink "$bindir/calln-agent" 2>/dev/null)" != "$target" ]; then
    mkdir -p "$bindir"
    ln -sfn "$target" "$bindir/calln-agent"
    echo "setup: $bindir/calln-agent -> $target"
fi
case ":$PATH:" in
    *":$bindir:"*) ;;
    *) echo "setup: $bindir is not on your PATH; add it (export PATH=\"$bindir:\$PATH\") or run $target" >&2 ;;
esac
