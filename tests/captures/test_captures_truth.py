"""Every pcaps/*.truth.json against ``calln-agent inspect --json`` of its capture.

Calls are matched by Call-ID; the number of calls must be equal; every field listed in the
truth must equal the record's value. The "audio" block is checked through the record's
streams: packets summed per direction (0 = caller->callee) and the set of SSRCs per direction.
Tone checks on decoded audio live elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _captures_testlib import (PCAPS_DIR, capture_of, compare_call, inspect_cached, load_truth,
                               truth_files)

TRUTHS = truth_files()

# Every capture with a truth file, by what makes it. A capture that goes missing fails by name.
GENERATED = (  # pcaps/make_pcaps.py; sll2 is pcapng, the rest pcap
    "auth_challenge", "basic_udp", "busy_486", "cancel", "compact_headers", "delayed_offer",
    "display_names", "early_media_183", "erspan", "forked_180", "fragmented_invite", "ipv6",
    "multi_call", "no_bye", "pai_anonymous", "partial_start", "port_reuse", "qinq",
    "reinvite_hold", "sll", "sll2", "tcp_split", "tel_uri", "vlan", "vxlan",
)
MADE_ELSEWHERE = (
    "dtmf_pt_mismatch", "dtmf_rfc4733", "dtmf_sipinfo",                 # make_dtmf_pcaps.py
    "hep_basic_udp",                                                    # make_hep_pcaps.py
    "pbx_b2bua", "pbx_doubled", "pbx_forward", "pbx_pickup", "pbx_transfer",   # make_pbx_pcaps.py
    "sipp_g711a", "sipp_proxy_rtpengine",                               # record_sipp.sh, record_proxy.sh
    "baresip_srtp_pcmu", "baresip_srtpmand_pcma", "baresip_srtpmand_g722",  # record_baresip.sh
    "baresip_srtp_declined",
    "srtp_aes80", "srtp_aes32_oneway", "srtp_aes256", "srtp_gcm", "srtp_gcm256", "srtp_mki",  # make_srtp_pcaps.py
    "srtp_rekey", "srtp_auth_fail", "srtp_dtls", "srtp_no_keys", "srtp_dtmf",
)


def test_truth_files_exist() -> None:
    have = {p.name.removesuffix(".truth.json") for p in TRUTHS}
    assert sorted(set(GENERATED + MADE_ELSEWHERE) - have) == []
    for t in TRUTHS:
        assert capture_of(t).is_file(), t.name
        assert capture_of(t).stat().st_size < 200_000, t.name


@pytest.mark.parametrize("truth_path", TRUTHS, ids=lambda p: p.name.removesuffix(".truth.json"))
def test_capture_matches_truth(truth_path: Path) -> None:
    truth = load_truth(truth_path)
    records = inspect_cached(str(PCAPS_DIR / truth["capture"]))
    got_ids = sorted(r["callid"] for r in records)
    want_ids = sorted(c["callid"] for c in truth["calls"])
    assert got_ids == want_ids, f"calls differ: got {got_ids}, want {want_ids}"
    by_id = {r["callid"]: r for r in records}
    diffs = []
    for call in truth["calls"]:
        diffs += [f"{call['callid']}: {d}" for d in compare_call(by_id[call["callid"]], call)]
    assert not diffs, f"{truth['capture']}: " + "\n".join(diffs)


@pytest.mark.slow  # regenerates every scenario of make_pcaps.py (~10 s)
def test_generator_is_deterministic(tmp_path: Path) -> None:
    """make_pcaps.py reproduces the committed captures and truth files byte for byte."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(PCAPS_DIR / "make_pcaps.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    made = sorted(p.name for p in tmp_path.iterdir())
    want = sorted(f"{name}.{ext}" for name in GENERATED
                  for ext in ("truth.json", "pcapng" if name == "sll2" else "pcap"))
    assert made == want
    for name in made:
        assert (tmp_path / name).read_bytes() == (PCAPS_DIR / name).read_bytes(), name
