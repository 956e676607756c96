"""HEP3 inside a capture (pcaps/hep_basic_udp.pcap: basic_udp's call sent to a collector on
UDP 9060 by two HEP agents): `inspect` and `replay` unwrap it, and the call comes out as its
SPAN twin (pcaps/basic_udp.pcap) — the same record except the MACs HEP does not carry, the
same audio sample for sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from tests.conftest import PCAPS, REPO, run_inspect

HEP = PCAPS / "hep_basic_udp.pcap"
SPAN = PCAPS / "basic_udp.pcap"
NO_MAC = {"callermacaddress", "destinationmacaddress", "capture_files", "media"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLN_")}
    return dict(env, **extra)


def test_hep_call_is_its_span_twin_in_inspect():
    (hep,) = run_inspect(HEP, env=_env())
    (span,) = run_inspect(SPAN, env=_env())
    assert {k: v for k, v in hep.items() if k not in NO_MAC} == \
        {k: v for k, v in span.items() if k not in NO_MAC}
    assert hep["callermacaddress"] == hep["destinationmacaddress"] == ""
    for side in ("caller", "callee"):
        assert hep["media"][side] == dict(span["media"][side], mac="")
    assert hep["answered"] and hep["end_reason"] == "bye"
    assert sum(s["packets"] for s in hep["streams"]) == 302


def _replay_wav(capture: Path, out: Path) -> tuple[dict, np.ndarray]:
    env = _env(CALLN_RECORDING_CHANNELS="2")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "replay", "-q", "--out", str(out),
                           "--format", "wav", "--workers", "1", str(capture)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    with wave.open(str(out / record["recording"]["file"])) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return record, pcm


def test_hep_call_is_its_span_twin_in_audio(tmp_path):
    rec_hep, pcm_hep = _replay_wav(HEP, tmp_path / "hep")
    rec_span, pcm_span = _replay_wav(SPAN, tmp_path / "span")
    assert len(pcm_span) > 8000 * 2 * 2                 # > 2 s of stereo audio
    assert np.array_equal(pcm_hep, pcm_span)
    assert rec_hep["duration_ms"] == rec_span["duration_ms"]


def test_wrong_auth_key_drops_every_hep_packet():
    assert run_inspect(HEP, env=_env(CALLN_HEP_AUTH_KEY="s3cret")) == []


def test_hep_ports_configurable():
    assert run_inspect(HEP, env=_env(CALLN_CAPTURE_HEP_PORTS="9999")) == []


def test_counters_name_what_was_unwrapped_and_dropped(tmp_path):
    import dataclasses

    from agent.config import Config
    from agent.pipeline.finishing import MediaMode
    from agent.replay import replay

    frames = 309                         # every datagram of basic_udp (7 SIP, 302 RTP), one HEP3 each
    calls = []
    engine = replay([HEP], Config(), calls.append, workdir=tmp_path / "a", progress=False, media=MediaMode.COUNTERS)
    c = engine.counters
    assert (c["hep.messages"], c["hep.datagrams"], len(calls)) == (frames, frames, 1)
    assert not [k for k in c if k.startswith("hep.skip.")]

    keyed = Config(capture=dataclasses.replace(Config().capture, hep_auth_key="s3cret"))
    calls = []
    c = replay([HEP], keyed, calls.append, workdir=tmp_path / "b", progress=False, media=MediaMode.COUNTERS).counters
    assert (c["hep.skip.auth_failed"], c["hep.datagrams"], calls) == (frames, 0, [])


def test_generator_reproduces_the_committed_capture(tmp_path):
    subprocess.run([sys.executable, str(PCAPS / "make_hep_pcaps.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    for name in ("hep_basic_udp.pcap", "hep_basic_udp.truth.json"):
        assert (tmp_path / name).read_bytes() == (PCAPS / name).read_bytes(), name
