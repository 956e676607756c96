"""The CallN HTTP client (API v1 and v2): one request per call, a typed Outcome per answer.

Owns the wire format (paths, headers, JSON bodies of both versions, Content-Range,
gzip) and the mapping of every result code in API.md to an Outcome kind. It keeps no
upload state and makes no retry decisions: that is the uploader's job.

v2 differs on the wire only: ``POST /api/v2/call`` with nested caller/destination
objects answers 206 + ``Temporary-Call-ID`` (audio must follow) or 200 (the call is
complete without audio); ``PUT /api/v2/callaudio/{id}`` answers 206 while chunks remain
and 200 when the call is stored.
"""

from __future__ import annotations

import datetime as dt
import gzip as _gzip
import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from agent.calls.record import CallRecord
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
PARK = "park"            # 400 / 405 / 413: never retry blindly
EXPIRED = "expired"      # 404 on audio: the temp id is gone
CONFIG = "config"        # 406 (plain HTTP), a certificate that does not verify, a wrong URL


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    status: int | None = None      # HTTP status, None when no response arrived
    reason: str = ""               # server text or exception summary (never credentials)
    tempcallid: str | None = None  # create_call success
    complete: bool = False         # the call is stored: last chunk done (v1 {"status": "complete"},
                                   # v2 200), or a v2 POST answered 200 (no audio needed)
    response_lost: bool = False    # the request may have reached the server (no answer read)
    tls_error: bool = False        # the server's certificate could not be verified (CONFIG)


def api_fields(record: CallRecord) -> dict[str, str]:
    """The v1 POST body: exactly the 14 API fields, every value a string ("" when unknown).
    With ``api_body_v2``, the one place a record becomes an API payload."""
    out = {}
    for name in API_FIELDS:
        value = record.get(name)
        out[name] = "" if value is None else str(value)
    return out


# Where v2 takes what the record has. The record (agent/calls/record.py) may carry these
# keys; when it does not, v2 sends null:
#   keypresses          {"caller": [{"timems", "key"}...], "destination": [...]}; else built from
#                       the record's ``dtmf`` list (digit, side, offset_ms from the INVITE)
#   connecteddatetimeutc  "YYYY-MM-DD HH:MM:SS"; else from ``answer_ts_ns`` (the 200 OK's time)
#   telephonyplatform   the PBX side's User-Agent / Server header
#   notes               free text
KEYS_V2 = frozenset("0123456789*#ABCD")


