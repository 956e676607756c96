"""SDES-SRTP through `replay --deliver` (issue 19): a decryptable call is stored with its
audio, a DTLS-SRTP call is parked `no_audio:encrypted_dtls` with its metadata, and no key
(base64 or hex) is in any file the spool or the receiver keeps."""

from __future__ import annotations

import base64
import re

from agent.deliver.spool import PARKED, Spool
from agent.delivery import replay_and_deliver
from tests.conftest import PCAPS
from tests.deliver.test_deliver_replay_e2e import _config


def _key_texts() -> set[str]:
    texts = set()
    for name in ("srtp_rekey", "srtp_dtls"):
        for b64 in re.findall(rb"inline:([A-Za-z0-9+/=]+)", (PCAPS / f"{name}.pcap").read_bytes()):
            raw = base64.b64decode(b64 + b"=" * (-len(b64) % 4))
            texts |= {b64.rstrip(b"="), raw, raw.hex().encode(), raw.hex().upper().encode()}
    return texts


def test_srtp_calls_deliver_or_park_and_keys_stay_out_of_the_spool(tmp_path, receiver):
    config = _config(tmp_path, receiver, "wav")
    for name in ("srtp_rekey", "srtp_dtls"):          # one at a time: same addresses and times
        status, summary = replay_and_deliver([PCAPS / f"{name}.pcap"], config, deadline_s=120, progress=False)
        assert status == 0, summary
    stored = receiver.stored_calls()
    assert [c.meta["callerphone"] for c in stored] == ["1001"] and stored[0].audio
    spool = Spool(tmp_path / "spool")
    parked = [e for e in spool.list() if e.state == PARKED]
    assert [(e.record["callid"], e.reason) for e in parked] == [("srtp_dtls-0001@callntest.example",
                                                                "no_audio:encrypted_dtls")]
    keys = _key_texts()
    assert len(keys) >= 12
    files = [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not any(key in data for key in keys), path.name
    for call in stored:
        assert not any(key in repr(call.meta).encode() for key in keys)
