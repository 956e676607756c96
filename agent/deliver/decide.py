"""What one answer of the CallN API means for the call: the rules of API.md, in one place.

Pure (no I/O): the uploader asks ``decide(step, outcome, last_chunk_uncertain)`` after
every request and carries out the returned ``Decision``.

The one subtle rule: a server may store a call and then fail while answering
its last chunk. So after any *uncertain* outcome of the last chunk (no answer, reset,
timeout, 5xx) the call may already be stored, and a 404 on a later re-send of the last
chunk means "the temp id was consumed by completion": delivered, unconfirmed. It never
means "start again", which would store the call twice. The uncertainty is kept until the
call is delivered or gets a new temp id (a parked call keeps it, and its temp id, so that
``spool retry`` re-sends the last chunk); it is persisted in the
call's state (``last_chunk_attempted``, written *before* the last chunk goes out, so a
crash while it is on the wire counts as uncertain too).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.deliver import client as cl

# The request a call is at.
POST = "post"              # step 1, create the call
CHUNK = "chunk"            # step 2, any chunk but the last
LAST_CHUNK = "last_chunk"  # step 2, the chunk that completes the call


class Action(enum.Enum):
    NEXT = "next"                                    # go on with the next request at once
    DELIVERED = "delivered"
    DELIVERED_UNCONFIRMED = "delivered_unconfirmed"  # 404 after an uncertain last chunk
    RESTART = "restart"                              # temp id expired: step 1 again
    BACKOFF = "backoff"                              # transient: retry this request later
    PARK = "park"                                    # never retry blindly
    STOP_AUTH = "stop_auth"                          # 401: stop all uploads
    PAUSE_QUOTA = "pause_quota"                      # 403: pause all uploads for hours
    STOP_CONFIG = "stop_config"                      # 406, TLS trust, wrong URL: stop all uploads


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    last_chunk_uncertain: bool   # the value to persist as the state's ``last_chunk_attempted``


def may_have_committed(out: cl.Outcome) -> bool:
    """Whether the server may have stored what the request carried, without saying so."""
    return out.response_lost or (out.status is not None and out.status >= 500)


def decide(step: str, out: cl.Outcome, last_chunk_uncertain: bool) -> Decision:
    """The action for ``out``, the answer to ``step``; ``last_chunk_uncertain`` is what was
    known *before* this request (an earlier send of the last chunk may have been stored)."""
    uncertain = last_chunk_uncertain
    if step == LAST_CHUNK and may_have_committed(out):
        uncertain = True
    kind = out.kind
    if kind == cl.OK:
        if step == LAST_CHUNK or (step == POST and out.complete):   # v2: 200, no audio needed
            return Decision(Action.DELIVERED, False)
        # A new temp id (POST) starts with nothing sent; a middle chunk changes nothing.
        return Decision(Action.NEXT, False if step == POST else uncertain)
    if kind == cl.EXPIRED and step != POST:
        if step == LAST_CHUNK and uncertain:
            return Decision(Action.DELIVERED_UNCONFIRMED, False)
        return Decision(Action.RESTART, False)
    if kind == cl.TRANSIENT:
        return Decision(Action.BACKOFF, uncertain)
    if kind == cl.PARK:
        # Kept: a call parked after an uncertain last chunk may already be stored, so the
        # operator's retry must re-send that chunk, never start again from step 1.
        return Decision(Action.PARK, uncertain)
    if kind == cl.AUTH:
        return Decision(Action.STOP_AUTH, uncertain)
    if kind == cl.QUOTA:
        return Decision(Action.PAUSE_QUOTA, uncertain)
    # CONFIG, or a kind this table does not know: stop rather than guess.
    return Decision(Action.STOP_CONFIG, uncertain)
