"""A local CallN-compatible HTTPS receiver (API v1 and v2), for the demo and the tests.

Owns a small in-process server (stdlib ``http.server`` in threads, TLS with a
self-signed CA generated on first start) that implements the whole upload
contract of API.md, with fault injection (random 500s and dropped connections,
slowness, expiring temp ids, and scripted faults: any outcome of FAULT_ACTIONS at
any step of FAULT_STEPS) and durable storage of each completed call as ``<n>.json`` + ``<n>.mp3|.wav`` plus ``index.json``.
It is not a production server: one process, state of open uploads in memory.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import ipaddress
import json
import os
import random
import re
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.deliver.client import API_FIELDS

_RANGE_RE = re.compile(r"^chunk (\d+)/(\d+|\*)$")
_EXT = {"audio/mpeg": "mp3", "audio/wav": "wav"}


# ---------------------------------------------------------------------- certificates
def ensure_certificates(cert_dir: Path, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> tuple[Path, Path, Path]:
    """Create (once) a CA and a server certificate signed by it. Returns (ca, cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_dir = Path(cert_dir)
    ca_path, cert_path, key_path = cert_dir / "ca.pem", cert_dir / "server.pem", cert_dir / "server.key"
    if ca_path.exists() and cert_path.exists() and key_path.exists():
        return ca_path, cert_path, key_path
    cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CallN test receiver CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, cert_path, key_path


# ---------------------------------------------------------------------- state
@dataclass(slots=True)
class StoredCall:
    n: int
    meta: dict[str, Any]
    audio: bytes
    content_type: str
    tempcallid: str

    def v1_fields(self) -> dict[str, str]:
        """The call in v1 field names, whichever version stored it (for listings)."""
        m = self.meta
        if not isinstance(m.get("caller"), dict):
            return {k: str(m.get(k, "")) for k in API_FIELDS}
        out = {"startdatetimeutc": str(m.get("startdatetimeutc", "")),
               "clientoperatingsystem": str(m.get("clientoperatingsystem", "")),
               "servername": str(m.get("clientservername", "")), "location": str(m.get("location", ""))}
        for prefix, side in (("caller", "caller"), ("destination", "destination")):
            party = m.get(side) or {}
            out[f"{prefix}name"], out[f"{prefix}phone"] = party.get("name", ""), party.get("phonenumber", "")
            out[f"{prefix}macaddress"] = party.get("macaddress", "")
            out[f"{prefix}mediaendpoint"] = party.get("mediaendpoint", "")
            out[f"{prefix}dtmf"] = "".join(p.get("key") or "" for p in party.get("keypresses") or [])
        return out


@dataclass(slots=True)
class _Pending:
    meta: dict[str, Any]
    meta_hash: str
    created_at: float
    content_type: str | None = None
    total: int | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    puts: int = 0


# Scripted faults (tests of the fault matrix). Where: the request a call is at.
FAULT_STEPS = ("post", "first", "middle", "last")
# What: the outcome the request gets. "after" = the request is processed (the call created,
# the chunk stored, the last one completing the call) and only then does the answer fail.
FAULT_ACTIONS = (
    "no_answer",      # processed, then the connection is closed without a byte of answer
    "reset_before",   # connection reset before the body is read: nothing processed
    "reset_after",    # processed, then the connection is reset
    "timeout",        # processed, the answer held past the client's timeout, then dropped
    "500_before",     # 500, nothing processed
    "500_after",      # processed (committed), then 500
    "503",            # 503 Service Unavailable, nothing processed
    "404_expired",    # the temp id is forgotten and the request answered 404
    "401", "403", "413",  # answered at once, nothing processed
)
_ANSWER_AT_ONCE = {"500_before": (500, "Server Error"), "503": (503, "Service Unavailable"),
                   "401": (401, "Unauthorized"), "403": (403, "account has reached monthly deposit quota of 0"),
                   "413": (413, "Payload Too Large")}


@dataclass(slots=True)
class FaultRule:
    step: str          # one of FAULT_STEPS
    action: str        # one of FAULT_ACTIONS
    times: int = 1     # how many matching requests get it

    def __post_init__(self) -> None:
        if self.step not in FAULT_STEPS or self.action not in FAULT_ACTIONS:
            raise ValueError(f"no such fault: {self.step} / {self.action}")


def request_step(method: str, path: str, content_range: str) -> str | None:
    """Which FAULT_STEPS a request is: the POST, or the first, a middle or the last chunk."""
    if method == "POST" and path in ("/api/call", "/api/v2/call"):
        return "post"
    m = _RANGE_RE.match(content_range.strip())
    if method != "PUT" or not path.startswith(("/api/callaudio/", "/api/v2/callaudio/")) or not m:
        return None
    n, total = int(m.group(1)), m.group(2)
    if total != "*" and n >= int(total):
        return "last"
    return "first" if n == 1 else "middle"


@dataclass(slots=True)
class Faults:
    fail_rate: float = 0.0           # fraction of requests answered 500 (before processing)
    drop_rate: float = 0.0           # fraction of requests whose connection is closed unanswered
    slow_ms: int = 0                 # delay before each answer
    fail_first: int = 0              # the first N requests are answered 500
    expire_after_chunks: int = 0     # a temp id vanishes after N chunks (once per call)
    drop_last_chunk_response: int = 0  # process the N next final chunks, then drop the answer
    script: list[FaultRule] = field(default_factory=list)  # scripted faults, applied in order
    hold_s: float = 1.0              # how long "timeout" holds the answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stored_calls()
        pass

    def _reply(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = str(body).encode(), "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="CallN"')
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        # Close without a single byte of answer: the client cannot know what happened.
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _reset(self) -> None:
        # SO_LINGER 0: close() sends a TCP RST, the way a crashing server or a middlebox does.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _handle(self) -> None:
        rx: ReceiverServer = self.server.receiver
        step = request_step(self.command, self.path, self.headers.get("Content-Range") or "")
        scripted = rx._scripted_fault(step)
        if scripted == "reset_before":
            self._reset()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if not self.server.tls:
            self._reply(406, "SSL must be used")
            return
        if not rx._authorized(self.headers.get("Authorization", "")):
            self._reply(401, "Unauthorized")
            return
        if scripted in _ANSWER_AT_ONCE:
            self._reply(*_ANSWER_AT_ONCE[scripted])
            return
        if scripted == "404_expired":
            if step == "post":          # no temp id yet: the endpoint itself answers 404
                self._reply(404, "Not found")
                return
            rx._forget(self.path)
        action = rx._fault_before()
        if action == "fail":
            self._reply(500, "Server Error")
            return
        if action == "drop":
            self._drop()
            return
        code, answer, drop_after, extra = rx._dispatch(self.command, self.path, self.headers, body,
                                                       drop_after=(action == "drop_after"))
        if rx.faults.slow_ms:
            time.sleep(rx.faults.slow_ms / 1000.0)
        if scripted == "timeout":
            time.sleep(rx.faults.hold_s)
            drop_after = True
        if scripted == "reset_after":
            self._reset()
            return
        if scripted == "500_after":
            self._reply(500, "Server Error")
            return
        if drop_after or scripted == "no_answer":
            self._drop()
            return
        self._reply(code, answer, extra)

    do_POST = do_PUT = do_GET = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], receiver: "ReceiverServer", ctx: ssl.SSLContext | None) -> None:
        self.receiver = receiver
        self.ctx = ctx
        self.tls = ctx is not None
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's thread, so a slow or
        # plain-text client never blocks the accept loop.
        request.settimeout(30)
        if self.ctx is not None:
            try:
                request = self.ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        try:
            super().finish_request(request, client_address)
        except (ConnectionError, ssl.SSLError, socket.timeout, OSError):
            pass


