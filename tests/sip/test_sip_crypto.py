"""a=crypto parsing (RFC 4568): keys, lifetimes, MKIs, session parameters, hostile lines."""

from __future__ import annotations

import base64
import json
import pickle

import pylibsrtp
import pytest

from agent.sip.crypto import SUITES, CryptoParseError, Secret, parse_crypto

KEY30 = bytes(range(30))
B64 = base64.b64encode(KEY30).decode()


def test_inline_key_lifetime_and_mki():
    c = parse_crypto(f"7 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^31|3:2")
    assert (c.tag, c.suite, c.mki_bytes, c.problem) == (7, "AES_CM_128_HMAC_SHA1_80", 2, "")
    (k,) = c.keys
    assert (k.key_salt.value, k.lifetime_packets, k.mki) == (KEY30, 1 << 31, 3)
    assert parse_crypto(f"1 AES_CM_128_HMAC_SHA1_32 inline:{B64}|1048576").keys[0].lifetime_packets == 1048576


def test_several_keys_need_mkis_of_one_length():
    other = base64.b64encode(bytes(30)).decode()
    c = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|1:4;inline:{other}|2:4")
    assert [k.mki for k in c.keys] == [1, 2] and c.mki_bytes == 4
    for bad in (f"inline:{B64};inline:{other}", f"inline:{B64}|1:4;inline:{other}|2:2",
                f"inline:{B64}|1:4;inline:{other}|1:4"):
        with pytest.raises(CryptoParseError):
            parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 {bad}")


@pytest.mark.parametrize("params,problem", [
    ("KDR=0 UNENCRYPTED_SRTCP WSH=64 -X_VENDOR", ""),
    ("KDR=2", "key derivation rate (KDR) not supported"),
    ("UNENCRYPTED_SRTP", "session parameter UNENCRYPTED_SRTP not supported"),
    ("UNAUTHENTICATED_SRTP", "session parameter UNAUTHENTICATED_SRTP not supported"),
])
def test_session_parameters(params, problem):
    assert parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} {params}").problem == problem


def test_suites_libsrtp_cannot_do_are_parsed_but_unusable():
    key46 = base64.b64encode(bytes(46)).decode()
    c = parse_crypto(f"1 AES_256_CM_HMAC_SHA1_80 inline:{key46}")
    assert c.problem == "unsupported suite AES_256_CM_HMAC_SHA1_80" and c.keys == ()
    assert parse_crypto(f"1 NULL_CIPHER inline:{B64}").problem.startswith("unsupported suite")


def test_the_suite_table_matches_pylibsrtp():
    for name, suite in SUITES.items():
        if suite.libsrtp_profile:
            profile = getattr(pylibsrtp.Policy, suite.libsrtp_profile)
            assert (pylibsrtp.lib.srtp_profile_get_master_key_length(profile),
                    pylibsrtp.lib.srtp_profile_get_master_salt_length(profile)) == (suite.key_bytes,
                                                                                   suite.salt_bytes), name


@pytest.mark.parametrize("value", [
    "", "1", "1 AES_CM_128_HMAC_SHA1_80", "x AES_CM_128_HMAC_SHA1_80 inline:" + B64,
    "1 AES_CM_128_HMAC_SHA1_80 uri:http://k", "1 AES_CM_128_HMAC_SHA1_80 inline:",
    "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!", "1 AES_CM_128_HMAC_SHA1_80 inline:" + B64[:-4],
    "1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|2^999", "1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|1:0",
    "1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|256:1", "1 AES_CM_128_HMAC_SHA1_80 inline:" + B64 + "|a|b|c|d",
    "1 AES_CM_128_HMAC_SHA1_80 " + ";".join(["inline:" + B64 + f"|{i}:1" for i in range(40)]),
    "1234567890 AES_CM_128_HMAC_SHA1_80 inline:" + B64,
])
def test_hostile_lines_raise_parse_errors_only(value):
    with pytest.raises(CryptoParseError):
        parse_crypto(value)


def test_secrets_are_redacted_refuse_json_and_survive_the_worker_pipe():
    c = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|1:4")
    for text in (repr(c), str(c), repr(c.keys), str(c.keys[0].key_salt)):
        assert B64 not in text and KEY30.hex() not in text and "redacted" in text
    with pytest.raises(TypeError):
        json.dumps(c.keys[0].key_salt)
    again = pickle.loads(pickle.dumps(c))
    assert again == c and again.keys[0].key_salt.value == KEY30
    assert Secret(b"a") == Secret(b"a") != Secret(b"b")


from hypothesis import given, settings, strategies as st  # noqa: E402

_PIECES = st.sampled_from(["1", "99", " ", "AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM", "inline:", B64, B64[:7],
                           "|", ":", ";", "2^", "20", "4", "=", "KDR=", "\x00", "é", "inline:" + B64 + "|1:4"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join), st.text(max_size=40))
def test_any_crypto_line_is_parsed_or_skipped_never_an_other_error(pieces, noise):
    from agent.sip.sdp import parse_sdp

    for value in (pieces, noise, pieces + noise):
        try:
            parse_crypto(value)
        except CryptoParseError:
            pass
        body = f"v=0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:{value}\r\n".encode("utf-8", "surrogatepass")
        m = parse_sdp(body).media[0]
        if len(value.splitlines()) <= 1:                  # one SDP line: one attribute, kept or skipped
            assert len(m.crypto) + m.crypto_skipped == 1
