"""A spooled call's upload state: its states, its fields, and reading it from disk.

``state.json`` beside each call's record holds one ``UploadState``; the uploader rewrites
it atomically after every step. A ``TypedDict`` (not a dataclass) because the state is a
JSON document that is read, updated in place by the uploader (``st.update({...})``) and
written back whole: typing the dict keeps that one format on disk and in memory, with
no conversion that could drop a field a later version added. ``state_from_json`` is the
one place a state read from disk becomes an ``UploadState``; it fills the fields older
versions did not write (``audio_size``, ``gzip``, ``last_chunk_attempted``, ``backoff``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TypedDict, cast

from agent.calls.record import record_from_json
from agent.deliver.spool_ledger import call_key

# States of a call in the spool.
READY = "ready"
CREATED = "created"
UPLOADING = "uploading"
DELIVERED = "delivered"
DELIVERED_UNCONFIRMED = "delivered_unconfirmed"
PARKED = "parked"
SKIPPED_UNANSWERED = "skipped_unanswered"

ACTIVE_STATES = frozenset({READY, CREATED, UPLOADING})
DONE_STATES = frozenset({DELIVERED, DELIVERED_UNCONFIRMED, SKIPPED_UNANSWERED})
RETRYABLE_BY_OPERATOR = frozenset({PARKED, SKIPPED_UNANSWERED, DELIVERED_UNCONFIRMED})

AUDIO_EXT_FOR_TYPE = {"audio/mpeg": "mp3", "audio/wav": "wav", "audio/x-wav": "wav"}
AUDIO_TYPE_FOR_EXT = {"mp3": "audio/mpeg", "wav": "audio/wav"}


class Backoff(TypedDict):
    attempts: int
    due_wall: float              # wall clock, seconds since the epoch: survives a restart


class UploadState(TypedDict, total=False):
    id: str                      # the spool id (directory name under calls/)
    key: str                     # the ledger key (spool_ledger.call_key)
    state: str                   # one of the states above
    reason: str                  # why parked / skipped ("" otherwise)
    tempcallid: str | None       # the server's temporary call id once POSTed
    next_chunk: int              # 1-based
    total_chunks: int | None     # the chunk plan, fixed before the first request
    chunk_bytes: int | None
    audio_size: int | None
    gzip: bool
    last_chunk_attempted: bool   # the last chunk was sent and its answer is uncertain
    restarts: int
    enqueued_at: float           # wall clock, seconds since the epoch
    delivered_at: float | None
    audio_file: str | None       # name in the call's directory, None: no audio
    content_type: str
    backoff: Backoff | None


def fresh_state(call_id: str, key: str) -> UploadState:
    """The upload state of a call nothing has been sent for yet."""
    return {
        "id": call_id, "key": key, "state": READY, "reason": "",
        "tempcallid": None, "next_chunk": 1, "total_chunks": None, "chunk_bytes": None,
        "audio_size": None, "gzip": False, "last_chunk_attempted": False,
        "restarts": 0, "enqueued_at": time.time(), "delivered_at": None,
        "audio_file": None, "content_type": "", "backoff": None,
    }


def state_from_json(data: bytes) -> UploadState:
    """A ``state.json`` as an UploadState. ValueError when it is not one (not JSON, not an
    object, no id / key / state): the caller treats it as unreadable."""
    obj = json.loads(data)
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("id", "key", "state")):
        raise ValueError("not an upload state (an object with id, key and state)")
    # Fields added since the first version default to what that version did: no gzip, no
    # uncertain last chunk, no back-off. Enqueued before the file existed: now is as good.
    defaults = fresh_state(obj["id"], obj["key"])
    return cast(UploadState, {**defaults, **obj})


def call_dir_state(work: Path, call_id: str) -> UploadState | None:
    """The state of a call directory: its state.json, or one rebuilt from its record and
    audio (a crash before state.json was written; enqueue writes it last). None: no record."""
    try:
        return state_from_json((work / "state.json").read_bytes())
    except (OSError, ValueError):
        pass
    try:
        record = record_from_json((work / "record.json").read_bytes())
    except (OSError, ValueError):
        return None
    st = fresh_state(call_id, call_key(record))
    audio = sorted(p.name for p in work.glob("audio.*"))
    if audio:
        st["audio_file"] = audio[0]
        st["content_type"] = AUDIO_TYPE_FOR_EXT.get(audio[0].rpartition(".")[2], "audio/mpeg")
    elif record.get("answered", True) is False:
        st["state"] = SKIPPED_UNANSWERED
    else:
        st.update({"state": PARKED, "reason": f"no_audio:{record.get('no_audio_reason') or 'unknown'}"})
    return st
