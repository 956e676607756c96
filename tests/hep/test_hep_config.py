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
