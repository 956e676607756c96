"""Finishing: the media object a call's RTP goes to, and an ended call made into a
:class:`FinishedCall` for whoever consumes the engine (recorder, ``inspect``).

Owns the disk floor (below ``[spool] min_free_mb`` a new call records no audio, so the
spool is never endangered) and the media mode (:class:`MediaMode`).

Finished calls pass through the conversation grouper (``calls/legs.py``), which links the
legs of one conversation and marks those not to upload, before ``on_finished`` sees them.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.calls.call import CALLEE, CALLER, Call
from agent.calls.legs import ConversationGrouper
from agent.calls.macs import MacTable
from agent.calls.record import CallRecord, build_record
from agent.config import Config
from agent.media.quality import QualityCollector
from agent.media.srtp import SrtpCallMedia
from agent.media.sequencer import CallMedia
from agent.media.stream import MediaCapture, MediaPlan
from agent.media.timeline import StreamSpec
from agent.pipeline.completion import clock_rate, codecs_for_side, complete_media, media_record
from agent.pipeline.completion import unrecorded_streams

log = logging.getLogger(__name__)

DISK_CHECK_S = 2.0                 # how often free space is looked at (wall clock: disks are real)


class MediaMode(enum.Enum):
    """What happens to a call's RTP (one choice: there used to be two flags)."""
    COUNTERS = "counters"   # inspect: sequenced as it arrives into counters only; no media log
    DEFERRED = "deferred"   # recordings: the raw log and a MediaPlan go to the recorder's workers,
                            # which sequence them (completion.complete_media) off the capture loop
    INLINE = "inline"       # sequenced here into an ordered log (tests, benches rendering in-process)


@dataclass(slots=True)
class FinishedCall:
    call: Call
    record: CallRecord
    media_log: Path | None          # the ordered media log, or the raw one when media_plan is set
    streams: list[StreamSpec] = field(default_factory=list)
    media_plan: MediaPlan | None = None   # set: media not sequenced yet (see complete_media)


