"""Invalid configuration values are refused at start-up (issue 14 item 9), each one named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import VALUE_RULES, load_config
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

# (section, key, a bad TOML value, a good one): one row per rule in agent/config.py.
BAD_VALUES = [
    ("api", "format", '"flac"', '"wav"'),
    ("api", "version", "3", "2"),
    ("api", "chunk_bytes", "0", "65536"),
    ("api", "connect_timeout_s", "0", "2.5"),
    ("api", "read_timeout_s", "-1", "30"),
    ("api", "write_timeout_s", "nan", "30"),
    ("api", "max_in_flight", "0", "2"),
    ("spool", "retention_days", "-3", "7"),
    ("spool", "min_free_mb", "-1", "0"),
    ("capture", "sip_ports", "[5060, 70000]", "[5060, 5080]"),
    ("capture", "snaplen", "10", "1500"),
    ("capture", "buffer_mb", "0", "64"),
    ("capture", "block_kb", "1", "2048"),
    ("capture", "block_timeout_ms", "0", "50"),
    ("capture", "idle_advance_s", "0", "0.5"),
    ("capture", "max_render_queue", "0", "16"),
    ("capture", "shutdown_timeout_s", "-5", "0"),
    ("capture", "hep", '"sctp:0.0.0.0:9060"', '"tcp:[::1]:9060"'),
    ("capture", "hep_ports", "[0]", "[9060, 9061]"),
    ("metrics", "listen", '"localhost"', '""'),
    ("metrics", "health_no_packets_s", "-1", "0"),
    ("metrics", "health_upload_failing_s", "inf", "60"),
    ("metrics", "health_min_free_mb", "-10", "100"),
    ("sip", "caller_identity", '["from", "contact"]', '["pai", "from"]'),
    ("sip", "callee_identity", "[]", '["request_uri"]'),
    ("sip", "rtp_timeout_s", "0", "30"),
    ("sip", "signalling_timeout_s", "-1", "600"),
    ("sip", "ringing_timeout_s", "0", "60"),
    ("sip", "max_duration_s", "0", "7200"),
    ("sip", "tombstone_s", "-1", "0"),
    ("sip", "l2_networks", '["10.0.0.0/33"]', '["10.0.0.0/8", "fd00::/8"]'),
    ("sip", "mac_format", '"dashes"', '"colon_lower"'),
    ("sip", "router_mac_ip_threshold", "0", "3"),
    ("sip", "pbx_addresses", '["pbx.local"]', '["10.1.1.1", "::1"]'),
    ("sip", "max_calls", "0", "100"),
    ("quality", "mos_below", "4.8", "3.6"),
    ("recording", "format", '"ogg"', '"wav"'),
    ("recording", "channels", "3", "2"),
    ("recording", "sample_rate_hz", "12345", "8000"),
    ("recording", "mp3_bitrate_kbps", "33", "64"),
    ("recording", "workers", "-1", "2"),
]


def test_every_rule_has_a_refusal_test() -> None:
    assert {(s, k) for s, k, _, _ in BAD_VALUES} == set(VALUE_RULES)


def _write(tmp_path: Path, section: str, key: str, value: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"[{section}]\n{key} = {value}\n")
    return cfg


@pytest.mark.parametrize(("section", "key", "bad", "good"), BAD_VALUES,
                         ids=[f"{s}.{k}" for s, k, _, _ in BAD_VALUES])
def test_bad_value_refused_good_value_accepted(tmp_path: Path, section: str, key: str,
                                               bad: str, good: str) -> None:
    with pytest.raises(ConfigError, match=rf"^\[{section}\] {key}: expected "):
        load_config(_write(tmp_path, section, key, bad), env={})
    load_config(_write(tmp_path, section, key, good), env={})


def test_environment_values_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"\[recording\] channels: expected one of 1, 2, got 3"):
        load_config(None, env={"CALLN_RECORDING_CHANNELS": "3"})


def test_check_config_fails_on_the_values_of_the_issue(tmp_path: Path) -> None:
    """The three that passed check-config before, then lost every call's audio."""
    for section, key, value, expected in [
            ("recording", "channels", "3", "[recording] channels: expected one of 1, 2, got 3"),
            ("recording", "format", '"ogg"', "[recording] format: expected one of 'mp3', 'wav', got 'ogg'"),
            ("api", "format", '"flac"', "[api] format: expected one of 'mp3', 'wav', got 'flac'")]:
        cfg = _write(tmp_path, section, key, value)
        proc = subprocess.run([sys.executable, "-m", "agent.cli", "--config", str(cfg), "check-config"],
                              capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode == 1
        assert f"FAIL configuration: {expected}" in proc.stdout
