"""Live capacity: ``calln-agent run`` recording G.711 calls to MP3 from a veth pair and
delivering them to a local receiver; how many concurrent calls one core records.

Needs root (veth, CAP_NET_RAW). Everything stays on this machine: the veth pair has no
addresses, the agent delivers to a receiver on 127.0.0.1 running in this process. No
tcpreplay needed: frames are sent with an AF_PACKET socket at their capture's own pace (as
tcpreplay replays), streamed from bench/synth.py's capture (cached under /tmp: 1,000 calls
of 60 s are 6 M frames, 1.4 GB).

Each run: ``--concurrent`` calls of ``--call-s`` seconds (PCMU both ways, 20 ms), their
starts spread over the first ``--call-s`` seconds, so all of them are up at once at the
middle of the run (100 packets/s per call: 1,000 calls = 100,000 packets/s at the peak).
After the last frame the bench waits until the receiver has stored every call, takes the
CPU of each process of the agent (capture process, supervisor with its uploader threads,
forkserver and recorder workers), then stops the agent and counts its whole tree, shutdown
included (the bench is a child subreaper and reaps every descendant). Prints drops where
each can happen (the capture's ring, the kernel's socket, the veth's backlog), calls
finished and delivered, the delay from the last frame until every call was stored, and
audio-seconds recorded per CPU-second of the agent's tree = concurrent calls one core
records. The receiver's CPU (TLS and storing, in this process) is printed apart.

    sudo python3 bench/live_rate.py [--concurrent 400,1000] [--call-s 60] [--format mp3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "live")]

from _live_testlib import AgentProcess, veth_pair, write_config  # noqa: E402
from agent.receiver import ReceiverServer  # noqa: E402
from bench.replay_rate import capture_for  # noqa: E402

PCAP_LE_USEC = 0xA1B2C3D4          # what bench/synth.py writes
DELIVERY_WAIT_S = 600.0


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")     # utime + stime


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, their children, ...)."""
    parent_of = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass                        # exited meanwhile
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parent_of.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def metric(text: str, name: str) -> int:
    m = re.search(rf"^{re.escape(name)} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def pcap_records(path: Path, chunk_bytes: int = 8 << 20) -> Iterator[tuple[int, memoryview]]:
    """(time ns, frame) of each record of a little-endian microsecond pcap, read a chunk at a
    time (a whole capture of 1,000 calls would not fit in memory as Python objects)."""
    with open(path, "rb") as fh:
        if struct.unpack("<I", fh.read(24)[:4])[0] != PCAP_LE_USEC:
            raise SystemExit(f"{path}: not a little-endian microsecond pcap")
        rest = b""
        while chunk := fh.read(chunk_bytes):
            data = rest + chunk
            view = memoryview(data)
            pos = 0
            while pos + 16 <= len(data):
                sec, usec, length, _ = struct.unpack_from("<IIII", data, pos)
                end = pos + 16 + length
                if end > len(data):
                    break
                yield sec * 1_000_000_000 + usec * 1000, view[pos + 16:end]
                pos = end
            rest = data[pos:]


@dataclass(slots=True)
class Sent:
    frames: int
    rate_pps: float          # average over the whole send
    late_s: float            # the furthest the sender fell behind the capture's clock


def send_paced(ifname: str, records: Iterable[tuple[int, bytes | memoryview]],
               sent_mono: dict[int, float] | None = None) -> Sent:
    """Send the frames at their capture's own pace (as tcpreplay does), in bursts of what is
    due within the next millisecond. ``sent_mono``: frame indexes whose send time
    (time.monotonic) the caller wants, filled in."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    start = time.monotonic()
    t0 = None
    late_s = 0.0
    n = 0
    try:
        for ts_ns, frame in records:
            if t0 is None:
                t0 = ts_ns
            due = start + (ts_ns - t0) / 1e9
            delay = due - time.monotonic()
            if delay > 0.001:
                time.sleep(delay - 0.001)       # what falls due within the next ms goes now
            elif delay < -late_s:
                late_s = -delay
            s.send(frame)
            if sent_mono is not None and n in sent_mono:
                sent_mono[n] = time.monotonic()
            n += 1
    finally:
        s.close()
    return Sent(n, n / max(1e-9, time.monotonic() - start), late_s)


def reap_descendants() -> None:
    """Wait for every orphaned descendant re-parented to this (subreaper) process."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
        except ChildProcessError:
            return


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def veth_drops(*ifnames: str) -> int:
    """Frames the veth pair dropped (either end's counters) plus the kernel's per-CPU backlog
    drops (/proc/net/softnet_stat, second column: a veth delivers through that backlog)."""
    n = sum(int(Path(f"/sys/class/net/{i}/statistics/{c}").read_text())
            for i in ifnames for c in ("tx_dropped", "rx_dropped"))
    return n + sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())


# write_config's settings for quick tests: a small ring, small upload chunks, delivered calls
# kept a day, one render worker. A capacity bench runs the agent's own defaults instead.
TEST_SETTINGS = ("buffer_mb = 16", "block_kb = 256", "block_timeout_ms = 50", "chunk_bytes = 65536",
                 "retention_days = 1", "workers = 1")


