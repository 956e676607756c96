"""One frozen configuration object, built from TOML plus environment variables.

Precedence: built-in defaults < TOML file (``--config`` or ``$CALLN_CONFIG``) <
environment (``CALLN_<SECTION>_<KEY>``, e.g. ``CALLN_API_URL``). Secrets come only
from the environment (``CALLN_PASSWORD``) or from a file named by
``[api] password_file`` that must not be readable by other users.
Key names are stable: other tools write these files.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import socket
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class AgentSection:
    servername: str = field(default_factory=socket.gethostname)
    location: str = ""


@dataclass(frozen=True, slots=True)
class ApiSection:
    url: str = "https://api.calln.com"
    username: str = ""
    password: str = field(default="", repr=False)   # from CALLN_PASSWORD or password_file only
    password_file: str = ""
    ca_bundle: str = ""              # path to a PEM bundle; empty = system trust store
    chunk_bytes: int = 512 * 1024
    format: str = "mp3"              # mp3 | wav
    version: int = 1                 # CallN API 1 (POST /api/call) or 2 (/api/v2/call, key-press times)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    write_timeout_s: float = 60.0
    max_in_flight: int = 4
    upload_unanswered: bool = False  # upload cancelled/rejected calls too
    upload_no_audio: bool = False    # upload answered calls without audio as silence


@dataclass(frozen=True, slots=True)
class SpoolSection:
    dir: str = "/var/spool/calln-agent"
    retention_days: float = 0.0      # 0 = delete delivered calls at once
    ledger_days: float = 400.0       # forget delivered/skipped call keys after this; 0 = never
    min_free_mb: int = 512           # below this, stop writing new audio


@dataclass(frozen=True, slots=True)
class CaptureSection:
    interfaces: tuple[str, ...] = ()
    sip_ports: tuple[int, ...] = (5060,)
    snaplen: int = 65535
    buffer_mb: int = 256
    # Live capture (agent.capture.live, agent.run).
    promiscuous: bool = True             # receive frames not addressed to us (a SPAN port needs it)
    bpf_filter: str = ""                 # replaces the generated filter entirely; empty = generated
    bpf_extra: str = ""                  # OR-ed into the generated filter (e.g. "tcp port 5080")
    block_kb: int = 1024                 # TPACKET_V3 block size; buffer_mb / block_kb blocks
    block_timeout_ms: int = 100          # a partly filled block is handed over after this long
    idle_advance_s: float = 1.0          # no packet for this long: engine time follows the wall clock
    max_render_queue: int = 256          # finished calls waiting for a renderer before back-pressure
    shutdown_timeout_s: float = 60.0     # SIGTERM: rendering + spooling must finish within this
    # HEP v3 input (agent.net.hep, agent.capture.hep).
    hep: str = ""                        # listener "udp:HOST:PORT" or "tcp:HOST:PORT"; empty = none
    hep_ports: tuple[int, ...] = (9060,)  # UDP ports whose HEP3 payloads in a capture are unwrapped
    hep_auth_key: str = field(default="", repr=False)   # from CALLN_HEP_AUTH_KEY or hep_auth_key_file only
    hep_auth_key_file: str = ""          # HEP packets without this auth key are dropped; empty = no check


@dataclass(frozen=True, slots=True)
class MetricsSection:
    listen: str = "127.0.0.1:9731"       # Prometheus /metrics and /health; empty = off
    health_no_packets_s: float = 300.0   # unhealthy when no packet seen for this long (0 = never)
    health_upload_failing_s: float = 900.0  # unhealthy when uploads fail for this long
    health_min_free_mb: int = 1024       # unhealthy when the spool's disk has less free space
    log_json: bool = False               # one JSON object per log line


@dataclass(frozen=True, slots=True)
class QualitySection:
    mos_below: float = 0.0   # mark a call whose MOS (either direction) is below this; 0 = off


@dataclass(frozen=True, slots=True)
class SipSection:
    # Identity precedence for the caller: first source with a usable number wins.
    caller_identity: tuple[str, ...] = ("from", "pai", "rpid")
    callee_identity: tuple[str, ...] = ("to", "request_uri")
    rtp_timeout_s: float = 60.0          # no media for this long (and not on hold) ends a call
    signalling_timeout_s: float = 3600.0  # no SIP and no media at all
    ringing_timeout_s: float = 300.0     # INVITE with no final response
    max_duration_s: float = 4 * 3600.0
    tombstone_s: float = 120.0
    l2_networks: tuple[str, ...] = ()    # CIDRs whose MACs are trusted; empty = all
    mac_format: str = "plain_upper"      # plain_upper | colon_lower | colon_upper
    router_mac_ip_threshold: int = 1     # a MAC sending for more IPv4 addresses than this is a router
    pbx_addresses: tuple[str, ...] = ()
    max_calls: int = 20000               # concurrent dialogs; beyond it unanswered calls without media are evicted


@dataclass(frozen=True, slots=True)
class RecordingSection:
    format: str = "mp3"          # mp3 | wav
    channels: int = 1            # 1 = mono mix, 2 = caller left / callee right
    # Output rate. 0: the call's native rate (8 kHz when every stream is narrowband, 16 kHz
    # with any wideband one); -1 (unset): 0 for WAV, 16000 for MP3 (8 kHz MP3 is MPEG-2.5,
    # which not every player handles). See output_rate_hz.
    sample_rate_hz: int = -1
    mp3_bitrate_kbps: int = 32
    mp3_quality: int = 7         # LAME's algorithm quality, 0 (slowest) .. 9 (fastest); see README
    workers: int = 0             # encoder processes; 0 = number of CPUs
    mask_dtmf_audio: bool = False     # PCI: silence DTMF tones / key-press spans in recordings
    redact_dtmf_digits: bool = False  # PCI: never send or store the digits pressed
    group: str = ""               # recordings readable by this group too (0640/0750); default 0600/0700

    def output_rate_hz(self, fmt: str) -> int:
        """The rate to render a ``fmt`` recording at (0: the call's native rate)."""
        if self.sample_rate_hz >= 0:
            return self.sample_rate_hz
        return 16000 if fmt.lower() == "mp3" else 0


@dataclass(frozen=True, slots=True)
class NumbersSection:
    outside_line_prefix: str = ""
    country_code: str = ""
    national_prefix: str = ""
    add_country_code: bool = False
    strip_country_code: bool = False
    extension_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    agent: AgentSection = field(default_factory=AgentSection)
    api: ApiSection = field(default_factory=ApiSection)
    spool: SpoolSection = field(default_factory=SpoolSection)
    capture: CaptureSection = field(default_factory=CaptureSection)
    sip: SipSection = field(default_factory=SipSection)
    recording: RecordingSection = field(default_factory=RecordingSection)
    numbers: NumbersSection = field(default_factory=NumbersSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    quality: QualitySection = field(default_factory=QualitySection)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert a TOML or environment value to the type of the field's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = type(default[0]) if default else str
        return tuple(_coerce(v, item_type(), where) for v in value)
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _section(cls: type, raw: Mapping[str, Any], env: Mapping[str, str], name: str) -> Any:
    defaults = cls()
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known or key in _SECRETS:
            raise ConfigError(f"[{name}] {key}: unknown key" + (
                f" (it comes from {_SECRETS[key]} or {key}_file)" if key in _SECRETS else ""))
    for f in dataclasses.fields(cls):
        env_key = f"CALLN_{name.upper()}_{f.name.upper()}"
        if f.name in _SECRETS:
            continue
        if env_key in env:
            kwargs[f.name] = _coerce(env[env_key], getattr(defaults, f.name), env_key)
        elif f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], getattr(defaults, f.name), f"[{name}] {f.name}")
    return cls(**kwargs)