class Finisher:
    def __init__(self, config: Config, counters, macs: MacTable, workdir: Path, grouper: ConversationGrouper,
                 on_finished: Callable[[FinishedCall], None], *, media: MediaMode) -> None:
        self.config = config
        self.counters = counters
        self.macs = macs
        self.workdir = workdir
        self.grouper = grouper
        self.on_finished = on_finished
        self.mode = media
        self._media_seq = 0
        self._media: dict[int, MediaCapture | CallMedia] = {}     # id(call) -> its media, while it lives
        self._disk_checked_at = float("-inf")
        self._disk_low = False

    # ------------------------------------------------------------------ media

    def media_of(self, call: Call) -> MediaCapture | CallMedia | None:
        return self._media.get(id(call))

    def attach_media(self, call: Call) -> None:
        """``call`` claimed a media endpoint: from now on its RTP has somewhere to go."""
        if id(call) not in self._media:
            self._media[id(call)] = self._new_media(call)

    def _new_media(self, call: Call) -> MediaCapture | CallMedia:
        redact = self.config.recording.redact_dtmf_digits      # telephone-event digits never reach the disk
        write_audio = self._disk_has_room()
        if self.mode is MediaMode.COUNTERS:
            # SDES keys offered: inspect decrypts each packet as it goes (it has no workers).
            kind, extra = (SrtpCallMedia, {"periods": call.srtp.periods}) if call.srtp.offered_crypto else (CallMedia, {})
            media = kind(None, redact_dtmf=redact,
                         clock_rate_for_pt=lambda side, pt, call=call: clock_rate(call, side, pt),
                         codecs_for_side=lambda side, call=call: codecs_for_side(call, side),
                         **extra)
            media.quality = QualityCollector()          # voice quality from the headers it takes
            return media
        self._media_seq += 1
        path = self.workdir / f"call-{self._media_seq:08d}.rtp"
        return MediaCapture(path, redact_dtmf=redact,
                            codecs_for_side=lambda side, call=call: codecs_for_side(call, side),
                            counters=self.counters, write_audio=write_audio,
                            srtp_offered=lambda call=call: call.srtp.offered_crypto)

    def _disk_has_room(self) -> bool:
        """Below ``[spool] min_free_mb`` no new call starts writing audio: signalling is still
        recorded, the spool is never endangered. Checked at most every DISK_CHECK_S."""
        now = time.monotonic()
        if now >= self._disk_checked_at + DISK_CHECK_S:
            self._disk_checked_at = now
            try:
                st = os.statvfs(self.workdir)
                free_mb = st.f_bavail * st.f_frsize // (1024 * 1024)
            except OSError:
                free_mb = None
            low = free_mb is not None and free_mb < self.config.spool.min_free_mb
            if low != self._disk_low:
                self._disk_low = low
                if low:
                    log.error("free disk %d MB is below [spool] min_free_mb %d: new calls are recorded "
                              "WITHOUT AUDIO until space returns", free_mb, self.config.spool.min_free_mb)
                else:
                    log.warning("free disk is above [spool] min_free_mb again: recording audio")
        if self._disk_low:
            self.counters["media.disk_low.calls_without_audio"] += 1
        return not self._disk_low

    # ------------------------------------------------------------------ finishing

    def finish(self, call: Call, now_ns: int) -> None:
        """``call`` ended (its media got every packet it had): make its FinishedCall."""
        media = self._media.pop(id(call), None)
        redact = self.config.recording.redact_dtmf_digits
        if redact:                                   # PCI: the digits never leave the agent
            for press in call.dtmf:
                press["digit"] = ""
        if media is None:
            self._emit(FinishedCall(call=call, record=build_record(call, self.config, self.macs), media_log=None),
                       now_ns)
            return
        media.close()
        codecs = {CALLER: codecs_for_side(call, CALLER), CALLEE: codecs_for_side(call, CALLEE)}
        if isinstance(media, CallMedia):             # MediaMode.COUNTERS: sequenced as it arrived
            record, _specs = media_record(build_record(call, self.config, self.macs), media, codecs,
                                          redact=redact)
            if isinstance(media, SrtpCallMedia) and call.srtp.has_keys and "srtp" in record:
                record["srtp"].update(media.decryptor.facts())
            self._emit(FinishedCall(call=call, record=record, media_log=None), now_ns)
            return
        plan = media.plan(codecs)
        if not call.srtp.no_audio_reason():          # keys (or plain RTP): in memory to the worker, never on disk
            plan.srtp = call.srtp.schedule()
        extra: CallRecord = {}
        if media.zrtp_seen:
            extra["encrypted"] = True
        if not media.log_path.exists():
            if not media.write_audio:
                # Disk below the floor: no audio, but the packets seen stay on record.
                extra["no_audio_reason"] = "disk_low"
                extra["streams"] = unrecorded_streams(plan, [])
            self._emit(FinishedCall(call=call, record=build_record(call, self.config, self.macs, extra),
                                    media_log=None), now_ns)
            return
        record = build_record(call, self.config, self.macs, extra)
        if self.mode is MediaMode.DEFERRED:
            # Sequencing (reorder, stats, RFC 4733) runs with the rendering, in a worker.
            self._emit(FinishedCall(call=call, record=record, media_log=media.log_path, media_plan=plan), now_ns)
            return
        ordered = media.log_path.with_suffix(".ordered")
        record, specs, ordered = complete_media(record, media.log_path, plan, ordered, redact=redact)
        self._emit(FinishedCall(call=call, record=record, media_log=ordered, streams=specs), now_ns)

    def _emit(self, finished: FinishedCall, now_ns: int) -> None:
        self.counters["calls.finished"] += 1
        for ready in self.grouper.feed(finished, max(now_ns, finished.call.end_ts_ns or 0)):
            self.on_finished(ready)

    def release(self, now_ns: int) -> None:
        """Conversations whose legs are all in: on to ``on_finished``."""
        for ready in self.grouper.release(now_ns):
            self.on_finished(ready)

    def flush(self) -> None:
        for ready in self.grouper.flush():
            self.on_finished(ready)
