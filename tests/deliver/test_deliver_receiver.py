"""The local receiver speaks the whole v1 contract (checked with raw httpx requests)."""

from __future__ import annotations

import gzip
import ssl

import httpx
import pytest


@pytest.fixture
def http(receiver):
    with httpx.Client(base_url=receiver.url, auth=("agent", "secret"),
                      verify=ssl.create_default_context(cafile=str(receiver.ca_path))) as c:
        yield c


META = {"startdatetimeutc": "2024-05-01 10:00:00", "callerphone": "100", "destinationphone": "200"}


def _create(http) -> str:
    r = http.post("/api/call", json=META)
    assert r.status_code == 200
    return r.json()["tempcallid"]


def _put(http, tid: str, rng: str, body: bytes, ctype: str = "audio/mpeg", **headers: str):
    return http.put(f"/api/callaudio/{tid}", content=body,
                    headers={"Content-Type": ctype, "Content-Range": rng, **headers})


def test_contract_errors(http, receiver) -> None:
    assert http.post("/api/call", content=b"{'single': 'quotes'}",
                     headers={"Content-Type": "application/json"}).status_code == 400
    r = http.post("/api/call", json=dict(META, startdatetimeutc="2024-05-01T10:00:00Z"))
    assert (r.status_code, r.text) == (400, "invalid startdatetimeutc")
    tid = _create(http)
    assert _put(http, tid, "chunk 1/2", b"a", ctype="text/plain").status_code == 400
    assert _put(http, tid, "bytes 0-1/2", b"a").status_code == 400
    assert _put(http, tid, "chunk 0/2", b"a").status_code == 400
    assert _put(http, tid, "chunk 1/2", b"aa").json() == {"status": "received"}
    assert _put(http, tid, "chunk 1/2", b"aa").status_code == 200            # idempotent re-send
    assert _put(http, tid, "chunk 1/2", b"XX").status_code == 400            # same number, new bytes
    assert (r := _put(http, tid, "chunk 2/3", b"b")).status_code == 400 and r.text == "totalChunks changed"
    assert _put(http, tid, "chunk 2/2", b"bb").json() == {"status": "complete"}
    assert _put(http, tid, "chunk 2/2", b"bb").status_code == 404            # consumed on completion
    assert _put(http, "unknown", "chunk 1/1", b"x").status_code == 404
    [c] = receiver.stored_calls()
    assert c.audio == b"aabb" and c.meta == META
    assert httpx.post(receiver.url + "/api/call", json=META,
                      verify=ssl.create_default_context(cafile=str(receiver.ca_path))).status_code == 401


def test_star_total_and_gzip(http, receiver) -> None:
    tid = _create(http)
    assert _put(http, tid, "chunk 1/*", gzip.compress(b"RIFF1"), "audio/wav",
                **{"Content-Encoding": "gzip"}).status_code == 200
    assert _put(http, tid, "chunk 2/2", b"22", "audio/wav").json() == {"status": "complete"}
    [c] = receiver.stored_calls()
    assert c.audio == b"RIFF122" and c.content_type == "audio/wav"
    assert (receiver.dir / "1.wav").read_bytes() == b"RIFF122"
    assert (receiver.dir / "index.json").exists()


def test_quota_and_unknown_phone(http, receiver) -> None:
    receiver.set_quota(0)
    r = http.post("/api/call", json=META)
    assert (r.status_code, r.text) == (403, "account has reached monthly deposit quota of 0")
    receiver.set_quota(None)
    receiver.unknown_phones = {"200"}
    assert http.post("/api/call", json=META).status_code == 405
