"""The SIP message parser (RFC 3261 section 7 and 20): bytes in, ``SipMessage`` out.

Owns: start-line and header parsing (compact forms, folding, CRLF or bare
LF), the Content-Length rules for datagrams, the mandatory-header check,
``looks_like_sip`` (the cheap "is this SIP at all" test used on every port)
and body extraction (plain or multipart SDP). Does not own: TCP framing
(``framing.py``), SDP (``sdp.py``), dialogs and calls (the tracker).
Malformed input raises ``SipParseError``; the caller counts and skips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.errors import SipParseError
from agent.sip.uri import (
    NameAddr,
    parse_name_addr,
    parse_params,
    split_header_values,
)

__all__ = [
    "SipMessage",
    "parse_message",
    "looks_like_sip",
    "canonical_header_name",
    "DEFAULT_MAX_MESSAGE_BYTES",
]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024

# RFC 3261 7.3.3 plus the later RFCs' compact forms (IANA "SIP Parameters").
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "v": "via",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "u": "allow-events",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

# Headers whose grammar is a comma list (#element). Others (Date, WWW-Authenticate,
# User-Agent, Subject, X-anything) contain commas that are not separators.
LIST_HEADERS: frozenset[str] = frozenset(
    {
        "via", "contact", "route", "record-route", "path", "service-route",
        "allow", "supported", "require", "proxy-require", "unsupported",
        "accept", "accept-encoding", "accept-language", "alert-info",
        "call-info", "error-info", "content-encoding", "content-language",
        "in-reply-to", "warning", "allow-events", "accept-contact",
        "reject-contact", "request-disposition", "p-asserted-identity",
        "p-preferred-identity", "p-associated-uri", "p-called-party-id",
        "diversion", "history-info", "remote-party-id", "reason",
        "security-client", "security-server", "security-verify",
        "accept-resource-priority", "resource-priority", "recv-info",
    }
)

MANDATORY_HEADERS = ("call-id", "from", "to", "cseq")

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_TOKEN_BYTES = frozenset("".join(sorted(_TOKEN_CHARS)).encode())
# Control bytes other than HT/LF/CR never appear in a SIP head; their presence is binary junk.
_BINARY_JUNK = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_NULL_SESSION_ID = "0" * 32


# Requests that can open a dialog the agent follows (an INVITE, or in-dialog traffic of a call
# whose INVITE was not captured); of responses, only those to an INVITE can. The call tracker
# opens calls by this set, and ``dialogless_call_id`` skips the full parse of everything else.
DIALOG_OPENERS = frozenset({"INVITE", "BYE", "UPDATE", "INFO", "PRACK"})
# What a scan floods with, never part of a call's dialog setup: only these are peeked at.
_PEEKED = frozenset({b"OPTIONS", b"REGISTER", b"SUBSCRIBE", b"NOTIFY", b"PUBLISH", b"MESSAGE"})
_PEEK_START = re.compile(rb"(?:([A-Z]{2,16}) [!-~]+ SIP/2\.0\r?\n|SIP/2\.0 [1-6][0-9][0-9] )")
# A head line the parser would reject (no colon, not a continuation), or a header it requires.
_PEEK_BAD_LINE = re.compile(rb"\n(?![ \t\r\n])(?![-.!%*_+`'~A-Za-z0-9]+[ \t]*:)")
_PEEK_FROM = re.compile(rb"^(?:from|f)[ \t]*:", re.I | re.M)
_PEEK_TO = re.compile(rb"^(?:to|t)[ \t]*:", re.I | re.M)
_PEEK_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([!-~]+)[ \t]*\r?$", re.I | re.M)
_PEEK_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*[0-9]+[ \t]+([A-Za-z]+)[ \t]*\r?$", re.I | re.M)


def dialogless_call_id(data: bytes) -> str | None:
    """The Call-ID of a message a scan floods with (OPTIONS, REGISTER, SUBSCRIBE, NOTIFY,
    PUBLISH, MESSAGE and their answers), which can never open a dialog, read from its start
    line, CSeq and Call-ID without a full parse: such a flood then costs almost nothing. None
    for any other message, and when the peek is unsure (a folded or repeated Call-ID,
    non-ASCII, a line or a header the parser would reject): the full parse decides those, and
    counts what is malformed."""
    start = _PEEK_START.match(data)
    if start is None:
        return None
    end = _HEAD_END.search(data)
    head_end = end.start() if end else len(data)
    method = start.group(1)
    if method is None:
        cseq = _PEEK_CSEQ.search(data, 0, head_end)
        method = cseq.group(1).upper() if cseq is not None else None
    if method not in _PEEKED:
        return None
    head = data[:head_end]
    if (b"\x00" in head or _PEEK_BAD_LINE.search(head) or _PEEK_FROM.search(head) is None
            or _PEEK_TO.search(head) is None or _PEEK_CSEQ.search(head) is None):
        return None
    found = _PEEK_CALL_ID.search(data, start.end(), head_end)
    if found is None:
        return None
    after = found.end() + 1
    if after < head_end and data[after:after + 1] in (b" ", b"\t"):
        return None                                    # folded onto the next line
    if _PEEK_CALL_ID.search(data, after, head_end) is not None:
        return None                                    # two Call-IDs: let the parser judge
    return found.group(1).decode("ascii")


# Header names as written on the wire (``Call-ID``, ``i``, ``CSeq``...) -> canonical form, for
# names already checked to be tokens: a message costs one dict lookup per header, not a set
# and two string copies. Bounded: names past the limit (a fuzzer's) are worked out each time.
_NAMES_MAX = 1024
_wire_names: dict[str, str] = {}
_code_names: dict[str, str] = {}        # the same for names the code asks for ("call-id", "f")


def canonical_header_name(name: str) -> str:
    """Lowercase long form of a header name (``I`` -> ``call-id``)."""
    known = _code_names.get(name)
    if known is not None:
        return known
    lowered = name.strip().lower()
    canonical = COMPACT_FORMS.get(lowered, lowered)
    if len(_code_names) < _NAMES_MAX:
        _code_names[name] = canonical
    return canonical


def _wire_name(name: str) -> str | None:
    """The canonical form of a header name as it appears before the colon (spaces around it
    allowed), or None when it is not a token."""
    known = _wire_names.get(name)
    if known is not None:
        return known
    stripped = name.strip()
    if not stripped or not set(stripped) <= _TOKEN_CHARS:
        return None
    lowered = stripped.lower()
    canonical = COMPACT_FORMS.get(lowered, lowered)
    if len(_wire_names) < _NAMES_MAX:
        _wire_names[name] = canonical
    return canonical


def looks_like_sip(payload: bytes) -> bool:
    """Cheap test: does ``payload`` start with a SIP request or status line?

    Built to reject RTP in a couple of byte comparisons: RTP's first byte is
    0x80-0xBF, never an ASCII capital letter, so most packets fail on byte 0.
    """
    if not payload:
        return False
    first = payload[0]
    if first == 13 or first == 10:  # leading CRLF keep-alive(s) before a message
        payload = payload[:64].lstrip(b"\r\n") + payload[64:]
        if not payload:
            return False
        first = payload[0]
    if not 65 <= first <= 90 and not 97 <= first <= 122:  # not [A-Za-z]
        return False
    if payload[:8].upper() == b"SIP/2.0 ":
        return payload[8:9].isdigit()
    eol = payload.find(b"\n", 0, 2048)
    line = payload[:eol] if eol >= 0 else payload[:2048]
    line = line.rstrip(b"\r ")
    if not line[-8:].upper() == b" SIP/2.0":
        return False
    sp = line.find(b" ")
    if sp <= 0:
        return False
    method = line[:sp]
    return method.isalpha() or all(c in _TOKEN_BYTES for c in method)



@dataclass(slots=True)
class SipMessage:
    """One parsed SIP request or response.

    ``headers`` keeps every header in wire order with canonical lowercase
    long names; values are stripped and unfolded. Parsed views (From/To,
    CSeq) are cached in ``_cache``.
    """

    is_request: bool
    method: str
    request_uri: str | None
    status_code: int | None
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # -- generic access -------------------------------------------------------
    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case, compact or long form)."""
        first = self._cache.get("first")
        if first is None:       # a hand-built message (parse_message builds it)
            # First occurrence of each name wins: the reversed list lets it be assigned last.
            first = self._cache["first"] = dict(reversed(self.headers))
        return first.get(canonical_header_name(name))

    def header_values(self, name: str) -> list[str]:
        """Every value of ``name``, across occurrences; comma-split for list headers."""
        key = canonical_header_name(name)
        out: list[str] = []
        split = key in LIST_HEADERS
        for hname, value in self.headers:
            if hname == key:
                if split:
                    out.extend(split_header_values(value))
                else:
                    out.append(value)
        return out

    # -- mandatory headers (validated and cached by parse_message) -----------------
    # The fallbacks let a hand-built SipMessage (tests, synthetic events) work too.
    @property
    def call_id(self) -> str:
        cached = self._cache.get("call_id")
        if cached is None:
            cached = self._cache["call_id"] = self.header("call-id") or ""
        return cached

    @property
    def from_addr(self) -> NameAddr:
        cached = self._cache.get("from")
        if cached is None:
            cached = self._cache["from"] = parse_name_addr(self.header("from") or "")
        return cached

    @property
    def to_addr(self) -> NameAddr:
        cached = self._cache.get("to")
        if cached is None:
            cached = self._cache["to"] = parse_name_addr(self.header("to") or "")
        return cached

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def cseq_num(self) -> int:
        return self._cseq()[0]

    @property
    def cseq_method(self) -> str:
        return self._cseq()[1]

    def _cseq(self) -> tuple[int, str]:
        cached = self._cache.get("cseq")
        if cached is None:
            cached = self._cache["cseq"] = _parse_cseq(self.header("cseq") or "")
        return cached

    # -- optional headers -------------------------------------------------------
    @property
    def content_type(self) -> str | None:
        """Lowercase media type without parameters (``application/sdp``), or None."""
        value = self.header("content-type")
        if value is None:
            return None
        return value.partition(";")[0].strip().lower() or None

    @property
    def user_agent(self) -> str | None:
        return self.header("user-agent") or self.header("server")

    def _name_addrs(self, name: str) -> list[NameAddr]:
        key = "na:" + name
        cached = self._cache.get(key)
        if cached is None:
            cached = []
            for value in self.header_values(name):
                try:
                    cached.append(parse_name_addr(value))
                except SipParseError:
                    continue  # one bad identity must not hide the others
            self._cache[key] = cached
        return cached

    @property
    def pai(self) -> list[NameAddr]:
        """P-Asserted-Identity values (often one sip: and one tel:)."""
        return self._name_addrs("p-asserted-identity")

    @property
    def rpid(self) -> NameAddr | None:
        values = self._name_addrs("remote-party-id")
        return values[0] if values else None

    @property
    def diversion(self) -> list[NameAddr]:
        return self._name_addrs("diversion")

    @property
    def session_id(self) -> str | None:
        """RFC 7989 Session-ID (lowercased), or None when absent or the null UUID."""
        value = self.header("session-id")
        if value is None:
            return None
        sid = value.partition(";")[0].strip().lower()
        if not sid or sid == _NULL_SESSION_ID:
            return None
        return sid

    def _top_via_params(self) -> tuple[str, dict[str, str]] | None:
        vias = self.header_values("via")
        if not vias:
            return None
        sent, _, params = vias[0].partition(";")
        return sent.strip(), parse_params(params)

    @property
    def via_branch(self) -> str | None:
        top = self._top_via_params()
        return top[1].get("branch") if top else None

    @property
    def via_transport(self) -> str | None:
        """Transport of the top Via (``UDP``, ``TCP``, ``TLS``, ``WS``, ``SCTP``...)."""
        top = self._top_via_params()
        if not top:
            return None
        proto = top[0].split(None, 1)[0] if top[0] else ""
        parts = proto.split("/")
        return parts[2].upper() if len(parts) == 3 else None

    # -- body -------------------------------------------------------------------
    def sdp_body(self) -> bytes | None:
        """The SDP: the whole body for application/sdp, or the SDP part of a multipart body."""
        if not self.body:
            return None
        ctype = self.header("content-type")
        if ctype is None:
            return None
        return _find_sdp(ctype, self.body, depth=0)


