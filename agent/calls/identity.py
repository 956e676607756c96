"""Who called whom: picking names and numbers from From/To/PAI/RPID/Request-URI.

Pure functions over parsed name-addrs. The raw header values stay in the call
record; this only decides which one the API fields carry.
"""

from __future__ import annotations

from typing import Any

ANONYMOUS_USERS = {"anonymous", "restricted", "unavailable", "unknown", "private", ""}


def is_anonymous(addr: Any) -> bool:
    """True when a name-addr hides the party (RFC 3323 anonymous URI or an empty user)."""
    if addr is None:
        return True
    uri = addr.uri
    user = (uri.user or "").lower()
    host = (uri.host or "").lower()
    return user in ANONYMOUS_USERS or host == "anonymous.invalid"


def display_of(addr: Any) -> str:
    return (addr.display or "").strip() if addr is not None else ""


def user_of(addr: Any) -> str:
    return (addr.uri.user or "") if addr is not None else ""


def _pick_pai(pai: list[Any]) -> Any:
    """Of several P-Asserted-Identity values prefer one whose user looks like a number."""
    for addr in pai:
        if addr.uri.scheme == "tel" or _looks_numeric(addr.uri.user or ""):
            return addr
    return pai[0] if pai else None


def _looks_numeric(user: str) -> bool:
    stripped = user.lstrip("+").replace("-", "").replace(".", "").replace(" ", "")
    return bool(stripped) and all(ch.isdigit() or ch in "*#" for ch in stripped)


def caller_identity(call: Any, precedence: tuple[str, ...]) -> tuple[str, str]:
    """(name, number) of the caller, by the configured precedence of sources.

    ``from`` is skipped when it is anonymous, so with the default precedence
    ("from", "pai", "rpid") an anonymous From falls back to the asserted identity.
    """
    sources = {"from": call.from_addr, "pai": _pick_pai(call.pai), "rpid": call.rpid}
    chosen = None
    for name in precedence:
        addr = sources.get(name)
        if addr is not None and not is_anonymous(addr):
            chosen = addr
            break
    if chosen is None:
        chosen = call.from_addr
    number = user_of(chosen)
    display = display_of(chosen)
    if chosen is not call.from_addr and not display:
        display = display_of(call.from_addr) if not is_anonymous(call.from_addr) else ""
    return display, number


def callee_identity(call: Any, precedence: tuple[str, ...], request_uri_user: str) -> tuple[str, str]:
    """(name, number) of the dialled party: To, then the Request-URI, by precedence."""
    for name in precedence:
        if name == "to" and call.to_addr is not None and user_of(call.to_addr):
            return display_of(call.to_addr), user_of(call.to_addr)
        if name == "request_uri" and request_uri_user:
            return display_of(call.to_addr), request_uri_user
    return display_of(call.to_addr), user_of(call.to_addr)
