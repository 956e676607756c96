"""``calln-agent install-service`` into a scratch root: the user, directories with their
modes and owners, the config from the example, the executable and man page the unit names,
the unit itself (checked by systemd-analyze verify) and its enablement; a second run keeps
what the operator edited. And the example config shows every default, as it says."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config
from agent.service import install_service
from tests.install._install_testlib import REPO

needs_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "systemctl", "systemd-analyze")),
    reason="needs root, useradd, systemctl and systemd-analyze")


def test_example_config_shows_every_default() -> None:
    example = REPO / "deploy" / "agent.example.toml"
    assert "Every key is shown with its default" in example.read_text()
    assert load_config(example, env={}) == load_config(None, env={})


def _scratch_root(tmp_path):
    root = tmp_path / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    for name, line in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (etc / name).write_text(line)
        os.chmod(etc / name, 0o600)
    exe = "/opt/calln-agent/bin/calln-agent"       # as the service sees it, inside the root
    (root / exe[1:]).parent.mkdir(parents=True)
    (root / exe[1:]).write_text("#!/bin/sh\nexit 0\n")
    os.chmod(root / exe[1:], 0o755)
    return root, Path(exe)


def _mode_owner(path):
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@needs_tools
def test_install_service_into_a_scratch_root(tmp_path) -> None:
    root, exe = _scratch_root(tmp_path)
    said: list[str] = []
    install_service(root, executable=exe, say=said.append)

    user = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
            if line.startswith("calln:")]
    assert len(user) == 1 and user[0][5:] == ["/var/spool/calln-agent", "/usr/sbin/nologin"]
    uid, gid = int(user[0][2]), int(user[0][3])
    assert _mode_owner(root / "etc/calln-agent") == (0o750, 0, gid)
    assert _mode_owner(root / "var/spool/calln-agent") == (0o700, uid, gid)
    config = root / "etc/calln-agent/agent.toml"
    assert _mode_owner(config) == (0o640, 0, gid)
    assert config.read_bytes() == (REPO / "deploy/agent.example.toml").read_bytes()
    assert _mode_owner(root / "etc/calln-agent/secret.env") == (0o600, 0, 0)
    assert os.readlink(root / "usr/local/bin/calln-agent") == str(exe)
    assert (root / "usr/local/share/man/man1/calln-agent.1").read_text().startswith(".TH CALLN-AGENT 1")
    unit = root / "etc/systemd/system/calln-agent.service"
    assert unit.read_bytes() == (REPO / "deploy/calln-agent.service").read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/calln-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/calln-agent.service"
    assert "calln-agent.service: enabled (starts at boot)" in said

    # the unit as systemd reads it, with its ExecStart= resolved inside the scratch root
    text = unit.read_text().replace("/usr/local/bin/calln-agent", str(root / str(exe)[1:]))
    check = tmp_path / "calln-agent.service"
    check.write_text(text)
    # Documentation=man:calln-agent(1) is checked too: with man, looking in the root's man pages
    env = dict(os.environ, MANPATH=str(root / "usr/local/share/man"))
    verify = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True, env=env)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    assert "Documentation=man:calln-agent(1)" in text and "ReadWritePaths=/var/spool/calln-agent" in text

    # again: nothing duplicated, the operator's edits kept
    config.write_text('[api]\nurl = "https://example.net"\n')
    said.clear()
    install_service(root, executable=exe, say=said.append)
    assert config.read_text() == '[api]\nurl = "https://example.net"\n'
    assert "/etc/calln-agent/agent.toml: kept (already there)" in said
    assert not any(line.startswith("created system user") for line in said)
    assert (root / "etc/passwd").read_text().count("calln:") == 1


def test_install_service_refuses_an_executable_the_service_cannot_see(tmp_path) -> None:
    from agent.errors import AgentError
    with pytest.raises(AgentError, match="PrivateTmp"):
        install_service(tmp_path / "root", executable=tmp_path.parent / "x" / "calln-agent")


def test_broken_unit_fails_verify(tmp_path) -> None:
    """The verify above can fail: a typo in a directive is reported."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze")
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectSytem=strict\n")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown key 'ProtectSytem'" in verify.stderr
