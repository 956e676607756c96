"""SDES-SRTP offer/answer: which keys encrypt each direction of a call, and since when.

Owns ``SrtpNegotiation`` (one per call, fed every audio SDP the tracker sees) and its key
schedule: per sending side, a list of ``KeyPeriod`` (from packet time ``from_ts_ns``, the
keys or plain RTP or "no usable keys"). Pure: no libsrtp (``media/srtp.py`` decrypts).

Rules (RFC 4568): a side encrypts what it SENDS with the key of ITS OWN SDP; the answer
picks one of the offer's ``a=crypto`` lines by tag. New keys (a re-INVITE) apply from the
moment the answer is seen; the decryptor also tries a direction's other keys when a packet
fails authentication, which covers packets in flight around the switch. Without usable keys
the call's media cannot be recorded: ``no_audio_reason`` says why (DTLS-SRTP, ZRTP, SAVP
without keys, a suite or parameter libsrtp cannot do).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.sip.crypto import KeyPeriod
from agent.sip.sdp import MediaDescription

__all__ = ["KeyPeriod", "SrtpNegotiation", "ENCRYPTED_DTLS", "ENCRYPTED_NO_KEYS"]

ENCRYPTED_DTLS = "encrypted_dtls"
ENCRYPTED_NO_KEYS = "encrypted_no_keys"
_SIDE_NAMES = ("caller", "callee")


@dataclass(slots=True)
class _Offer:
    side: int
    media: MediaDescription


def _is_dtls(m: MediaDescription) -> bool:
    proto = m.proto.upper()
    return "TLS" in proto or (m.fingerprint and "SAVP" in proto)


class SrtpNegotiation:
    """The SRTP state of one call, from its SDP offers and answers."""

    __slots__ = ("periods", "crypto_skipped", "unusable", "offered_crypto", "seen", "_offer")

    def __init__(self) -> None:
        self.periods: tuple[list[KeyPeriod], list[KeyPeriod]] = ([], [])   # by sending side
        self.crypto_skipped = 0
        self.unusable = ""              # why the latest encrypted answer gave no usable keys
        self.offered_crypto = False     # an a=crypto line was seen: media may be SRTP
        self.seen = False               # any sign of encrypted media in the SDP
        self._offer: _Offer | None = None

    def __repr__(self) -> str:          # never the keys
        return f"SrtpNegotiation(periods={len(self.periods[0])}/{len(self.periods[1])}, unusable={self.unusable!r})"

    def on_sdp(self, side: int, ts_ns: int, m: MediaDescription, *, may_answer: bool) -> None:
        """The first audio m-line of an SDP sent by ``side``. ``may_answer``: the message can
        carry an answer (a response, ACK or PRACK); an INVITE or UPDATE carries an offer."""
        self.crypto_skipped += m.crypto_skipped
        if m.crypto or m.crypto_skipped:
            self.offered_crypto = True
        if m.encrypted:
            self.seen = True
        offer = self._offer
        if may_answer and offer is not None and offer.side != side:
            if m.port != 0:
                self._answer(offer, side, ts_ns, m)
        else:
            self._offer = _Offer(side, m)

    def _answer(self, offer: _Offer, side: int, ts_ns: int, answer: MediaDescription) -> None:
        if answer.crypto:
            chosen = answer.crypto[0]
            offered = next((c for c in offer.media.crypto if c.tag == chosen.tag and c.suite == chosen.suite), None)
            if offered is not None and not (offered.problem or chosen.problem) and offered.keys and chosen.keys:
                self._add(offer.side, KeyPeriod(ts_ns, offered))
                self._add(side, KeyPeriod(ts_ns, chosen))
                return
            self._no_keys(ts_ns, ENCRYPTED_NO_KEYS)
        elif answer.crypto_skipped:
            self._no_keys(ts_ns, ENCRYPTED_NO_KEYS)
        elif _is_dtls(answer) or _is_dtls(offer.media):
            self._no_keys(ts_ns, ENCRYPTED_DTLS)
        elif answer.zrtp or offer.media.zrtp or "SAVP" in answer.proto.upper():
            self._no_keys(ts_ns, ENCRYPTED_NO_KEYS)
        else:                                        # e.g. an optional-SRTP offer answered with RTP/AVP
            self._add(offer.side, KeyPeriod(ts_ns, plain=True))
            self._add(side, KeyPeriod(ts_ns, plain=True))

    def _no_keys(self, ts_ns: int, reason: str) -> None:
        self.unusable = reason
        for side in (0, 1):
            self._add(side, KeyPeriod(ts_ns))

    def _add(self, side: int, period: KeyPeriod) -> None:
        periods = self.periods[side]
        if periods and periods[-1].crypto == period.crypto and periods[-1].plain == period.plain:
            return                                   # a repeated answer (183 then 200, retransmission)
        periods.append(period)

    @property
    def has_keys(self) -> bool:
        return any(p.crypto is not None for side in self.periods for p in side)

    @property
    def media_encrypted(self) -> bool:
        """The media was (or would have been) encrypted: keys were agreed, or encryption was
        asked for without usable keys. False for an optional SRTP offer answered with plain RTP."""
        return self.seen and (self.has_keys or bool(self.no_audio_reason()))

    def no_audio_reason(self) -> str:
        """Why the media cannot be recorded ("" when it can: keys, or plain RTP negotiated)."""
        if any(p.crypto is not None or p.plain for side in self.periods for p in side):
            return ""
        if self.unusable or not self.seen:
            return self.unusable
        offer = self._offer               # no answer seen: the offer says what it would have been
        return ENCRYPTED_DTLS if offer is not None and _is_dtls(offer.media) else ENCRYPTED_NO_KEYS

    def schedule(self) -> tuple[tuple[KeyPeriod, ...], tuple[KeyPeriod, ...]] | None:
        """The key periods per sending side for the decryptor, None when no a=crypto was seen."""
        if not self.offered_crypto:
            return None
        return tuple(self.periods[0]), tuple(self.periods[1])

    def facts(self) -> dict:
        """For the call record: suites, key changes, skipped lines, the no-audio reason. No keys."""
        suites = {}
        changes = 0
        for side, name in enumerate(_SIDE_NAMES):
            keyed = [p.crypto.suite for p in self.periods[side] if p.crypto is not None]
            changes += max(0, len(keyed) - 1)
            suites[name] = list(dict.fromkeys(keyed))
        return {"suites": suites, "key_changes": changes, "crypto_skipped": self.crypto_skipped,
                "no_audio": self.no_audio_reason()}
