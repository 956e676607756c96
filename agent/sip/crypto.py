"""SDES ``a=crypto`` attributes (RFC 4568): the SRTP keys an SDP body carries.

Owns: ``parse_crypto`` (one attribute value -> ``CryptoAttribute``), the crypto-suite
table (key, salt and tag lengths; which suites libsrtp can decrypt) and ``Secret``, the
wrapper that keeps key bytes out of every ``repr``, ``str`` and JSON dump. Pure: no
libsrtp here (``media/srtp.py`` decrypts), no offer/answer (``calls/srtp_keys.py``).

Hostile input raises ``CryptoParseError`` (a ``ParseError``): the SDP parser counts the
line as skipped and goes on.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from agent.errors import SdpParseError

__all__ = ["Secret", "Suite", "SUITES", "KeyParam", "CryptoAttribute", "CryptoParseError", "parse_crypto",
           "KeyPeriod"]


class CryptoParseError(SdpParseError):
    """An ``a=crypto`` line that cannot be used as written."""


class Secret:
    """Key material. Its text forms are redacted, it refuses JSON (not a str/bytes), and it
    compares by value so that a repeated offer is recognised as the same key."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = bytes(value)

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __getstate__(self) -> bytes:         # pickled to the render worker (a pipe, not a file)
        return self.value

    def __setstate__(self, state: bytes) -> None:
        self.value = state


@dataclass(frozen=True, slots=True)
class Suite:
    key_bytes: int
    salt_bytes: int
    tag_bytes: int              # SRTP authentication tag (GCM: the AEAD tag)
    libsrtp_profile: str        # pylibsrtp.Policy attribute, "" when libsrtp cannot do it


# RFC 4568 section 6.2, RFC 6188 (AES-192/256 CM), RFC 7714 (AEAD GCM: 12-byte salt).
# pylibsrtp 1.0 offers the four profiles named here; AES-192/256-CM and F8 it does not.
SUITES: dict[str, Suite] = {
    "AES_CM_128_HMAC_SHA1_80": Suite(16, 14, 10, "SRTP_PROFILE_AES128_CM_SHA1_80"),
    "AES_CM_128_HMAC_SHA1_32": Suite(16, 14, 4, "SRTP_PROFILE_AES128_CM_SHA1_32"),
    "AEAD_AES_128_GCM": Suite(16, 12, 16, "SRTP_PROFILE_AEAD_AES_128_GCM"),
    "AEAD_AES_256_GCM": Suite(32, 12, 16, "SRTP_PROFILE_AEAD_AES_256_GCM"),
    "AES_192_CM_HMAC_SHA1_80": Suite(24, 14, 10, ""),
    "AES_192_CM_HMAC_SHA1_32": Suite(24, 14, 4, ""),
    "AES_256_CM_HMAC_SHA1_80": Suite(32, 14, 10, ""),
    "AES_256_CM_HMAC_SHA1_32": Suite(32, 14, 4, ""),
    "F8_128_HMAC_SHA1_80": Suite(16, 14, 10, ""),
}

# Session parameters (RFC 4568 6.3) that do not change how RTP is decrypted: SRTCP is not
# used by the recorder, FEC and the window-size hint do not affect decryption.
_HARMLESS_PARAMS = frozenset({"UNENCRYPTED_SRTCP", "FEC_ORDER", "FEC_KEY", "WSH"})
_MAX_KEYS = 16
_MAX_MKI_BYTES = 128
_MAX_LIFETIME_POWER = 64


@dataclass(frozen=True, slots=True)
class KeyParam:
    """One ``inline:`` key: master key || master salt, its lifetime and MKI."""
    key_salt: Secret
    lifetime_packets: int | None = None
    mki: int | None = None                  # MKI value (None: no MKI)


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    tag: int
    suite: str
    keys: tuple[KeyParam, ...]              # empty for a suite libsrtp cannot decrypt (not kept)
    mki_bytes: int = 0                      # MKI length on the wire (0: none)
    session_params: tuple[str, ...] = ()

    @property
    def problem(self) -> str:
        """Why these keys cannot decrypt the media ("" when they can)."""
        suite = SUITES.get(self.suite)
        if suite is None or not suite.libsrtp_profile:
            return f"unsupported suite {self.suite[:40]}"
        for param in self.session_params:
            name, _, value = param.partition("=")
            if name == "KDR" and value.strip() not in ("", "0"):
                return "key derivation rate (KDR) not supported"
            if name not in _HARMLESS_PARAMS and name != "KDR" and not name.startswith("-"):
                return f"session parameter {name[:40]} not supported"
        return ""

    @property
    def tag_bytes(self) -> int:
        return SUITES[self.suite].tag_bytes