class ReceiverServer:
    """In-process CallN receiver. ``start()`` returns (base_url, ca_cert_path)."""

    def __init__(self, dir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 username: str = "agent", password: str = "secret", cert_dir: Path | None = None,
                 plain_port: int | None = None, quota: int | None = None,
                 unknown_phones: tuple[str, ...] = (), accept_wav: bool = True,
                 no_audio_phones: tuple[str, ...] = (),
                 faults: Faults | None = None, seed: int | None = None) -> None:
        self.dir = Path(dir)
        self.host, self.port, self.plain_port = host, port, plain_port
        self.username, self.password = username, password
        self.cert_dir = Path(cert_dir) if cert_dir else self.dir / "certs"
        self.quota = quota
        self.unknown_phones = set(unknown_phones)
        self.no_audio_phones = set(no_audio_phones)   # v2: "handset disabled", 200 without audio
        self.accept_wav = accept_wav
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._expired_calls: set[str] = set()
        self._requests = 0
        self.stats: dict[str, int] = {}
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: list[dict[str, Any]] = self._load_index()
        self.url = ""
        self.plain_url = ""
        self.ca_path: Path | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> tuple[str, Path]:
        ca, cert, key = ensure_certificates(self.cert_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        srv = _Server((self.host, self.port), self, ctx)
        self._serve(srv)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"https://{host}:{srv.server_address[1]}"
        self.ca_path = ca
        if self.plain_port is not None:
            plain = _Server((self.host, self.plain_port), self, None)
            self._serve(plain)
            self.plain_url = f"http://{host}:{plain.server_address[1]}"
        return self.url, ca

    def _serve(self, srv: _Server) -> None:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             name="calln-receiver", daemon=True)
        t.start()
        self._servers.append(srv)
        self._threads.append(t)

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "ReceiverServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control (tests, demo)
    def set_quota(self, quota: int | None) -> None:
        with self._lock:
            self.quota = quota

    def set_credentials(self, username: str, password: str) -> None:
        with self._lock:
            self.username, self.password = username, password

    def stored_calls(self) -> list[StoredCall]:
        with self._lock:
            index = list(self._index)
        out = []
        for item in index:
            n = item["n"]
            meta = json.loads((self.dir / f"{n}.json").read_bytes())
            audio = (self.dir / item["file"]).read_bytes()
            out.append(StoredCall(n, meta, audio, item["content_type"], item["tempcallid"]))
        return out

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    # ------------------------------------------------------------------ request logic
    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, pw = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        with self._lock:
            return (user, pw) == (self.username, self.password)

    def _fault_before(self) -> str | None:
        f = self.faults
        with self._lock:
            self._requests += 1
            if self._requests <= f.fail_first:
                self._count("fail_first")
                return "fail"
            if f.fail_rate and self._rng.random() < f.fail_rate:
                self._count("fail")
                return "fail"
            if f.drop_rate and self._rng.random() < f.drop_rate:
                # Half the drops happen before processing, half after (the lost response).
                if self._rng.random() < 0.5:
                    self._count("drop_before")
                    return "drop"
                self._count("drop_after")
                return "drop_after"
        return None

    def _scripted_fault(self, step: str | None) -> str | None:
        """The scripted fault this request gets, if any (each rule is used ``times`` times)."""
        if step is None:
            return None
        with self._lock:
            for rule in self.faults.script:
                if rule.times > 0 and rule.step == step:
                    rule.times -= 1
                    self._count(f"fault.{step}.{rule.action}")
                    return rule.action
        return None

    def _forget(self, path: str) -> None:
        """Expire a temp id now (the scripted 404_expired)."""
        tempcallid = path.rpartition("/")[2]
        with self._lock:
            if self._pending.pop(tempcallid, None) is not None:
                self._count("expired")

    def _dispatch(self, method: str, path: str, headers: Any, body: bytes, *,
                  drop_after: bool = False) -> tuple[int, Any, bool, dict[str, str]]:
        """Returns (code, answer, drop_the_answer, extra headers)."""
        extra: dict[str, str] = {}
        if method == "POST" and path in ("/api/call", "/api/v2/call"):
            v2 = path == "/api/v2/call"
            code, answer = self._create_v2(headers, body) if v2 else self._create(headers, body)
            if v2 and code == 200 and isinstance(answer, dict) and "tempcallid" in answer:
                # v2: 206 and the id in a header while audio must follow.
                code, extra = 206, {"Temporary-Call-ID": answer["tempcallid"]}
        elif method == "PUT" and path.startswith(("/api/callaudio/", "/api/v2/callaudio/")):
            v2 = path.startswith("/api/v2/")
            code, answer, last = self._audio(path.rpartition("/")[2], headers, body)
            if v2 and code == 200 and answer.get("status") != "complete":
                code = 206                   # v2: more chunks needed
            with self._lock:
                if last and self.faults.drop_last_chunk_response > 0:
                    self.faults.drop_last_chunk_response -= 1
                    self._count("drop_last_chunk_response")
                    drop_after = True
        else:
            code, answer = 404, "Not found"
        return code, answer, drop_after, extra

    def _create(self, headers: Any, body: bytes) -> tuple[int, Any]:
        meta = _json_object(headers, body)
        if meta is None or not all(isinstance(v, str) for v in meta.values()):
            return 400, "JSON body not provided"
        return self._open_call(meta, meta.get("startdatetimeutc"),
                               (meta.get("callerphone"), meta.get("destinationphone")))

    def _create_v2(self, headers: Any, body: bytes) -> tuple[int, Any]:
        meta = _json_object(headers, body)
        if meta is None:
            return 400, "JSON body not provided"
        if "connecteddatetimeutc" not in meta and "connectdatetimeutc" in meta:
            # The vendor's own example spells it so; the schema's name is what we store.
            meta["connecteddatetimeutc"] = meta.pop("connectdatetimeutc")
        why = _v2_problem(meta)
        if why:
            return 400, why
        phones = (meta["caller"]["phonenumber"], meta["destination"]["phonenumber"])
        code, answer = self._open_call(meta, meta.get("startdatetimeutc"), phones)
        if code == 200 and (set(phones) & self.no_audio_phones):
            # "Handset disabled": the call is complete without audio.
            with self._lock:
                self._store(answer["tempcallid"], self._pending[answer["tempcallid"]])
            return 200, {"status": "complete"}
        return code, answer

    def _open_call(self, meta: dict[str, Any], start: Any, phones: tuple[Any, Any]) -> tuple[int, Any]:
        """Step 1 of either version, once the body is valid: a new temp id (or 405 / 403)."""
        try:
            dt.datetime.strptime(start if isinstance(start, str) else "", "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return 400, "invalid startdatetimeutc"
        for phone in phones:
            if phone in self.unknown_phones:
                return 405, f"reseller account has no clients with that phone number {phone}"
        meta_hash = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        with self._lock:
            if self.quota is not None and len(self._index) >= self.quota:
                self._count("quota")
                return 403, f"account has reached monthly deposit quota of {self.quota}"
            tempcallid = uuid.uuid4().hex
            self._pending[tempcallid] = _Pending(meta=meta, meta_hash=meta_hash, created_at=time.time())
            self._count("created")
        return 200, {"tempcallid": tempcallid}

    def _audio(self, tempcallid: str, headers: Any, body: bytes) -> tuple[int, Any, bool]:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        allowed = ("audio/mpeg", "audio/wav") if self.accept_wav else ("audio/mpeg",)
        if ctype not in allowed:
            return 400, "Content-Type must be audio/mpeg" if not self.accept_wav else \
                "Content-Type missing or not audio/mpeg / audio/wav", False
        m = _RANGE_RE.match((headers.get("Content-Range") or "").strip())
        if not m:
            return 400, "Content-Range missing or malformed", False
        n = int(m.group(1))
        total = None if m.group(2) == "*" else int(m.group(2))
        if n < 1:
            return 400, "chunk number < 1", False
        if total is not None and n > total:
            return 400, "chunk number > totalChunks", False
        encoding = (headers.get("Content-Encoding") or "").strip().lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error):
                return 400, "Content-Encoding gzip: body is not gzip", False
        elif encoding not in ("", "identity"):
            return 400, f"Content-Encoding {encoding} not supported", False
        with self._lock:
            p = self._pending.get(tempcallid)
            if p is None:
                self._count("not_found")
                return 404, "Temporary callid not found", False
            if p.total is not None and total is not None and total != p.total:
                return 400, "totalChunks changed", False
            if p.content_type is not None and ctype != p.content_type:
                return 400, "Content-Type changed", False
            if n in p.chunks:
                if p.chunks[n] != body:
                    return 400, f"chunk {n} re-sent with different bytes", False
                self._count("chunk_repeat")
                return 200, {"status": "received"}, False
            p.chunks[n] = body
            p.content_type = ctype
            if total is not None:
                p.total = total
            p.puts += 1
            ex = self.faults.expire_after_chunks
            if p.total is not None and len(p.chunks) == p.total and set(p.chunks) == set(range(1, p.total + 1)):
                self._store(tempcallid, p)
                return 200, {"status": "complete"}, True
            if ex and p.puts >= ex and p.meta_hash not in self._expired_calls:
                self._expired_calls.add(p.meta_hash)
                del self._pending[tempcallid]
                self._count("expired")
            return 200, {"status": "received"}, False

    def _store(self, tempcallid: str, p: _Pending) -> None:
        """Assemble and store a completed call; the temp id is consumed. Caller holds the lock."""
        del self._pending[tempcallid]
        n = len(self._index) + 1
        ext = _EXT.get(p.content_type or "", "bin")
        audio = b"".join(p.chunks[i] for i in range(1, (p.total or 0) + 1))
        _write_atomic(self.dir / f"{n}.{ext}", audio)      # empty for a v2 call without audio
        _write_atomic(self.dir / f"{n}.json", json.dumps(p.meta, ensure_ascii=False, indent=1).encode())
        caller, destination = phones_of(p.meta)
        self._index.append({"n": n, "tempcallid": tempcallid, "file": f"{n}.{ext}",
                            "content_type": p.content_type, "bytes": len(audio),
                            "callerphone": caller, "destinationphone": destination,
                            "startdatetimeutc": p.meta.get("startdatetimeutc", ""),
                            "stored_at": time.time()})
        _write_atomic(self.dir / "index.json", json.dumps(self._index, indent=1).encode())
        self._count("stored")

    def _load_index(self) -> list[dict[str, Any]]:
        try:
            return json.loads((self.dir / "index.json").read_bytes())
        except (OSError, ValueError):
            return []


