"""Run the fuzz targets for a while: ``python3 fuzz/run.py --minutes 10 [target ...]``.

Each target gets an equal share of the time, in rounds of hypothesis runs; the first
failure is printed (with hypothesis' shrunk example) and the exit status is 1. Failing
examples are kept in hypothesis' database (.hypothesis/), so a re-run replays them first.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from fuzz.targets import TARGETS  # noqa: E402


def run_target(name: str, seconds: float, batch: int = 500) -> tuple[int, str | None]:
    strategy, check = TARGETS[name]
    examples = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        test = settings(max_examples=batch, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck))(given(strategy)(check))
        try:
            test()
        except Exception:   # noqa: BLE001 - any escape is the finding we report
            return examples, traceback.format_exc()
        examples += batch
    return examples, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="total run time (default 10)")
    ap.add_argument("targets", nargs="*", help=f"subset of: {', '.join(TARGETS)}")
    args = ap.parse_args(argv)
    names = args.targets or list(TARGETS)
    for n in names:
        if n not in TARGETS:
            ap.error(f"unknown target {n!r}")
    logging.disable(logging.WARNING)   # damaged captures log one warning each: thousands
    try:
        return _run_all(names, args.minutes * 60 / len(names))
    finally:
        logging.disable(logging.NOTSET)    # main() also runs inside the test session


def _run_all(names: list[str], share: float) -> int:
    failed = 0
    for name in names:
        started = time.monotonic()
        examples, error = run_target(name, share)
        took = time.monotonic() - started
        status = "ok" if error is None else "FAILED"
        print(f"{name:16} {status:6} ~{examples:>8,} examples in {took:6.1f} s", flush=True)
        if error:
            failed += 1
            print(error, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
