"""SIP/SIPS/tel URI and name-addr parsing (RFC 3261 19.1, 20.10, 25.1; RFC 3966).

Owns: ``SipUri``, ``NameAddr``, ``parse_uri``, ``parse_name_addr``,
``split_header_values`` and the small quoting helpers the message parser
shares. Pure text in, frozen records out; raises ``SipParseError`` when a
value is hopeless. Does not own header-level semantics (which header is a
list, tags of dialogs): that is ``message.py`` and the call tracker.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import unquote

from agent.errors import SipParseError

__all__ = [
    "SipUri",
    "NameAddr",
    "parse_uri",
    "parse_name_addr",
    "parse_params",
    "split_header_values",
    "split_outside_quotes",
    "unquote_string",
]

# A URI this long is junk or an attack, not something a phone wrote.
_MAX_URI_CHARS = 4096
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")


@dataclass(slots=True, frozen=True)
class SipUri:
    """One URI. ``host`` has no IPv6 brackets; ``user`` is %-unescaped.

    For ``tel:`` the number (without parameters) is in ``user`` and ``host``
    is ``""``. For schemes we do not understand, ``user`` is None, ``host``
    is ``""`` and the text after the scheme is in ``raw`` only.
    """

    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict, hash=False, compare=True)
    raw: str = ""


@dataclass(slots=True, frozen=True)
class NameAddr:
    """A From/To/Contact/PAI-style value: optional display name, URI, header params."""

    display: str | None
    uri: SipUri
    params: dict[str, str] = field(default_factory=dict, hash=False, compare=True)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def split_outside_quotes(text: str, sep: str, *, angle: bool = False) -> list[str]:
    """Split ``text`` on ``sep`` where it is not inside a quoted string (or <> if ``angle``).

    Backslash escapes inside quotes are honoured so ``"a\\"b,c"`` stays whole.
    """
    if '"' not in text and not (angle and "<" in text):
        return text.split(sep)             # nothing to step over: the common case, in C
    parts: list[str] = []
    start = 0
    in_quote = False
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif angle and ch == "<":
            depth += 1
        elif angle and ch == ">":
            if depth:
                depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def split_header_values(value: str) -> list[str]:
    """Split a multi-value header (``a, <b>, "c, d" <e>``) into stripped, non-empty values."""
    return [p.strip() for p in split_outside_quotes(value, ",", angle=True) if p.strip()]


def unquote_string(text: str) -> str:
    """Resolve a quoted-string body (without the outer quotes): ``\\x`` -> ``x``."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_params(text: str) -> dict[str, str]:
    """Parse ``;a=1;b;c="x y"`` (leading ';' optional) into a dict with lowercase keys.

    A flag parameter without '=' maps to ``""``; quoted values are unquoted;
    the first occurrence of a repeated key wins.
    """
    params: dict[str, str] = {}
    if not text:
        return params
    for piece in split_outside_quotes(text, ";"):
        piece = piece.strip()
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        value = value.strip()
        if eq and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = unquote_string(value[1:-1])
        params.setdefault(name, value)
    return params


def _parse_port(text: str, raw: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise SipParseError(f"bad port in URI {raw!r}")
    port = int(text)
    if port > 65535:
        raise SipParseError(f"port out of range in URI {raw!r}")
    return port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _split_hostport(hostport: str, raw: str) -> tuple[str, int | None]:
    hostport = hostport.strip()
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {raw!r}")
        host = hostport[1:end]
        rest = hostport[end + 1 :]
        if not host:
            raise SipParseError(f"empty IPv6 host in {raw!r}")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError(f"junk after IPv6 host in {raw!r}")
        return host, _parse_port(rest[1:], raw)
    host, colon, port = hostport.rpartition(":")
    if not colon:
        host, port = hostport, ""
    elif ":" in host:
        # Several colons without brackets: a bare IPv6 address (seen in the wild), maybe
        # followed by ":port". A ninth group (or a "::" address plus a group) is the port.
        if _is_ipv6(hostport) or not _is_ipv6(host):
            return hostport, None
        return host, _parse_port(port, raw)
    if not host:
        raise SipParseError(f"empty host in URI {raw!r}")
    if any(c in host for c in ' \t<>"'):
        raise SipParseError(f"bad host in URI {raw!r}")
    return host, (_parse_port(port, raw) if colon else None)


def parse_uri(text: str) -> SipUri:
    """Parse a sip:, sips:, tel: (or any other scheme) URI."""
    raw = text.strip()
    if not raw:
        raise SipParseError("empty URI")
    if len(raw) > _MAX_URI_CHARS:
        raise SipParseError("URI too long")
    scheme, colon, rest = raw.partition(":")
    scheme = scheme.lower()
    if not colon or not scheme or not scheme[0].isalpha() or not set(scheme) <= _SCHEME_CHARS:
        raise SipParseError(f"URI without a scheme: {raw!r}")
    if scheme in ("sip", "sips"):
        rest = rest.partition("?")[0]  # URI headers are of no use to a recorder
        at = rest.rfind("@")
        user: str | None = None
        if at >= 0:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            # user may itself carry ';' user-params (RFC 3261 19.1.1); the password is dropped.
            user = unquote(userinfo.partition(":")[0], errors="replace")
        hostport, _, param_text = rest.partition(";")
        host, port = _split_hostport(hostport, raw)
        return SipUri(scheme, user, host, port, parse_params(param_text), raw)
    if scheme == "tel":
        number, _, param_text = rest.partition(";")
        number = unquote(number.strip(), errors="replace")
        if not number:
            raise SipParseError(f"empty tel URI {raw!r}")
        return SipUri(scheme, number, "", None, parse_params(param_text), raw)
    return SipUri(scheme, None, "", None, {}, raw)


def _parse_quoted(text: str, start: int) -> tuple[str, int]:
    """Return (unquoted string, index after the closing quote) for text[start] == '"'."""
    end = text.find('"', start + 1)
    if end > 0 and "\\" not in text[start + 1:end]:
        return text[start + 1:end], end + 1         # no escapes: the next quote closes it
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return unquote_string(text[start + 1 : i]), i + 1
        i += 1
    raise SipParseError("unterminated quoted display name")


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``["Display"] <uri>;params``, ``Display <uri>`` or bare ``uri;params``.

    In the bare addr-spec form every ';' parameter belongs to the header
    (RFC 3261 20.10), so ``sip:a@b;tag=1`` has tag ``1`` and a URI without params.
    """
    s = text.strip()
    if not s:
        raise SipParseError("empty name-addr")
    display: str | None = None
    if s[0] == '"':
        display, pos = _parse_quoted(s, 0)
        s = s[pos:].lstrip()
        if not s.startswith("<"):
            raise SipParseError(f"quoted display name without <uri>: {text!r}")
    lt = s.find("<")
    if lt >= 0:
        if display is None:
            name = s[:lt].strip()
            display = name or None
        gt = s.find(">", lt + 1)
        if gt < 0:
            raise SipParseError(f"unterminated <uri> in {text!r}")
        uri = parse_uri(s[lt + 1 : gt])
        return NameAddr(display, uri, parse_params(s[gt + 1 :]))
    uri_text, _, param_text = s.partition(";")
    if any(c in uri_text.strip() for c in " \t"):
        raise SipParseError(f"bad addr-spec {text!r}")
    return NameAddr(None, parse_uri(uri_text), parse_params(param_text))