# Secret keys: never in the TOML, only from this environment variable or from ``<key>_file``.
_SECRETS = {"password": "CALLN_PASSWORD", "hep_auth_key": "CALLN_HEP_AUTH_KEY"}


def _read_secret(section: str, key: str, file_name: str, env: Mapping[str, str]) -> str:
    if env.get(_SECRETS[key]):
        return env[_SECRETS[key]]
    if file_name:
        path = Path(file_name)
        try:
            st = path.stat()
            if st.st_mode & stat.S_IRWXO:
                raise ConfigError(f"[{section}] {key}_file {path} is readable by other users; chmod 600 it")
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"[{section}] {key}_file {path}: {exc.strerror}") from None
    return ""


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration. ``path`` None means ``$CALLN_CONFIG`` or defaults only."""
    env = os.environ if env is None else env
    path = path or env.get("CALLN_CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from None
    for name in raw:
        if name not in _SECTIONS:
            raise ConfigError(f"unknown configuration section [{name}]")
    sections = {}
    for f in dataclasses.fields(Config):
        cls = f.default_factory  # type: ignore[misc]
        sections[f.name] = _section(cls, raw.get(f.name, {}), env, f.name)
    api = sections["api"]
    sections["api"] = dataclasses.replace(api, password=_read_secret("api", "password", api.password_file, env))
    cap = sections["capture"]
    sections["capture"] = dataclasses.replace(cap, hep_auth_key=_read_secret(
        "capture", "hep_auth_key", cap.hep_auth_key_file, env))
    _check_spool(sections["spool"])
    _check_recording(sections["recording"])
    _check_values(sections)
    return Config(**sections)


def _check_recording(recording: RecordingSection) -> None:
    if not 0 <= recording.mp3_quality <= 9:
        raise ConfigError(f"[recording] mp3_quality: expected 0 (slowest) to 9 (fastest), "
                          f"got {recording.mp3_quality!r}")
    if recording.group:
        import grp
        try:
            if not recording.group.isdigit():
                grp.getgrnam(recording.group)
        except KeyError:
            raise ConfigError(f"[recording] group: no group named {recording.group!r} on this host") from None


def _check_spool(spool: SpoolSection) -> None:
    if not math.isfinite(spool.ledger_days) or spool.ledger_days < 0:
        raise ConfigError(f"[spool] ledger_days: expected a number of days >= 0 (0 = keep forever), "
                          f"got {spool.ledger_days!r}")


# ---------------------------------------------------------------------- value rules
# Every enumerated or ranged key, refused at start-up (a daemon must not lose every call's
# audio one render error at a time). Each rule returns what was expected, or None when fine.

def _one_of(*allowed: Any) -> Any:
    return lambda v: None if v in allowed else "one of " + ", ".join(repr(a) for a in allowed)


def _ints(lo: int, hi: int) -> Any:
    return lambda v: None if lo <= v <= hi else f"an integer from {lo} to {hi}"


def _seconds(*, zero_ok: bool) -> Any:
    def check(v: float) -> str | None:
        good = math.isfinite(v) and (v >= 0 if zero_ok else v > 0)
        return None if good else ("a finite number >= 0" if zero_ok else "a finite number > 0")
    return check


def _mos_threshold(v: float) -> str | None:
    return None if v == 0 or 1.0 <= v <= 4.5 else "0 (off) or a MOS from 1.0 to 4.5"


def _each(rule: Any, *, non_empty: bool = False) -> Any:
    def check(values: tuple[Any, ...]) -> str | None:
        if non_empty and not values:
            return "a non-empty list"
        for v in values:
            why = rule(v)
            if why is not None:
                return f"a list of {why} ({v!r} is not)"
        return None
    return check


def _ip(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        return "IP addresses"


def _cidr(v: str) -> str | None:
    try:
        ipaddress.ip_network(v, strict=False)
        return None
    except ValueError:
        return "networks (CIDR)"


def _listen(v: str) -> str | None:
    from agent.metrics import parse_listen
    if not v:
        return None                      # empty = metrics off
    try:
        host, port = parse_listen(v)
    except ValueError:
        return "HOST:PORT (or empty to turn metrics off)"
    return None if 0 <= port <= 65535 else "HOST:PORT with a port up to 65535"


def _hep_listen(v: str) -> str | None:
    from agent.capture.hep import parse_hep_listen
    if not v:
        return None                      # empty = no HEP listener
    try:
        parse_hep_listen(v)
    except ValueError:
        return '"udp:HOST:PORT" or "tcp:HOST:PORT" (or empty for no HEP listener)'
    return None


MAC_FORMATS = ("plain_upper", "colon_lower", "colon_upper")   # agent/calls/macs.py
MP3_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)   # what LAME encodes
MP3_BITRATES_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 192, 224, 256, 320)

VALUE_RULES: dict[tuple[str, str], Any] = {
    ("api", "format"): _one_of("mp3", "wav"),
    ("api", "version"): _one_of(1, 2),
    ("api", "chunk_bytes"): _ints(1024, 256 * 1024 * 1024),
    ("api", "connect_timeout_s"): _seconds(zero_ok=False),
    ("api", "read_timeout_s"): _seconds(zero_ok=False),
    ("api", "write_timeout_s"): _seconds(zero_ok=False),
    ("api", "max_in_flight"): _ints(1, 64),
    ("spool", "retention_days"): _seconds(zero_ok=True),
    ("spool", "min_free_mb"): _ints(0, 1 << 30),
    ("capture", "sip_ports"): _each(_ints(1, 65535)),
    ("capture", "snaplen"): _ints(64, 262144),
    ("capture", "buffer_mb"): _ints(1, 1 << 20),
    ("capture", "block_kb"): _ints(4, 1 << 20),
    ("capture", "block_timeout_ms"): _ints(1, 60_000),
    ("capture", "idle_advance_s"): _seconds(zero_ok=False),
    ("capture", "max_render_queue"): _ints(1, 1 << 20),
    ("capture", "shutdown_timeout_s"): _seconds(zero_ok=True),
    ("capture", "hep"): _hep_listen,
    ("capture", "hep_ports"): _each(_ints(1, 65535)),
    ("quality", "mos_below"): _mos_threshold,
    ("metrics", "listen"): _listen,
    ("metrics", "health_no_packets_s"): _seconds(zero_ok=True),
    ("metrics", "health_upload_failing_s"): _seconds(zero_ok=True),
    ("metrics", "health_min_free_mb"): _ints(0, 1 << 30),
    ("sip", "caller_identity"): _each(_one_of("from", "pai", "rpid"), non_empty=True),
    ("sip", "callee_identity"): _each(_one_of("to", "request_uri"), non_empty=True),
    ("sip", "rtp_timeout_s"): _seconds(zero_ok=False),
    ("sip", "signalling_timeout_s"): _seconds(zero_ok=False),
    ("sip", "ringing_timeout_s"): _seconds(zero_ok=False),
    ("sip", "max_duration_s"): _seconds(zero_ok=False),
    ("sip", "tombstone_s"): _seconds(zero_ok=True),
    ("sip", "l2_networks"): _each(_cidr),
    ("sip", "mac_format"): _one_of(*MAC_FORMATS),
    ("sip", "router_mac_ip_threshold"): _ints(1, 1 << 20),
    ("sip", "pbx_addresses"): _each(_ip),
    ("sip", "max_calls"): _ints(1, 10_000_000),
    ("recording", "format"): _one_of("mp3", "wav"),
    ("recording", "channels"): _one_of(1, 2),
    ("recording", "sample_rate_hz"): _one_of(-1, 0, *MP3_RATES_HZ),
    ("recording", "mp3_bitrate_kbps"): _one_of(*MP3_BITRATES_KBPS),
    ("recording", "workers"): _ints(0, 1024),
}


def _check_values(sections: Mapping[str, Any]) -> None:
    for (section, key), rule in VALUE_RULES.items():
        value = getattr(sections[section], key)
        why = rule(value)
        if why is not None:
            raise ConfigError(f"[{section}] {key}: expected {why}, got {value!r}")