def _find_sdp(ctype_value: str, body: bytes, depth: int) -> bytes | None:
    media_type, _, param_text = ctype_value.partition(";")
    media_type = media_type.strip().lower()
    if media_type == "application/sdp":
        return body
    if not media_type.startswith("multipart/") or depth > 3:
        return None
    boundary = parse_params(param_text).get("boundary")
    if not boundary:
        return None
    for part_headers, part_body in _multipart_parts(body, boundary.encode("utf-8", "replace")):
        part_ctype = part_headers.get("content-type", "text/plain")
        found = _find_sdp(part_ctype, part_body, depth + 1)
        if found is not None:
            return found
    return None


def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a MIME multipart body (RFC 2046 5.1) into (headers, body) parts."""
    delim = b"--" + boundary
    parts: list[tuple[dict[str, str], bytes]] = []
    # Find delimiter lines: at the body start or right after a line break.
    positions: list[int] = []
    pos = 0
    while True:
        idx = body.find(delim, pos)
        if idx < 0:
            break
        if idx == 0 or body[idx - 1 : idx] == b"\n":
            positions.append(idx)
        pos = idx + len(delim)
    for i, start in enumerate(positions):
        after = start + len(delim)
        if body[after : after + 2] == b"--":
            break  # close delimiter
        line_end = body.find(b"\n", after)
        if line_end < 0:
            break
        content_start = line_end + 1
        if i + 1 < len(positions):
            end = positions[i + 1]
            # The CRLF before the next delimiter belongs to the delimiter.
            if body[end - 2 : end] == b"\r\n":
                end -= 2
            elif body[end - 1 : end] == b"\n":
                end -= 1
        else:
            end = len(body)
        content = body[content_start:max(end, content_start)]
        match = _HEAD_END.search(content)
        if content.startswith(b"\r\n") or content.startswith(b"\n"):
            head, part_body = b"", content[2 if content.startswith(b"\r\n") else 1 :]
        elif match:
            head, part_body = content[: match.start()], content[match.end() :]
        else:
            head, part_body = content, b""
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers.setdefault(name.strip().lower(), value.strip())
        parts.append((headers, part_body))
    return parts


def _decode_head(head: bytes) -> str:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        # Older phones send Latin-1 display names; never fail on that.
        return head.decode("latin-1")


def _parse_uint(text: str, what: str, max_digits: int = 10) -> int:
    text = text.strip()
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        raise SipParseError(f"bad {what}: {text[:40]!r}")
    return int(text)


def _parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2:
        raise SipParseError("bad CSeq")
    number = _parse_uint(parts[0], "CSeq number")
    if number >= 2**32:
        raise SipParseError("CSeq number out of range")
    if not set(parts[1]) <= _TOKEN_CHARS:
        raise SipParseError("bad CSeq method")
    return number, parts[1]


def _parse_start_line(line: str) -> tuple[bool, str, str | None, int | None, str]:
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise SipParseError(f"bad status line {line[:80]!r}")
        code_text = parts[1]
        if len(code_text) != 3 or not (code_text.isascii() and code_text.isdigit()):
            raise SipParseError(f"bad status code {line[:80]!r}")
        code = int(code_text)
        if not 100 <= code <= 699:
            raise SipParseError(f"status code out of range {code}")
        reason = parts[2].strip() if len(parts) == 3 else ""
        return False, "", None, code, reason
    parts = line.split()
    if len(parts) != 3 or parts[2].upper() != "SIP/2.0":
        raise SipParseError(f"bad request line {line[:80]!r}")
    method, uri = parts[0], parts[1]
    if not set(method) <= _TOKEN_CHARS:
        raise SipParseError(f"bad method {method[:40]!r}")
    if ":" not in uri:
        raise SipParseError(f"bad request URI {uri[:80]!r}")
    return True, method, uri, None, ""


def parse_message(
    data: bytes,
    *,
    stream: bool = False,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> SipMessage:
    """Parse one SIP message.

    ``stream=False`` (a UDP/SCTP datagram): Content-Length is optional; when
    absent the body is the rest of the datagram, a smaller value truncates it
    and a larger one rejects the message. ``stream=True``: the framer already
    cut the message, so the same rules apply to its bytes.
    """
    if len(data) > max_bytes:
        raise SipParseError(f"message larger than {max_bytes} bytes")
    data = bytes(data)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message (keep-alive)")
    match = _HEAD_END.search(data)
    if match:
        head, rest = data[: match.start()], data[match.end() :]
    else:
        # No blank line: tolerated when the message simply has no body.
        head, rest = data.rstrip(b"\r\n"), b""
    # Binary junk: NUL anywhere in the head, or any control byte in the start line.
    # Other control bytes inside header values are tolerated: real devices emit them
    # (an Alcatel OmniPCX writes raw bytes into Via branches) and tshark accepts them.
    first_eol = head.find(b"\n")
    if b"\x00" in head or _BINARY_JUNK.search(head, 0, first_eol if first_eol >= 0 else len(head)):
        raise SipParseError("binary bytes in the message head")
    lines = _decode_head(head).split("\n")
    is_request, method, request_uri, status_code, reason = _parse_start_line(
        lines[0].rstrip("\r")
    )

    headers: list[tuple[str, str]] = []
    append = headers.append
    known_name = _wire_names.get
    for raw_line in lines[1:]:
        line = raw_line.rstrip("\r")
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise SipParseError("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + line.strip()).strip())
            continue
        name, colon, value = line.partition(":")
        canonical = (known_name(name) or _wire_name(name)) if colon else None
        if canonical is None:
            raise SipParseError(f"bad header line {line[:80]!r}")
        append((canonical, value.strip()))

    msg = SipMessage(is_request, method, request_uri, status_code, reason, headers, b"")
    cache = msg._cache
    first = cache["first"] = dict(reversed(headers))     # what header() looks values up in
    for mandatory in MANDATORY_HEADERS:
        if mandatory not in first:
            raise SipParseError(f"missing mandatory header {mandatory}")
    call_id = first["call-id"]
    if not call_id:
        raise SipParseError("empty Call-ID")
    cache["call_id"] = call_id
    cache["from"] = parse_name_addr(first["from"])
    cache["to"] = parse_name_addr(first["to"])
    cache["cseq"] = _parse_cseq(first["cseq"])
    if not is_request:
        msg.method = cache["cseq"][1]

    lengths = {
        _parse_uint(v, "Content-Length") for n, v in headers if n == "content-length"
    }
    if len(lengths) > 1:
        raise SipParseError("conflicting Content-Length headers")
    if lengths:
        length = lengths.pop()
        if length > len(rest):
            raise SipParseError(
                f"Content-Length {length} exceeds the {len(rest)} body bytes present"
            )
        body = rest[:length]
    elif not stream and rest.strip(b"\r\n"):
        body = rest  # datagram without Content-Length: the rest of the datagram
    else:
        body = b""  # streams: absent means 0 (RFC 3261 18.3); or only CRLFs left
    msg.body = body
    return msg

