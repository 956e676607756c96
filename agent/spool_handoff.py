"""Rendered calls handed to the spool by a thread of their own, in batches (group commit).

The recorder passes each rendered call on from the process pool's management thread, the
thread that also hands the workers their next jobs. Spooling a call there (several fsyncs:
milliseconds each, tens of milliseconds on a busy disk) idles the workers meanwhile, and a
burst of endings is spooled one call, and one set of fsyncs, at a time. Here the recorder
only queues the call: one writer thread takes what is queued, up to ``BATCH_MAX_CALLS`` at a
time, and spools it with one ``put_many`` (``SpoolSink.put_many``: the batch's fsyncs
shared), then calls ``on_passed`` for each call. The live render queue's bound counts a call
until then, so calls waiting here stay bounded when the disk is slow.

Calls with a recording are taken first: after a burst of thousands of media-less endings
(parked, never uploaded) a real call waits for one batch, not for all of them.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from agent.delivery import BATCH_MAX_CALLS
from agent.recorder import Rendered, call_name

log = logging.getLogger(__name__)


class SpoolHandoff:
    """``handoff(rendered)`` queues a call for the writer thread; ``close()`` spools what is
    queued and stops the thread."""

    def __init__(self, put_many: Callable[[list[Rendered]], None],
                 on_passed: Callable[[Rendered], None]) -> None:
        self._put_many = put_many
        self._on_passed = on_passed
        self._queued: list[Rendered] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="calln-spool-writer", daemon=True)
        self._thread.start()

    def __call__(self, rendered: Rendered) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("spool hand-off closed")
            self._queued.append(rendered)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._closed:
                    self._cond.wait()
                if not self._queued:
                    return                      # closed and drained
                self._queued.sort(key=lambda r: r.audio_path is None)       # stable: in order otherwise
                batch, self._queued = self._queued[:BATCH_MAX_CALLS], self._queued[BATCH_MAX_CALLS:]
            try:
                self._put_many(batch)
            except Exception:
                # A fault of the disk is held and retried by put_many; anything else is a bug,
                # and these calls are named rather than silently gone.
                log.exception("spooling failed: %s", "; ".join(call_name(r.record) for r in batch))
            finally:
                for rendered in batch:
                    self._on_passed(rendered)

    def close(self) -> None:
        """Spool every call queued so far, then stop the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
