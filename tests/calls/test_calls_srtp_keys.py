"""SDES offer/answer: which keys encrypt each direction, from when; why there are none."""

from __future__ import annotations

import base64

from agent.calls.srtp_keys import ENCRYPTED_DTLS, ENCRYPTED_NO_KEYS, SrtpNegotiation
from agent.sip.sdp import parse_sdp

S80, S32 = "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 30).decode()


def m(proto="RTP/SAVP", *lines: str, port: int = 4000):
    body = "v=0\r\nc=IN IP4 10.0.0.1\r\n" + f"m=audio {port} {proto} 0\r\n" + "".join(f"a={x}\r\n" for x in lines)
    return parse_sdp(body.encode()).media[0]


def test_each_direction_uses_the_senders_key_and_the_answer_picks_the_tag():
    n = SrtpNegotiation()
    n.on_sdp(0, 100, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(1)}", f"crypto:2 {S32} inline:{key(2)}"),
             may_answer=False)
    n.on_sdp(1, 200, m("RTP/SAVP", f"crypto:2 {S32} inline:{key(3)}"), may_answer=True)
    caller, callee = n.schedule()
    assert [(p.from_ts_ns, p.crypto.suite, p.crypto.keys[0].key_salt.value) for p in caller] == [(200, S32, bytes([2]) * 30)]
    assert [(p.from_ts_ns, p.crypto.keys[0].key_salt.value) for p in callee] == [(200, bytes([3]) * 30)]
    assert n.no_audio_reason() == "" and n.facts()["suites"] == {"caller": [S32], "callee": [S32]}
    assert key(1) not in repr(n) and key(1) not in repr(n.schedule())


def test_rekey_by_reinvite_applies_from_the_answer_and_repeats_are_ignored():
    n = SrtpNegotiation()
    n.on_sdp(0, 100, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(1)}"), may_answer=False)
    n.on_sdp(1, 150, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(2)}"), may_answer=True)    # 183
    n.on_sdp(1, 200, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(2)}"), may_answer=True)    # 200, same keys
    n.on_sdp(1, 900, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(4)}"), may_answer=False)   # callee re-INVITE
    n.on_sdp(0, 950, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(3)}"), may_answer=True)
    caller, callee = n.schedule()
    assert [(p.from_ts_ns, p.crypto.keys[0].key_salt.value[0]) for p in caller] == [(150, 1), (950, 3)]
    assert [(p.from_ts_ns, p.crypto.keys[0].key_salt.value[0]) for p in callee] == [(150, 2), (950, 4)]
    assert n.facts()["key_changes"] == 2


def test_optional_srtp_answered_with_plain_rtp_is_plain():
    n = SrtpNegotiation()
    n.on_sdp(0, 100, m("RTP/AVP", f"crypto:1 {S80} inline:{key(1)}"), may_answer=False)
    n.on_sdp(1, 200, m("RTP/AVP"), may_answer=True)
    assert n.no_audio_reason() == "" and all(p.plain for side in n.schedule() for p in side)


def test_no_usable_keys_say_why():
    cases = [
        ((m("UDP/TLS/RTP/SAVPF", "fingerprint:sha-256 AB"), m("UDP/TLS/RTP/SAVPF", "fingerprint:sha-256 CD")),
         ENCRYPTED_DTLS),
        ((m("RTP/SAVP", "fingerprint:sha-256 AB"), m("RTP/SAVP", "fingerprint:sha-256 CD")), ENCRYPTED_DTLS),
        ((m("RTP/SAVP"), m("RTP/SAVP")), ENCRYPTED_NO_KEYS),
        ((m("RTP/AVP", "zrtp-hash:1.10 ab"), m("RTP/AVP", "zrtp-hash:1.10 cd")), ENCRYPTED_NO_KEYS),
        ((m("RTP/SAVP", f"crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{base64.b64encode(bytes(46)).decode()}"),
          m("RTP/SAVP", f"crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{base64.b64encode(bytes(46)).decode()}")),
         ENCRYPTED_NO_KEYS),
        ((m("RTP/SAVP", f"crypto:1 {S80} inline:{key(1)}"), m("RTP/SAVP", f"crypto:9 {S80} inline:{key(2)}")),
         ENCRYPTED_NO_KEYS),                                        # a tag that was not offered
        ((m("RTP/SAVP", f"crypto:1 {S80} inline:{key(1)}"), m("RTP/SAVP", f"crypto:1 {S80} inline:@@@")),
         ENCRYPTED_NO_KEYS),                                        # the answer's key is garbage
    ]
    for (offer, answer), reason in cases:
        n = SrtpNegotiation()
        n.on_sdp(0, 1, offer, may_answer=False)
        n.on_sdp(1, 2, answer, may_answer=True)
        assert n.no_audio_reason() == reason, (offer.proto, answer.crypto_skipped)
    n = SrtpNegotiation()                       # an offer whose answer the tap never saw
    n.on_sdp(0, 1, m("UDP/TLS/RTP/SAVP", "fingerprint:sha-256 AB"), may_answer=False)
    assert n.no_audio_reason() == ENCRYPTED_DTLS


def test_late_offer_in_the_200_answered_in_the_ack():
    n = SrtpNegotiation()
    n.on_sdp(1, 100, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(5)}"), may_answer=True)    # 200 with offer
    n.on_sdp(0, 200, m("RTP/SAVP", f"crypto:1 {S80} inline:{key(6)}"), may_answer=True)    # ACK
    caller, callee = n.schedule()
    assert caller[0].crypto.keys[0].key_salt.value[0] == 6 and callee[0].crypto.keys[0].key_salt.value[0] == 5