@dataclass(frozen=True, slots=True)
class KeyPeriod:
    """What one side's media is protected with from packet time ``from_ts_ns`` on (the
    schedule ``calls/srtp_keys.py`` builds and ``media/srtp.py`` decrypts with)."""
    from_ts_ns: int
    crypto: CryptoAttribute | None = None    # the keys (their repr is redacted)
    plain: bool = False                      # plain RTP was negotiated (crypto None)


def _decode_key(text: str, suite: Suite | None) -> Secret:
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise CryptoParseError("key is not base64") from None
    if suite is not None and len(raw) != suite.key_bytes + suite.salt_bytes:
        raise CryptoParseError(f"key||salt is {len(raw)} bytes, the suite needs "
                               f"{suite.key_bytes + suite.salt_bytes}")
    if not raw:
        raise CryptoParseError("empty key")
    return Secret(raw)


def _lifetime(text: str) -> int:
    text = text.strip()
    if text.startswith("2^"):
        power = text[2:]
        if not (power.isascii() and power.isdigit()) or int(power) > _MAX_LIFETIME_POWER:
            raise CryptoParseError("bad key lifetime")
        return 1 << int(power)
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise CryptoParseError("bad key lifetime")
    return int(text)


def _mki(text: str) -> tuple[int, int]:
    value, _, length = text.partition(":")
    if not (value.isascii() and value.isdigit() and length.isascii() and length.isdigit()) \
            or len(value) > 40 or len(length) > 3:
        raise CryptoParseError("bad MKI")
    mki_bytes = int(length)
    if not 1 <= mki_bytes <= _MAX_MKI_BYTES or int(value) >= 1 << (8 * mki_bytes):
        raise CryptoParseError("bad MKI length")
    return int(value), mki_bytes


def parse_crypto(value: str) -> CryptoAttribute:
    """``1 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^20|1:4 [session params]`` -> CryptoAttribute."""
    parts = value.split()
    if len(parts) < 3:
        raise CryptoParseError("a=crypto needs a tag, a suite and key parameters")
    tag_text, suite_name, key_params = parts[0], parts[1].upper(), parts[2]
    if not (tag_text.isascii() and tag_text.isdigit()) or len(tag_text) > 9:
        raise CryptoParseError("bad crypto tag")
    suite = SUITES.get(suite_name)
    keys: list[KeyParam] = []
    mki_lengths: set[int] = set()
    for param in key_params.split(";")[: _MAX_KEYS + 1]:
        method, _, info = param.partition(":")
        if method.lower() != "inline" or not info:
            raise CryptoParseError("key method is not inline")
        fields = info.split("|")
        if len(fields) > 3:
            raise CryptoParseError("too many key fields")
        key = _decode_key(fields[0], suite)
        lifetime = mki = None
        for extra in fields[1:]:
            if ":" in extra:
                mki, length = _mki(extra)
                mki_lengths.add(length)
            else:
                lifetime = _lifetime(extra)
        keys.append(KeyParam(key, lifetime, mki))
    if len(keys) > _MAX_KEYS:
        raise CryptoParseError("too many keys")
    if len(keys) > 1 and (len(mki_lengths) != 1 or any(k.mki is None for k in keys)):
        raise CryptoParseError("several keys need MKIs of one length")
    if len({k.mki for k in keys}) != len(keys):
        raise CryptoParseError("two keys with one MKI")
    return CryptoAttribute(tag=int(tag_text), suite=suite_name, keys=tuple(keys) if suite and suite.libsrtp_profile else (),
                           mki_bytes=mki_lengths.pop() if mki_lengths else 0,
                           session_params=tuple(p.upper() for p in parts[3:16]))
