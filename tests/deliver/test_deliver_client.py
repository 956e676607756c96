"""CallnClient on the wire (pytest-httpx): exact headers, exact JSON, every result code."""

from __future__ import annotations

import base64
import gzip
import json

import httpx
import pytest

from agent.deliver import client as cl
from agent.deliver.client import API_FIELDS, CallnClient
from agent.errors import ConfigError
from deliver_helpers import make_record

BASE = "https://api.example.test"


@pytest.fixture
def client():
    c = CallnClient(BASE + "/", "agent", "s3cret")
    yield c
    c.close()


def test_create_call_posts_exact_json_and_headers(httpx_mock, client) -> None:
    httpx_mock.add_response(method="POST", url=BASE + "/api/call", json={"tempcallid": "abc123"})
    rec = make_record(3, callerdtmf=None, leg=0)
    out = client.create_call(rec)
    assert out == cl.Outcome(cl.OK, 200, "", tempcallid="abc123")
    [req] = httpx_mock.get_requests()
    assert req.method == "POST"
    assert req.headers["Content-Type"] == "application/json; charset=utf-8"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"agent:s3cret").decode()
    body = json.loads(req.content.decode("utf-8"))
    assert list(body) == list(API_FIELDS) and len(body) == 14
    assert body["callerdtmf"] == ""                      # None → ""
    assert body["location"] == "Melbourne office — 3rd floor"   # real UTF-8, not escapes
    assert "Melbourne office — 3rd floor".encode() in req.content
    assert all(isinstance(v, str) for v in body.values())
    assert "callid" not in body and "answered" not in body


def test_put_audio_headers_mp3(httpx_mock, client) -> None:
    httpx_mock.add_response(method="PUT", url=BASE + "/api/callaudio/t1", json={"status": "received"})
    out = client.put_audio("t1", 2, 3, b"\xff\xfb" * 10, "audio/mpeg")
    assert out.kind == cl.OK and not out.complete
    [req] = httpx_mock.get_requests()
    assert req.headers["Content-Type"] == "audio/mpeg"
    assert req.headers["Content-Range"] == "chunk 2/3"
    assert "Content-Encoding" not in req.headers
    assert req.content == b"\xff\xfb" * 10
    assert req.headers["Authorization"].startswith("Basic ")


def test_put_audio_wav_gzip_and_complete(httpx_mock, client) -> None:
    httpx_mock.add_response(method="PUT", url=BASE + "/api/callaudio/t1", json={"status": "complete"})
    data = b"RIFF" + bytes(2000)
    out = client.put_audio("t1", 3, 3, data, "audio/wav", gzip=True)
    assert out.kind == cl.OK and out.complete
    [req] = httpx_mock.get_requests()
    assert req.headers["Content-Type"] == "audio/wav"
    assert req.headers["Content-Range"] == "chunk 3/3"
    assert req.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(req.content) == data
    assert len(req.content) < len(data)


@pytest.mark.parametrize("code,text,kind", [
    (400, "invalid startdatetimeutc", cl.PARK), (401, "Unauthorized", cl.AUTH),
    (403, "account has reached monthly deposit quota of 5", cl.QUOTA),
    (405, "reseller account has no clients with that phone number", cl.PARK),
    (406, "SSL must be used", cl.CONFIG), (500, "Server Error", cl.TRANSIENT),
    (503, "busy", cl.TRANSIENT), (404, "nope", cl.CONFIG),
])
def test_create_call_result_codes(httpx_mock, client, code, text, kind) -> None:
    httpx_mock.add_response(method="POST", status_code=code, text=text)
    out = client.create_call(make_record(1))
    assert (out.kind, out.status) == (kind, code)
    assert text in out.reason


@pytest.mark.parametrize("code,kind", [(200, cl.OK), (400, cl.PARK), (401, cl.AUTH),
                                       (404, cl.EXPIRED), (406, cl.CONFIG), (500, cl.TRANSIENT)])
def test_put_audio_result_codes(httpx_mock, client, code, kind) -> None:
    httpx_mock.add_response(method="PUT", status_code=code, text="x" if code != 200 else '{"status":"complete"}')
    assert client.put_audio("t", 1, 1, b"a", "audio/mpeg").kind == kind


def test_network_errors_are_transient(httpx_mock, client) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"))
    httpx_mock.add_exception(httpx.ConnectError("refused"))
    out = client.put_audio("t", 1, 1, b"a", "audio/mpeg")
    assert out.kind == cl.TRANSIENT and out.response_lost and out.status is None
    out = client.put_audio("t", 1, 1, b"a", "audio/mpeg")
    assert out.kind == cl.TRANSIENT and not out.response_lost


def test_200_without_tempcallid_is_transient(httpx_mock, client) -> None:
    httpx_mock.add_response(method="POST", json={"status": "ok"})
    assert client.create_call(make_record(1)).kind == cl.TRANSIENT


def test_plain_http_url_refused() -> None:
    with pytest.raises(ConfigError):
        CallnClient("http://api.calln.com", "a", "b")
