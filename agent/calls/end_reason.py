"""Why a call ended: the one enumeration every part of the agent uses.

``rejected`` carries the SIP code, so it is rendered as ``rejected:486``; build it
with :func:`rejected`. Everything else is a plain member whose value is what the
call record and the logs show.
"""

from enum import Enum


class EndReason(str, Enum):
    BYE = "bye"                              # a BYE in the dialog
    CANCEL = "cancel"                        # the caller cancelled before an answer
    REJECTED = "rejected"                    # final non-2xx to the initial INVITE (see rejected())
    RTP_TIMEOUT = "rtp_timeout"              # media (and refreshes) stopped for sip.rtp_timeout_s
    SIGNALLING_TIMEOUT = "signalling_timeout"  # no media ever, and no SIP for too long / no final answer
    MAX_DURATION = "max_duration"            # longer than sip.max_duration_s
    MEDIA_TAKEN_OVER = "media_taken_over"    # a newer dialog's SDP claimed all of this call's media
    CAPTURE_END = "capture_end"              # replay reached the end of the capture
    SHUTDOWN = "shutdown"                    # the agent stopped (SIGTERM) with the call in progress
    DIALOG_ERROR = "dialog_error"            # 481/408 to an in-dialog request
    EVICTED = "evicted"                      # sip.max_calls reached: a dialog without media made room


def rejected(status_code: int) -> str:
    """The end reason text for a call refused with ``status_code``."""
    return f"{EndReason.REJECTED.value}:{status_code}"