def deployed_config(path: Path, *, url: str, ca: Path, spool: Path, port: int, fmt: str, extra: str = "",
                    keep: tuple[str, ...] = ()) -> Path:
    """An agent configuration with the defaults of a deployment (``keep``: test settings still
    wanted), ``fmt`` recordings and metrics on 127.0.0.1:``port``."""
    text = write_config(path, url=url, ca=ca, spool=spool, extra=extra).read_text()
    for line in TEST_SETTINGS:
        if line not in keep:
            text = text.replace(line + "\n", "")
    path.write_text(text.replace('listen = ""', f'listen = "127.0.0.1:{port}"').replace('format = "wav"', f'format = "{fmt}"'))
    return path


def run_once(concurrent: int, call_s: float, work: Path, rx: ReceiverServer, port: int, fmt: str) -> dict:
    cap = capture_for(concurrent, call_s, 0.0, 0.0)
    tag = f"{concurrent}x{call_s:g}"
    url, ca = rx.url, rx.ca_path
    cfg = deployed_config(work / f"agent-{tag}.toml", url=url, ca=ca, spool=work / f"spool-{tag}", port=port, fmt=fmt)
    stored0 = rx.stats.get("stored", 0)
    with veth_pair() as (a, b):
        reap_descendants()
        tree0, self0 = children_cpu_s(), self_cpu_s()
        agent = AgentProcess(cfg, [b], work / f"agent-{tag}.log")
        try:
            agent.wait_ready()
            cpid = int(re.search(r"agent\.run\[(\d+)\]: capturing on", agent.log_text()).group(1))
            drops0 = veth_drops(a, b)
            main0 = time.thread_time()
            sent = send_paced(a, pcap_records(cap))
            sent_at = time.monotonic()
            while rx.stats.get("stored", 0) - stored0 < concurrent and time.monotonic() < sent_at + DELIVERY_WAIT_S:
                time.sleep(0.2)
            delivered_after_s = time.monotonic() - sent_at
            delivered = rx.stats.get("stored", 0) - stored0
            veth = veth_drops(a, b) - drops0
            rss = proc_rss_mb(cpid)
            per_process = {pid: proc_cpu_s(pid) for pid in [agent.proc.pid, *descendants(agent.proc.pid)]}
            receiver_cpu = (self_cpu_s() - self0) - (time.thread_time() - main0)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
        finally:
            agent.stop(timeout_s=600)
            reap_descendants()
        tree_cpu = children_cpu_s() - tree0
    finished = sum(int(v) for v in re.findall(r'^calln_calls_finished_total\{reason="[^"]+"\} (\d+)', metrics, re.M))
    capture_cpu = per_process[cpid]
    supervisor_cpu = per_process[agent.proc.pid]
    return {"concurrent": concurrent, "frames": sent.frames, "sent_pps": sent.rate_pps, "late_s": sent.late_s,
            "captured": metric(metrics, "calln_packets_total"),
            "ring_drops": metric(metrics, 'calln_drops_total{kind="ring"}'),
            "kernel_drops": metric(metrics, 'calln_drops_total{kind="kernel"}'), "veth_drops": veth,
            "finished": finished, "delivered": delivered, "delivered_after_s": delivered_after_s,
            "rss_mb": rss, "capture_cpu_s": capture_cpu, "supervisor_cpu_s": supervisor_cpu,
            "workers_cpu_s": sum(per_process.values()) - capture_cpu - supervisor_cpu,
            "tree_cpu_s": tree_cpu, "receiver_cpu_s": receiver_cpu,
            "audio_s_per_cpu_s": delivered * call_s / tree_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrent", default="400,1000", help="calls up at once at the peak, one run each")
    ap.add_argument("--call-s", type=float, default=60.0, help="each call's length, seconds")
    ap.add_argument("--port", type=int, default=19731, help="the agent's metrics port")
    ap.add_argument("--format", default="mp3", choices=("mp3", "wav"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (veth pair, CAP_NET_RAW)")
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    with tempfile.TemporaryDirectory(prefix="calln-live-bench-") as tmp:
        work = Path(tmp)
        rx = ReceiverServer(work / "received", username="agent", password="secret")
        rx.start()
        try:
            for concurrent in (int(c) for c in args.concurrent.split(",")):
                load = os.getloadavg()[0]
                r = run_once(concurrent, args.call_s, work, rx, args.port, args.format)
                print(f"{concurrent} concurrent {args.call_s:g} s calls, {args.format} (load {load:.2f} before, "
                      f"{os.getloadavg()[0]:.2f} after, {os.cpu_count()} cores):")
                print(f"  sent {r['frames']:,} frames ({r['sent_pps']:,.0f}/s average, sender at most "
                      f"{r['late_s'] * 1000:.0f} ms late), captured {r['captured']:,}; drops: ring {r['ring_drops']}, "
                      f"kernel {r['kernel_drops']}, veth {r['veth_drops']}")
                print(f"  calls finished {r['finished']}, delivered {r['delivered']} (the last "
                      f"{r['delivered_after_s']:.1f} s after the last frame); capture RSS {r['rss_mb']:.0f} MB")
                print(f"  CPU-s until delivered: capture {r['capture_cpu_s']:.1f}, workers {r['workers_cpu_s']:.1f}, "
                      f"supervisor (uploads) {r['supervisor_cpu_s']:.1f}; whole tree with shutdown "
                      f"{r['tree_cpu_s']:.1f}; receiver (apart) {r['receiver_cpu_s']:.1f}")
                print(f"  {r['audio_s_per_cpu_s']:,.0f} audio-s per CPU-s = concurrent calls per core", flush=True)
        finally:
            rx.stop()


if __name__ == "__main__":
    main()
