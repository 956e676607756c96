"""SrtpDecryptor and decrypt_raw_log: libsrtp outcomes counted, copies kept as duplicates,
the ROC across a sequence wrap, a new SSRC, MKI key choice, labels renumbered, DTMF redacted
after decryption."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pylibsrtp

from agent.media.medialog import MediaLogWriter, read_media_log
from agent.media.srtp import SrtpDecryptor, decrypt_raw_log
from agent.media.stream import MediaPlan
from agent.media.timeline import CodecInfo
from agent.sip.crypto import KeyPeriod, parse_crypto

S80 = "AES_CM_128_HMAC_SHA1_80"
KEY_A, KEY_B = bytes(range(30)), bytes(range(100, 130))


def crypto(key: bytes, extra: str = ""):
    return parse_crypto(f"1 {S80} inline:{base64.b64encode(key).decode()}{extra}")


def sender(key: bytes):
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    policy.allow_repeat_tx = True
    return pylibsrtp.Session(policy)


def rtp(seq: int, ssrc: int = 0x1234, pt: int = 0, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes([seq & 0xFF]) * 160
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + body


def test_outcomes_are_counted_and_identical_copies_pass_as_duplicates():
    tx = sender(KEY_A)
    dec = SrtpDecryptor(([KeyPeriod(0, crypto(KEY_A))], []))
    wire = [tx.protect(rtp(s)) for s in range(300)]
    assert dec.unprotect(0, 1, wire[0]) == rtp(0)
    bad = bytearray(wire[1])
    bad[30] ^= 1
    assert dec.unprotect(0, 2, bytes(bad)) is None               # tampered
    assert dec.unprotect(0, 3, wire[1]) == rtp(1)
    assert dec.unprotect(0, 4, wire[1]) == rtp(1)                # a byte-identical copy
    for s in range(2, 300):
        assert dec.unprotect(0, 5 + s, wire[s]) == rtp(s)
    forged = bytearray(wire[299])
    forged[-1] ^= 1
    assert dec.unprotect(0, 400, bytes(forged)) is None          # a replay that is not a copy
    c = dec.counts
    assert (c["decrypted"][0], c["auth_failed"][0], c["replayed"][0]) == (301, 1, 1)


def test_roc_across_a_sequence_wrap_and_a_new_ssrc():
    tx = sender(KEY_A)
    dec = SrtpDecryptor(([KeyPeriod(0, crypto(KEY_A))], []))
    for i in range(66_000):                        # seq 65000 .. wraps .. 65463: ROC 0 -> 1
        seq = 65_000 + i
        assert dec.unprotect(0, i, tx.protect(rtp(seq))) == rtp(seq)
    assert dec.unprotect(0, 70_000, tx.protect(rtp(7, ssrc=0x9999))) == rtp(7, ssrc=0x9999)
    assert dec.counts["auth_failed"][0] == 0


def test_rekey_falls_back_to_the_other_key_and_mki_picks_the_key():
    old, new = sender(KEY_A), sender(KEY_B)
    dec = SrtpDecryptor(([KeyPeriod(0, crypto(KEY_A)), KeyPeriod(1000, crypto(KEY_B))], []))
    assert dec.unprotect(0, 10, old.protect(rtp(1))) == rtp(1)
    assert dec.unprotect(0, 1001, old.protect(rtp(2))) == rtp(2)            # in flight with the old key
    assert dec.unprotect(0, 1002, new.protect(rtp(3))) == rtp(3)
    assert dec.counts["other_key"][0] == 1
    two = parse_crypto(f"1 {S80} inline:{base64.b64encode(KEY_A).decode()}|7:2;"
                       f"inline:{base64.b64encode(KEY_B).decode()}|9:2")
    dec = SrtpDecryptor(([KeyPeriod(0, two)], []))
    for n, (tx, mki) in enumerate(((sender(KEY_B), 9), (sender(KEY_A), 7))):
        wire = tx.protect(rtp(n))
        on_wire = wire[:-10] + mki.to_bytes(2, "big") + wire[-10:]
        assert dec.unprotect(0, n, on_wire) == rtp(n)
    wire = sender(KEY_A).protect(rtp(5))
    assert dec.unprotect(0, 9, wire[:-10] + b"\x00\x08" + wire[-10:]) is None    # an MKI no key has
    assert dec.counts["auth_failed"][0] == 1


def test_decrypt_raw_log_renumbers_labels_and_redacts_events_after_decryption(tmp_path: Path):
    tx_a, tx_b = sender(KEY_A), sender(KEY_B)
    raw = MediaLogWriter(tmp_path / "call.rtp")
    packets = [(0, tx_a.protect(rtp(1))), (0, b"\x80" + bytes(40)), (1, tx_b.protect(rtp(1, ssrc=7))),
               (0, tx_a.protect(rtp(2, pt=101, payload=bytes([5, 0x8A, 0, 160]))))]
    for n, (d, data) in enumerate(packets):
        raw.append(d, 0, 0, 1000 + n, 0, False, data)
    raw.close()
    plan = MediaPlan(codecs={0: {101: CodecInfo("telephone-event", 8000)}, 1: {}},
                     labels=[(0, 0, "a:1", "b:2"), (2, 1, "b:2", "a:1"), (3, 0, "a:9", "b:2")],
                     redact_dtmf=True, captured_packets=(3, 1),
                     srtp=([KeyPeriod(0, crypto(KEY_A))], [KeyPeriod(0, crypto(KEY_B))]))
    new_plan, facts = decrypt_raw_log(tmp_path / "call.rtp", tmp_path / "call.plain", plan)
    out = [(r[0], r[6]) for r in read_media_log(tmp_path / "call.plain")]
    assert out == [(0, rtp(1)), (1, rtp(1, ssrc=7)), (0, rtp(2, pt=101, payload=bytes([0, 0x8A, 0, 160])))]
    assert new_plan.labels == [(0, 0, "a:1", "b:2"), (1, 1, "b:2", "a:1"), (2, 0, "a:9", "b:2")]
    assert new_plan.captured_packets == (2, 1)
    assert facts["auth_failed"] == {"caller": 1, "callee": 0} and facts["decrypted"] == {"caller": 2, "callee": 1}
    assert "Secret(<redacted>)" in repr(plan.srtp) and repr(plan).find("srtp") == -1


def test_observe_srtp_counts_into_metrics():
    from collections import Counter

    from agent.media.srtp import observe_srtp

    counters: Counter = Counter()
    observe_srtp({"srtp": {"decrypted": {"caller": 10, "callee": 7}, "auth_failed": {"caller": 2, "callee": 1},
                           "no_audio": ""}}, counters)
    observe_srtp({"srtp": {"no_audio": "encrypted_dtls"}}, counters)
    observe_srtp({"callid": "plain"}, counters)
    assert counters == Counter({"media.srtp.decrypted": 17, "media.srtp.auth_failed": 3,
                                "media.srtp.calls_encrypted_dtls": 1})


def test_the_roc_is_found_for_a_stream_joined_late_and_after_a_gap_over_2_15():
    from agent.media.srtp import RESYNC_AFTER

    tx = sender(KEY_A)
    wire = [tx.protect(rtp(s)) for s in range(140_000)]          # the sender's ROC reaches 2
    dec = SrtpDecryptor(([KeyPeriod(0, crypto(KEY_A))], []))
    got = [dec.unprotect(0, k, w) for k, w in enumerate(wire[139_000:])]    # joined at ROC 2
    assert got[:RESYNC_AFTER - 1] == [None] * (RESYNC_AFTER - 1)
    assert got[RESYNC_AFTER - 1:] == [rtp(139_000 + k) for k in range(RESYNC_AFTER - 1, 1000)]
    c = dec.counts
    assert c["resynced"][0] == 1 and c["auth_failed"][0] == RESYNC_AFTER - 1    # the join: found ROC 2
    # 40,000 packets of the same stream never captured: libsrtp's estimate picks ROC 0 for ROC 1.
    dec2 = SrtpDecryptor(([KeyPeriod(0, crypto(KEY_A))], []))
    tail = [dec2.unprotect(0, k, w) for k, w in enumerate(wire[30_000:30_100] + wire[70_000:70_100])]
    assert tail[:100] == [rtp(30_000 + k) for k in range(100)]
    assert tail[100 + RESYNC_AFTER - 1:] == [rtp(70_000 + k) for k in range(RESYNC_AFTER - 1, 100)]
    # libsrtp takes the wrongly guessed index for an old one: "too old", until the search.
    assert (dec2.counts["resynced"][0], dec2.counts["too_old"][0]) == (1, RESYNC_AFTER - 1)


def test_a_wrong_key_fails_cheaply_and_is_counted():
    dec = SrtpDecryptor(([KeyPeriod(0, crypto(KEY_B))], []))
    tx = sender(KEY_A)
    assert all(dec.unprotect(0, s, tx.protect(rtp(s))) is None for s in range(200))
    assert dec.counts["auth_failed"][0] == 200 and dec.counts["resynced"][0] == 0