def phones_of(meta: dict[str, Any]) -> tuple[str, str]:
    """(caller, destination) numbers of a stored call's metadata, v1 or v2."""
    if isinstance(meta.get("caller"), dict):
        return meta["caller"].get("phonenumber", ""), meta["destination"].get("phonenumber", "")
    return meta.get("callerphone", ""), meta.get("destinationphone", "")


def _json_object(headers: Any, body: bytes) -> dict[str, Any] | None:
    if not (headers.get("Content-Type") or "").lower().startswith("application/json"):
        return None
    try:
        meta = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


_V2_TEXT = ("startdatetimeutc", "callid", "clientoperatingsystem", "clientservername", "location", "notes")
_V2_PARTY = ("phonenumber", "name", "macaddress", "mediaendpoint")
_V2_KEYS = frozenset("0123456789*#ABCD")


def _v2_problem(meta: dict[str, Any]) -> str:
    """What is wrong with a v2 call body, or "" (the schema of API.md, version 2)."""
    for name in _V2_TEXT:
        if not isinstance(meta.get(name, ""), str):
            return f"{name} must be a string"
    for name in ("connecteddatetimeutc", "telephonyplatform"):
        if meta.get(name) is not None and not isinstance(meta[name], str):
            return f"{name} must be a string or null"
    if meta.get("connecteddatetimeutc"):
        try:
            dt.datetime.strptime(meta["connecteddatetimeutc"], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return "invalid connecteddatetimeutc"
    for side in ("caller", "destination"):
        party = meta.get(side)
        if not isinstance(party, dict):
            return f"{side} must be an object"
        for name in _V2_PARTY:
            if not isinstance(party.get(name, ""), str):
                return f"{side}.{name} must be a string"
        presses = party.get("keypresses")
        if presses is None:
            continue
        if not isinstance(presses, list):
            return f"{side}.keypresses must be a list or null"
        for press in presses:
            if (not isinstance(press, dict) or not isinstance(press.get("timems"), int)
                    or isinstance(press.get("timems"), bool) or press["timems"] < 0
                    or not (press.get("key") is None or press.get("key") in _V2_KEYS)):
                return f"{side}.keypresses: bad entry {press!r}"
    return ""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


__all__ = ["ReceiverServer", "StoredCall", "phones_of", "Faults", "FaultRule", "FAULT_STEPS", "FAULT_ACTIONS", "ensure_certificates", "API_FIELDS"]
