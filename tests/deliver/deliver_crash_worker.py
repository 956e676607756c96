"""Subprocess of the crash tests: run the uploader over a spool until idle, then exit 0.

Usage: python deliver_crash_worker.py SPOOL_DIR URL CA_PATH
The parent kills it with SIGKILL (at random times, or via CALLN_TEST_KILL_AT).
"""

import sys
from pathlib import Path

from agent.config import ApiSection
from agent.deliver.spool import Spool
from agent.deliver.uploader import Uploader


def main() -> int:
    spool_dir, url, ca = sys.argv[1:4]
    api = ApiSection(url=url, username="agent", password="secret", ca_bundle=ca, chunk_bytes=4096,
                     connect_timeout_s=5, read_timeout_s=5, write_timeout_s=5)
    up = Uploader(Spool(Path(spool_dir), retention_days=1.0), api,
                  backoff_base_s=0.02, backoff_max_s=0.2, poll_s=0.05)
    ok = up.run_until_idle(deadline_s=60)
    up.close()
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