def _utc_text(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _keypresses(record: CallRecord, side: str) -> list[dict[str, Any]] | None:
    """A side's key presses as v2 wants them, or None when there were none."""
    given = record.get("keypresses")
    if isinstance(given, dict):
        presses = given.get(side) or []
    else:
        record_side = "caller" if side == "caller" else "callee"
        presses = [{"timems": p.get("offset_ms"), "key": p.get("digit")}
                   for p in record.get("dtmf") or []
                   if isinstance(p, dict) and p.get("side") == record_side]
    out = []
    for p in presses:
        try:
            timems = int(p["timems"])
        except (KeyError, TypeError, ValueError):
            continue                       # a press without a time is not a v2 key press
        key = p.get("key")
        # A redacted digit (PCI) stays a press with its time and no key.
        out.append({"timems": max(0, timems), "key": key if key in KEYS_V2 else None})
    return out or None


def api_body_v2(record: CallRecord) -> dict[str, Any]:
    """The POST /api/v2/call body (API.md, version 2) from a call record."""
    def text(name: str) -> str:
        value = record.get(name)
        return "" if value is None else str(value)

    def party(prefix: str, side: str) -> dict[str, Any]:
        return {"phonenumber": text(f"{prefix}phone"), "name": text(f"{prefix}name"),
                "macaddress": text(f"{prefix}macaddress"),
                "mediaendpoint": text(f"{prefix}mediaendpoint"),
                "keypresses": _keypresses(record, side)}

    connected = record.get("connecteddatetimeutc")
    answer_ts_ns = record.get("answer_ts_ns")
    if not connected and isinstance(answer_ts_ns, int):
        connected = _utc_text(answer_ts_ns)
    return {
        "startdatetimeutc": text("startdatetimeutc"),
        "connecteddatetimeutc": connected or None,
        "callid": text("callid"),
        "caller": party("caller", "caller"),
        "destination": party("destination", "destination"),
        "telephonyplatform": record.get("telephonyplatform") or None,
        "clientoperatingsystem": text("clientoperatingsystem"),
        "clientservername": text("servername"),
        "location": text("location"),
        "notes": text("notes"),
    }


def check_url(base_url: str) -> None:
    if not base_url.lower().startswith("https://"):
        raise ConfigError(f"[api] url {base_url!r}: the CallN API requires https:// (plain HTTP is refused)")


def trust_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The TLS context that verifies the API server: ``ca_bundle`` or the system trust store.
    ConfigError when the bundle cannot be loaded (refused at start-up, not at upload time)."""
    try:
        return ssl.create_default_context(cafile=ca_bundle or None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"[api] ca_bundle {ca_bundle}: cannot load a CA certificate from it "
                          f"({getattr(exc, 'strerror', None) or exc})") from None


def probe_tls(base_url: str, ca_bundle: str | None, timeout_s: float = 5.0) -> tuple[str, str]:
    """For check-config: (level, message) on whether the API server's certificate verifies.
    "fail" when it does not (or the bundle is unusable), "warn" when the server is unreachable."""
    try:
        ctx = trust_context(ca_bundle)
    except ConfigError as exc:
        return "fail", str(exc)
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                pass
    except ssl.SSLCertVerificationError as exc:
        return "fail", tls_problem(ca_bundle, base_url, exc)
    except (OSError, ssl.SSLError) as exc:
        return "warn", f"cannot reach {host}:{port} to check its TLS certificate: {exc}"
    trust = f"[api] ca_bundle {ca_bundle}" if ca_bundle else "the system trust store"
    return "ok", f"TLS certificate of {host} verified against {trust}"


class CallnClient:
    """A reusable HTTPS connection to the CallN API with Basic auth."""

    def __init__(self, base_url: str, username: str, password: str, *,
                 ca_bundle: str | None = None, connect_timeout_s: float = 10.0,
                 read_timeout_s: float = 60.0, write_timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None, version: int = 1) -> None:
        check_url(base_url)
        if version not in (1, 2):
            raise ConfigError(f"[api] version {version!r}: expected 1 or 2")
        self.version = version
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._ca_bundle = ca_bundle
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                                write=write_timeout_s, pool=connect_timeout_s)
        kwargs: dict[str, Any] = {}
        if transport is not None:
            kwargs["transport"] = transport
        self._http = httpx.Client(
            auth=httpx.BasicAuth(username, password), timeout=timeout,
            verify=trust_context(ca_bundle),
            follow_redirects=False, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "CallnClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def create_call(self, record: CallRecord) -> Outcome:
        body_obj = api_body_v2(record) if self.version == 2 else api_fields(record)
        body = json.dumps(body_obj, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        path = "/api/v2/call" if self.version == 2 else "/api/call"
        resp = self._send("POST", f"{self.base_url}{path}", headers, body)
        if isinstance(resp, Outcome):
            return resp
        code = resp.status_code
        if self.version == 2 and code == 200:
            return Outcome(OK, 200, "no audio needed", complete=True)
        if (self.version, code) in ((1, 200), (2, 206)):
            if self.version == 2:
                tempcallid = resp.headers.get("Temporary-Call-ID")
            else:
                try:
                    tempcallid = resp.json()["tempcallid"]
                except (ValueError, KeyError, TypeError):
                    tempcallid = None
            if not isinstance(tempcallid, str) or not tempcallid or "/" in tempcallid:
                return Outcome(TRANSIENT, code, f"{code} without a usable temp call id: {_text(resp)}")
            return Outcome(OK, code, "", tempcallid=tempcallid)
        if code == 404:
            # No such endpoint: the URL points at something that is not the CallN API.
            return Outcome(CONFIG, 404, f"POST {path} answered 404: {_text(resp)}")
        return _classify(resp)

    def put_audio(self, tempcallid: str, chunk_no: int, total_chunks: int | None,
                  data: bytes, content_type: str, gzip: bool = False) -> Outcome:
        total = "*" if total_chunks is None else str(total_chunks)
        headers = {"Content-Type": content_type, "Content-Range": f"chunk {chunk_no}/{total}"}
        if gzip:
            # mtime=0: a re-sent chunk is byte-identical on the wire too.
            data = _gzip.compress(data, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        path = "/api/v2/callaudio/" if self.version == 2 else "/api/callaudio/"
        resp = self._send("PUT", f"{self.base_url}{path}{tempcallid}", headers, data)
        if isinstance(resp, Outcome):
            return resp
        code = resp.status_code
        if self.version == 2 and code in (200, 206):
            return Outcome(OK, code, "", complete=(code == 200))
        if self.version == 1 and code == 200:
            try:
                status = resp.json().get("status")
            except (ValueError, AttributeError):
                status = None
            return Outcome(OK, 200, "", complete=(status == "complete"))
        if code == 404:
            return Outcome(EXPIRED, 404, _text(resp))
        return _classify(resp)

    def _send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> httpx.Response | Outcome:
        try:
            return self._http.request(method, url, headers=headers, content=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing was sent. A certificate that does not verify is a configuration fault
            # (wrong [api] ca_bundle, or not the CallN server): retrying cannot fix it.
            verify = _cert_verify_error(exc)
            if verify is not None:
                return Outcome(CONFIG, None, tls_problem(self._ca_bundle, url, verify), tls_error=True)
            return Outcome(TRANSIENT, None, f"connect: {exc}")
        except httpx.TransportError as exc:  # timeouts, resets, server closed without answer
            return Outcome(TRANSIENT, None, f"{type(exc).__name__}: {exc}", response_lost=True)


def _cert_verify_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an httpx exception, if that is what it is."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def tls_problem(ca_bundle: str | None, url: str, exc: ssl.SSLCertVerificationError) -> str:
    """An operator's sentence for a certificate that did not verify: what, where, which CA."""
    trust = f"[api] ca_bundle {ca_bundle}" if ca_bundle else "the system trust store ([api] ca_bundle unset)"
    why = exc.verify_message or exc.reason or str(exc)
    return (f"TLS certificate verify failed for {httpx.URL(url).host} ({why}) against {trust}: "
            f"set [api] ca_bundle to the CA that signed the server's certificate")


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
    if code in (400, 405, 413):
        # 413: a chunk larger than the server takes; the same bytes never fit. The operator
        # lowers [api] chunk_bytes and retries the call (a retry makes a new chunk plan).
        return Outcome(PARK, code, f"{code} {text}")
    if code == 406:
        return Outcome(CONFIG, code, text or "SSL must be used")
    # 5xx, 429 and anything unexpected: transient (retrying never stores a call twice).
    return Outcome(TRANSIENT, code, f"{code} {text}")
