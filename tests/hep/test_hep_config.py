"""[capture] hep_auth_key is a secret: from CALLN_HEP_AUTH_KEY or a private file, never the TOML."""

from __future__ import annotations

import os

import pytest

from agent.config import load_config
from agent.errors import ConfigError


def test_auth_key_from_environment_or_private_file(tmp_path):
    assert load_config(None, env={"CALLN_HEP_AUTH_KEY": "k1"}).capture.hep_auth_key == "k1"
    key = tmp_path / "hep.key"
    key.write_text("k2\n")
    os.chmod(key, 0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[capture]\nhep_auth_key_file = "{key}"\n')
    config = load_config(cfg, env={})
    assert config.capture.hep_auth_key == "k2"
    assert "k2" not in repr(config)
    os.chmod(key, 0o604)
    with pytest.raises(ConfigError, match="hep_auth_key_file .* readable by other users"):
        load_config(cfg, env={})


def test_auth_key_in_the_toml_is_refused(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[capture]\nhep_auth_key = "oops"\n')
    with pytest.raises(ConfigError, match="hep_auth_key: unknown key .*CALLN_HEP_AUTH_KEY"):
        load_config(cfg, env={})


def test_check_config_accepts_a_hep_listener_without_interfaces(tmp_path, monkeypatch):
    from agent import run
    from agent.deliver import client

    monkeypatch.setattr(run, "clock_synchronised", lambda: True)
    monkeypatch.setattr(client, "probe_tls", lambda *a: ("ok", "TLS not probed in this test"))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[api]\nurl = "https://api.example"\nusername = "u"\n[spool]\ndir = "{tmp_path}/s"\n'
                   '[capture]\nhep = "udp:127.0.0.1:9060"\n')
    config = load_config(cfg, env={"CALLN_PASSWORD": "p", "CALLN_HEP_AUTH_KEY": "k"})
    results = run.check_config(config, [])
    assert ("ok", "HEP listener udp:127.0.0.1:9060 with auth key") in results
    assert not [msg for level, msg in results if level == "fail"], results
    # without the listener, no interface is a failure again
    cfg.write_text(f'[api]\nurl = "https://api.example"\nusername = "u"\n[spool]\ndir = "{tmp_path}/s"\n')
    results = run.check_config(load_config(cfg, env={"CALLN_PASSWORD": "p"}), [])
    assert any(level == "fail" and "no capture interface" in msg for level, msg in results)
