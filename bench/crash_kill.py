"""Crash anywhere, many times: ``replay --deliver`` SIGKILLed at random moments, restarted
each time, until every call is stored by the receiver exactly once.

Each run replays one capture group (distinct calls per group) into the spool and uploads
it to a local receiver (the project's own, over TLS, answering some requests 500). A kill
lands either at a named kill point (``CALLN_TEST_KILL_AT``, the n-th pass, n random) —
replay, rendering, encoding, each spool step and each upload step — or after a random
delay. After ``--kills`` kills every group is run once more without kills, and the
receiver's store is counted: calls, stored once, twice or more, missing.

    python bench/crash_kill.py [--kills 100] [--groups 40] [--calls 3] [--seed 1] [-v]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.receiver import Faults, ReceiverServer  # noqa: E402
from bench.synth import write_calls  # noqa: E402

# (moment, kill point or None for a random delay, the largest n to draw for "point:n")
MOMENTS = [
    ("replay", "replay_batch", 6),
    ("rendering", "render_submitted", 4),
    ("encoded", "rendered", 4),
    ("spool: audio moved in", "spool_audio_moved", 4),
    ("spool: tmp complete", "spool_tmp_written", 4),
    ("spool: claimed", "spool_claimed", 4),
    ("spool: published", "spool_published", 4),
    ("upload: after POST answer", "after_create_response", 3),
    ("upload: after POST saved", "after_create_state", 3),
    ("upload: last-chunk flag", "after_last_chunk_flag", 3),
    ("upload: before a chunk", "before_chunk", 6),
    ("upload: after a chunk answer", "after_chunk_response", 6),
    ("upload: after the last answer", "after_last_chunk_response", 3),
    ("spool: ledger delivered", "spool_ledger_delivered", 3),
    ("spool: deleting", "spool_delete_renamed", 3),
    ("upload: after delivered", "after_delivered", 3),
    ("random time", None, 0),
]


def make_groups(work: Path, groups: int, calls: int, duration_s: float) -> list[Path]:
    """``groups`` captures of ``calls`` calls each, distinct between groups: Call-IDs (the
    synthetic writer names calls bench-<n>: rewritten in place, same length, to g<group>-)
    and start times (group g starts g hours later, so the receiver tells them apart)."""
    base = work / "base.pcap"
    write_calls(base, calls=calls, concurrent=calls, duration_s=duration_s)
    raw = base.read_bytes()
    out = []
    for g in range(groups):
        data = bytearray(raw.replace(b"bench-", f"g{g:04d}-".encode()))
        at = 24                                  # pcap header; then records of 16 + caplen bytes
        while at < len(data):
            ts_s, _us, caplen, _len = struct.unpack_from("<IIII", data, at)
            struct.pack_into("<I", data, at, ts_s + 3600 * g)
            at += 16 + caplen
        path = work / f"group{g:02d}.pcap"
        path.write_bytes(bytes(data))
        out.append(path)
    return out


def write_config(path: Path, url: str, ca: Path, spool: Path) -> Path:
    path.write_text(f"""
[api]
url = "{url}"
username = "agent"
ca_bundle = "{ca}"
format = "wav"
chunk_bytes = 16384
read_timeout_s = 10
[spool]
dir = "{spool}"
retention_days = 0
min_free_mb = 0
[recording]
format = "wav"
workers = 1
""")
    return path


def run_once(cfg: Path, capture: Path, kill_at: str | None, delay_s: float | None,
             timeout_s: float = 60.0) -> tuple[bool, int, str]:
    """One ``replay --deliver``: (killed, exit status, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CALLN_PASSWORD="secret", PYTHONFAULTHANDLER="1")
    cmd = [sys.executable, "-m", "agent.cli", "-v", "--config", str(cfg), "replay", str(capture),
           "--deliver", "-q", "--deadline-s", "30"]
    env.pop("CALLN_TEST_KILL_AT", None)
    if kill_at:
        env["CALLN_TEST_KILL_AT"] = kill_at
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if delay_s is not None:
        try:
            proc.wait(delay_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)         # faulthandler: every thread's stack on stderr
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        _, err = proc.communicate()
        return False, -1, f"HUNG for {timeout_s:.0f} s (killed)\n" + err.decode(errors="replace")
    return proc.returncode == -signal.SIGKILL, proc.returncode, err.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--groups", type=int, default=40)
    ap.add_argument("--calls", type=int, default=3, help="calls per group")
    ap.add_argument("--duration-s", type=float, default=3.0)
    ap.add_argument("--fail-rate", type=float, default=0.0,
                    help="receiver answers this fraction 500 (retries then back off for up to minutes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per run")
    ap.add_argument("--max-runs", type=int, default=0, help="give up after this many runs (0: 8 x kills)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash-kill-") as tmp:
        work = Path(tmp)
        groups = make_groups(work, args.groups, args.calls, args.duration_s)
        rx = ReceiverServer(work / "rx", cert_dir=work / "certs", username="agent", password="secret",
                            seed=args.seed, faults=Faults(fail_rate=args.fail_rate) if args.fail_rate else None)
        url, ca = rx.start()
        cfg = write_config(work / "agent.toml", url, ca, work / "spool")
        kills: collections.Counter[str] = collections.Counter()
        runs = 0
        done: set[Path] = set()
        errors: list[str] = []
        started = time.monotonic()
        try:
            max_runs = args.max_runs or 8 * args.kills
            while sum(kills.values()) < args.kills and runs < max_runs:
                # a group whose calls are not all delivered yet offers every moment to a kill
                pending = [g for g in groups if g not in done]
                capture = pending[0] if pending else groups[runs % len(groups)]
                moment, point, top = rng.choice(MOMENTS)
                if point:
                    killed, status, err = run_once(cfg, capture, f"{point}:{rng.randint(1, top)}", None)
                else:
                    killed, status, err = run_once(cfg, capture, None, rng.uniform(0.3, 2.5))
                runs += 1
                if args.verbose:
                    print(f"run {runs}: {capture.name} {moment}: {'killed' if killed else f'exit {status}'}",
                          flush=True)
                    if status not in (0, 1) and not killed:
                        print(err[-3000:], flush=True)
                if killed:
                    kills[moment] += 1
                elif status == 0:
                    done.add(capture)
                elif status not in (0, 1) or "Traceback" in err:
                    errors.append(f"run {runs} ({moment}): exit {status}\n{err[-2000:]}")
            for capture in groups:                   # clean runs: everything completes
                _, status, err = run_once(cfg, capture, None, None)
                runs += 1
                if status != 0:
                    errors.append(f"final run of {capture.name}: exit {status}\n{err[-2000:]}")
        finally:
            rx.stop()
        stored = collections.Counter((c.meta["startdatetimeutc"], c.meta["callerphone"])
                                     for c in rx.stored_calls())
        expected = args.groups * args.calls
        once = sum(1 for n in stored.values() if n == 1)
        more = sum(1 for n in stored.values() if n > 1)
        print(f"kills: {sum(kills.values())} in {runs} runs ({time.monotonic() - started:.0f} s wall, "
              f"machine shared)")
        for moment, _, _ in MOMENTS:
            print(f"  {moment:32} {kills[moment]}")
        print(f"calls: {expected}, stored: {sum(stored.values())}, stored once: {once}, "
              f"stored twice or more: {more}, missing: {expected - len(stored)}")
        for e in errors:
            print("ERROR", e)
        return 0 if once == expected and not more and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
