"""The package as a user installs it: ``python -m build`` gives a wheel and an sdist that
carry the demo's captures and the example config (the same bytes as pcaps/ and deploy/),
and the wheel, installed into a fresh virtual environment, runs the demo from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from importlib.resources import files

import pytest

from agent.demo import DEFAULT_CAPTURES
from tests.install._install_testlib import REPO

BUNDLED = {name: REPO / "pcaps" / name for name in DEFAULT_CAPTURES}
BUNDLED["agent.example.toml"] = REPO / "deploy" / "agent.example.toml"
BUNDLED["calln-agent.service"] = REPO / "deploy" / "calln-agent.service"


def test_bundled_files_are_the_sources() -> None:
    """In the checkout agent/bundled/ holds symlinks to the sources of truth, so the two can
    never diverge; importlib.resources reads them there as it does in an installed wheel."""
    package = files("agent.bundled")
    for name, source in BUNDLED.items():
        link = REPO / "agent" / "bundled" / name
        assert link.is_symlink() and link.resolve() == source.resolve()
        assert (package / name).read_bytes() == source.read_bytes()


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing at a checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_demo_from_any_directory(tmp_path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("calln_agent-*.whl")
    (sdist,) = dist.glob("calln_agent-*.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        for name, source in BUNDLED.items():
            assert zf.read(f"agent/bundled/{name}") == source.read_bytes(), name
        man = [n for n in zf.namelist() if n.endswith(".data/data/share/man/man1/calln-agent.1")]
        assert len(man) == 1 and zf.read(man[0]) == (REPO / "deploy" / "calln-agent.1").read_bytes()
    with tarfile.open(sdist) as tf:
        top = sdist.name.removesuffix(".tar.gz")
        for name, source in BUNDLED.items():
            member = tf.getmember(f"{top}/agent/bundled/{name}")
            assert member.isfile(), f"{name} is not a regular file in the sdist"
            assert tf.extractfile(member).read() == source.read_bytes(), name

    venv = tmp_path / "venv"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=900, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = subprocess.run([str(venv / "bin" / "calln-agent"), "--version"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr
    import agent
    assert version.stdout.startswith(f"calln-agent {agent.__version__} ")
    demo = subprocess.run([str(venv / "bin" / "calln-agent"), "demo"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "delivery: 4 call(s) delivered, 0 delivered unconfirmed, 0 parked, 0 pending" in demo.stdout
    assert "the receiver stored 4 call(s):" in demo.stdout
    # the captures came from the installed package, not from this checkout
    assert f"{venv}/lib/" in demo.stdout and str(REPO / "agent") not in demo.stdout
    assert (venv / "share" / "man" / "man1" / "calln-agent.1").is_file()      # man calln-agent
