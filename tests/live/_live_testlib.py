"""Helpers for the live-capture tests: veth pairs, namespaces, frame senders, an agent runner.

Every interface and namespace name carries this process's pid and a counter, so parallel
runs never collide, and every one is deleted in a ``finally``. Only namespace-local and
loopback addresses are ever used.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PCAPS = REPO / "pcaps"
_seq = itertools.count()


def unique(prefix: str) -> str:
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{os.getpid() % 100000}{next(_seq)}"[:15]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def require_root_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("live capture tests need root (CAP_NET_RAW, ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    name = unique("cnchk")
    if _ip("netns", "add", name, check=False).returncode != 0:
        pytest.skip("cannot create network namespaces here")
    _ip("netns", "del", name, check=False)


def _quiet_link(name: str, ns: str | None = None) -> None:
    """No IPv6 on test links: keeps router/neighbour solicitations out of the capture."""
    cmd = ["sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    subprocess.run(cmd, capture_output=True)


@contextmanager
def veth_pair():
    """(a, b): a veth pair in the root namespace, up, no IPv6. Frames sent on a arrive on b."""
    a, b = unique("cna"), unique("cnb")
    _ip("link", "add", a, "type", "veth", "peer", "name", b)
    try:
        for n in (a, b):
            _quiet_link(n)
            _ip("link", "set", n, "up")
        yield a, b
    finally:
        _ip("link", "del", a, check=False)


def send_frames(ifname: str, frames, pps: float | None = None) -> int:
    """Send raw Ethernet frames on ``ifname`` (optionally paced); returns how many."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    n = 0
    start = time.monotonic()
    try:
        for frame in frames:
            if pps:
                due = start + n / pps
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            s.send(frame)
            n += 1
    finally:
        s.close()
    return n


def pcap_frames(path: Path) -> list[tuple[int, bytes]]:
    from agent.capture.pcapfile import read_capture
    from agent.counters import new_counters
    return [(r[0], r[2]) if isinstance(r, tuple) else (r.ts_ns, r.frame)
            for r in read_capture(path, new_counters())]


def paced_by_timestamp(records: list[tuple[int, bytes]], speed: float = 1.0):
    """Yield frames at their capture's own pace (speed 2.0 = twice as fast)."""
    if not records:
        return
    t0 = records[0][0]
    start = time.monotonic()
    for ts_ns, frame in records:
        due = start + (ts_ns - t0) / 1e9 / speed
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield frame


def write_config(path: Path, *, url: str, ca: Path, spool: Path, extra: str = "") -> Path:
    path.write_text(f"""
[api]
url = "{url}"
username = "agent"
ca_bundle = "{ca}"
format = "wav"
chunk_bytes = 65536

[spool]
dir = "{spool}"
retention_days = 1

[capture]
buffer_mb = 16
block_kb = 256
block_timeout_ms = 50
shutdown_timeout_s = 60

[recording]
format = "wav"
workers = 1

[metrics]
listen = ""
{extra}
""")
    return path


class AgentProcess:
    """``calln-agent run`` as a subprocess (exactly as an operator starts it)."""

    def __init__(self, config: Path, interfaces: list[str], log_path: Path, *extra: str) -> None:
        env = dict(os.environ, CALLN_PASSWORD="secret", PYTHONPATH=str(REPO))
        args = [sys.executable, "-m", "agent.cli", "--config", str(config), "run", *extra]
        for i in interfaces:
            args += ["--interface", i]
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "agent running" in self.log_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.1)
        raise AssertionError(f"agent not ready:\n{self.log_text()}")

    def stop(self, timeout_s: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
