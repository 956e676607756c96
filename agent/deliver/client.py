"""The CallN v1 HTTP client: one request per call, a typed Outcome per answer.

Owns the wire format (headers, JSON body, Content-Range, gzip) and the mapping
of every result code in API.md to an Outcome kind. It keeps no upload state and
makes no retry decisions: that is the uploader's job.
"""

from __future__ import annotations

import gzip as _gzip
import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from agent.errors import ConfigError

API_FIELDS: tuple[str, ...] = (
    "startdatetimeutc", "callername", "callerphone", "callerdtmf", "callermacaddress",
    "callermediaendpoint", "destinationname", "destinationphone", "destinationdtmf",
    "destinationmacaddress", "destinationmediaendpoint", "clientoperatingsystem",
    "servername", "location",
)

# Outcome kinds
OK = "ok"                # 200
TRANSIENT = "transient"  # 500, other 5xx, network error, timeout, reset: retry with back-off
AUTH = "auth"            # 401: stop all uploading
QUOTA = "quota"          # 403: back off for hours
PARK = "park"            # 400 / 405: never retry blindly
EXPIRED = "expired"      # 404 on audio: the temp id is gone
CONFIG = "config"        # 406 (plain HTTP) or another sign the URL is wrong


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    status: int | None = None      # HTTP status, None when no response arrived
    reason: str = ""               # server text or exception summary (never credentials)
    tempcallid: str | None = None  # create_call success
    complete: bool = False         # put_audio: the server said {"status": "complete"}
    response_lost: bool = False    # the request may have reached the server (no answer read)


def api_fields(record: dict[str, Any]) -> dict[str, str]:
    """Exactly the 14 API fields, every value a string ("" when unknown)."""
    out = {}
    for name in API_FIELDS:
        value = record.get(name)
        out[name] = "" if value is None else str(value)
    return out


def check_url(base_url: str) -> None:
    if not base_url.lower().startswith("https://"):
        raise ConfigError(f"[api] url {base_url!r}: the CallN API requires https:// (plain HTTP is refused)")


class CallnClient:
    """A reusable HTTPS connection to the CallN API with Basic auth."""

    def __init__(self, base_url: str, username: str, password: str, *,
                 ca_bundle: str | None = None, connect_timeout_s: float = 10.0,
                 read_timeout_s: float = 60.0, write_timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        check_url(base_url)
        self.base_url = base_url.rstrip("/")
        self.username = username
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                                write=write_timeout_s, pool=connect_timeout_s)
        kwargs: dict[str, Any] = {}
        if transport is not None:
            kwargs["transport"] = transport
        self._http = httpx.Client(
            auth=httpx.BasicAuth(username, password), timeout=timeout,
            verify=ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True,
            follow_redirects=False, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "CallnClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def create_call(self, fields: dict[str, Any]) -> Outcome:
        body = json.dumps(api_fields(fields), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        resp = self._send("POST", f"{self.base_url}/api/call", headers, body)
        if isinstance(resp, Outcome):
            return resp
        if resp.status_code == 200:
            try:
                tempcallid = resp.json()["tempcallid"]
            except (ValueError, KeyError, TypeError):
                tempcallid = None
            if not isinstance(tempcallid, str) or not tempcallid or "/" in tempcallid:
                return Outcome(TRANSIENT, 200, f"200 without a usable tempcallid: {_text(resp)}")
            return Outcome(OK, 200, "", tempcallid=tempcallid)
        if resp.status_code == 404:
            # No such endpoint: the URL points at something that is not the CallN API.
            return Outcome(CONFIG, 404, f"POST /api/call answered 404: {_text(resp)}")
        return _classify(resp)

    def put_audio(self, tempcallid: str, chunk_no: int, total_chunks: int | None,
                  data: bytes, content_type: str, gzip: bool = False) -> Outcome:
        total = "*" if total_chunks is None else str(total_chunks)
        headers = {"Content-Type": content_type, "Content-Range": f"chunk {chunk_no}/{total}"}
        if gzip:
            # mtime=0: a re-sent chunk is byte-identical on the wire too.
            data = _gzip.compress(data, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        resp = self._send("PUT", f"{self.base_url}/api/callaudio/{tempcallid}", headers, data)
        if isinstance(resp, Outcome):
            return resp
        if resp.status_code == 200:
            try:
                status = resp.json().get("status")
            except (ValueError, AttributeError):
                status = None
            return Outcome(OK, 200, "", complete=(status == "complete"))
        if resp.status_code == 404:
            return Outcome(EXPIRED, 404, _text(resp))
        return _classify(resp)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> httpx.Response | Outcome:
        try:
            return self._http.request(method, url, headers=headers, content=body)
        except httpx.ConnectError as exc:
            # Nothing was sent (TLS verification failures land here too: say so).
            return Outcome(TRANSIENT, None, f"connect: {exc}")
        except httpx.TransportError as exc:  # timeouts, resets, server closed without answer
            return Outcome(TRANSIENT, None, f"{type(exc).__name__}: {exc}", response_lost=True)


def _text(resp: httpx.Response) -> str:
    text = resp.text.strip()
    return text[:500]


def _classify(resp: httpx.Response) -> Outcome:
    code = resp.status_code
    text = _text(resp)
    if code == 401:
        return Outcome(AUTH, code, text or "Unauthorized")
    if code == 403:
        return Outcome(QUOTA, code, text)
    if code in (400, 405):
        return Outcome(PARK, code, f"{code} {text}")
    if code == 406:
        return Outcome(CONFIG, code, text or "SSL must be used")
    # 5xx, 429 and anything unexpected: transient (retrying never stores a call twice).
    return Outcome(TRANSIENT, code, f"{code} {text}")
