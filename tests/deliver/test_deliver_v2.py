"""CallN API v2 on the transport side (issue 18 part 2): the body built from the record, the
receiver's v2 contract, and the uploader speaking v2 end to end."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from agent.deliver.client import api_body_v2
from agent.deliver.spool import DELIVERED, Spool
from agent.deliver.uploader import Uploader
from agent.receiver import ReceiverServer
from deliver_helpers import FakeTime, api_for, make_audio, make_record

START_NS = 1_714_557_600_000_000_000          # 2024-05-01 10:00:00 UTC


def _record(i: int = 0, **over: object) -> dict:
    rec = make_record(i, startdatetimeutc="2024-05-01 10:00:00", start_ts_ns=START_NS,
                      answer_ts_ns=START_NS + 2_500_000_000, callerdtmf="12", destinationdtmf="#",
                      dtmf=[{"digit": "1", "side": "caller", "offset_ms": 4200, "source": "rfc4733",
                             "duration_ms": 120},
                            {"digit": "#", "side": "callee", "offset_ms": 5000, "source": "info",
                             "duration_ms": 0},
                            {"digit": "2", "side": "caller", "offset_ms": 6100, "source": "inband",
                             "duration_ms": 80}])
    rec.update(over)
    return rec


def test_v2_body_from_the_record() -> None:
    rec = _record()
    assert api_body_v2(rec) == {
        "startdatetimeutc": "2024-05-01 10:00:00",
        "connecteddatetimeutc": "2024-05-01 10:00:02",
        "callid": "call-0@pbx",
        "caller": {"phonenumber": rec["callerphone"], "name": "Caller 0", "macaddress": "00908F0A393A",
                   "mediaendpoint": "10.0.0.1:4000",
                   "keypresses": [{"timems": 4200, "key": "1"}, {"timems": 6100, "key": "2"}]},
        "destination": {"phonenumber": "2000", "name": "Desk", "macaddress": "",
                        "mediaendpoint": "10.0.0.2:5000", "keypresses": [{"timems": 5000, "key": "#"}]},
        "telephonyplatform": None,
        "clientoperatingsystem": "Linux 6.1.0 x86_64 (Debian 12)",
        "clientservername": "rec1",
        "location": "Melbourne office — 3rd floor",
        "notes": "",
    }


def test_v2_body_prefers_fields_the_record_names_and_sends_null_without_them() -> None:
    rec = _record(keypresses={"caller": [{"timems": 10, "key": "9"}], "destination": []},
                  connecteddatetimeutc="2024-05-01 10:00:09", telephonyplatform="Asterisk PBX 18.2",
                  notes="n")
    body = api_body_v2(rec)
    assert body["caller"]["keypresses"] == [{"timems": 10, "key": "9"}]
    assert body["destination"]["keypresses"] is None
    assert (body["connecteddatetimeutc"], body["telephonyplatform"], body["notes"]) == \
        ("2024-05-01 10:00:09", "Asterisk PBX 18.2", "n")
    bare = api_body_v2(make_record(1, answer_ts_ns=None, dtmf=[]))
    assert bare["connecteddatetimeutc"] is None and bare["caller"]["keypresses"] is None
    # PCI redaction blanks the digits: the presses keep their times, with no key.
    redacted = api_body_v2(_record(dtmf=[{"digit": "", "side": "caller", "offset_ms": 4200}]))
    assert redacted["caller"]["keypresses"] == [{"timems": 4200, "key": None}]


@pytest.fixture
def http(receiver):
    with httpx.Client(base_url=receiver.url, auth=("agent", "secret"),
                      verify=ssl.create_default_context(cafile=str(receiver.ca_path))) as c:
        yield c


def test_receiver_speaks_v2(http, receiver) -> None:
    body = api_body_v2(_record())
    body["connectdatetimeutc"] = body.pop("connecteddatetimeutc")      # the vendor's example spelling
    r = http.post("/api/v2/call", json=body)
    assert r.status_code == 206
    tid = r.headers["Temporary-Call-ID"]
    put = {"Content-Type": "audio/mpeg"}
    assert http.put(f"/api/v2/callaudio/{tid}", content=b"ab",
                    headers=dict(put, **{"Content-Range": "chunk 1/2"})).status_code == 206
    assert http.put(f"/api/v2/callaudio/{tid}", content=b"ab",          # a harmless re-send
                    headers=dict(put, **{"Content-Range": "chunk 1/2"})).status_code == 206
    assert http.put(f"/api/v2/callaudio/{tid}", content=b"cd",
                    headers=dict(put, **{"Content-Range": "chunk 2/2"})).status_code == 200
    assert http.put(f"/api/v2/callaudio/{tid}", content=b"cd",
                    headers=dict(put, **{"Content-Range": "chunk 2/2"})).status_code == 404
    [stored] = receiver.stored_calls()
    assert stored.audio == b"abcd"
    assert stored.meta["connecteddatetimeutc"] == "2024-05-01 10:00:02"
    assert "connectdatetimeutc" not in stored.meta
    bad = api_body_v2(_record())
    bad["caller"]["keypresses"] = [{"timems": -1, "key": "1"}]
    assert http.post("/api/v2/call", json=bad).status_code == 400
    bad["caller"]["keypresses"] = [{"timems": 1, "key": "X"}]
    assert http.post("/api/v2/call", json=bad).status_code == 400
    assert http.post("/api/v2/call", json=dict(body, caller="x")).status_code == 400


def test_uploader_v2_end_to_end_with_a_handset_that_needs_no_audio(tmp_path: Path) -> None:
    rx = ReceiverServer(tmp_path / "rx", cert_dir=tmp_path / "certs", no_audio_phones=("2001",))
    rx.start()
    try:
        spool = Spool(tmp_path / "spool", retention_days=1.0)
        expected = {}
        for i, size in enumerate([3 * 4096 + 5, 500, 9000]):
            audio, data = make_audio(tmp_path, i, size)
            rec = _record(i, callid=f"v2-{i}@pbx")
            expected[spool.enqueue(rec, audio, "audio/mpeg")] = (rec, data)
        ft = FakeTime()
        up = Uploader(spool, api_for(rx, version=2), clock=ft.clock, sleep=ft.sleep)
        assert up.run_until_idle(deadline_s=60)
        up.close()
        stored = {c.meta["callid"]: c for c in rx.stored_calls()}
    finally:
        rx.stop()
    assert len(stored) == 3
    for call_id, (rec, data) in expected.items():
        c = stored[rec["callid"]]
        assert c.meta == api_body_v2(rec)
        # 2001 is a disabled handset: the server answered the POST 200 and wanted no audio.
        assert c.audio == (b"" if rec["destinationphone"] == "2001" else data)
        assert spool.get(call_id).state == DELIVERED
    assert up.counters["deliver.upload.no_audio_needed"] == 1
    assert up.counters["deliver.upload.chunks_sent"] == 4 + 3      # no chunk for the handset
