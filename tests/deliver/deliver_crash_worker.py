"""Subprocess of the crash tests: run the uploader over a spool until idle, then exit 0.

Usage: python deliver_crash_worker.py SPOOL_DIR URL CA_PATH [RETENTION_DAYS]
       python deliver_crash_worker.py enqueue SPOOL_DIR AUDIO_PATH INDEX [unanswered]
       python deliver_crash_worker.py enqueue-batch SPOOL_DIR AUDIO_PATH... (calls 0, 1, ... in one batch)
The parent kills it with SIGKILL (at random times, or via CALLN_TEST_KILL_AT).
"""

import sys
from pathlib import Path

from agent.config import ApiSection
from agent.deliver.spool import Incoming, Spool
from agent.deliver.uploader import Uploader

sys.path.insert(0, str(Path(__file__).parent))
from deliver_helpers import make_record  # noqa: E402


def enqueue(spool_dir: str, audio: str, index: str, *flags: str) -> int:
    record = make_record(int(index), answered="unanswered" not in flags)
    spool = Spool(Path(spool_dir), retention_days=1.0)
    return 0 if spool.enqueue(record, Path(audio), "audio/mpeg") else 4


def enqueue_batch(spool_dir: str, *audio: str) -> int:
    spool = Spool(Path(spool_dir), retention_days=1.0)
    done, error = spool.enqueue_many([Incoming(make_record(i), Path(a), "audio/mpeg") for i, a in enumerate(audio)])
    return 0 if error is None and all(done) else 4


def main() -> int:
    if sys.argv[1] == "enqueue":
        return enqueue(*sys.argv[2:])
    if sys.argv[1] == "enqueue-batch":
        return enqueue_batch(*sys.argv[2:])
    spool_dir, url, ca = sys.argv[1:4]
    retention_days = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    api = ApiSection(url=url, username="agent", password="secret", ca_bundle=ca, chunk_bytes=4096,
                     connect_timeout_s=5, read_timeout_s=5, write_timeout_s=5)
    up = Uploader(Spool(Path(spool_dir), retention_days=retention_days), api,
                  backoff_base_s=0.02, backoff_max_s=0.2, poll_s=0.05)
    ok = up.run_until_idle(deadline_s=60)
    up.close()
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
