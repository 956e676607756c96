"""Command line behaviour a first hour trips over: --version, empty directories, stdin,
the codec column, hostile display names, the closing summaries, spool reads, receiver
passwords, the demo's files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import agent
from tests.install._install_testlib import PCAPS, REPO, cli, hostile_capture


def test_version_prints_agent_and_library_versions() -> None:
    import av
    import numpy
    import soxr
    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith(f"calln-agent {agent.__version__} ")
    assert f"PyAV {av.__version__} (FFmpeg " in lines[1]
    assert re.fullmatch(r"MP3 encoder: lameenc \d+\.\d+\S* \(LAME \d+\.\d+\S*\)", lines[2]), lines[2]
    assert lines[3] == f"numpy {numpy.__version__}"
    assert lines[4] == f"resampler: soxr {soxr.__version__} (libsoxr {soxr.__libsoxr_version__})"


def test_check_config_prints_the_same_versions(tmp_path) -> None:
    version = cli("--version").stdout.decode().splitlines()
    proc = cli("check-config", "-i", "lo")
    out = proc.stdout.decode().splitlines()
    assert out[:len(version)] == [f"INFO {line}" for line in version]


def test_version_comes_from_one_place() -> None:
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "agent.__version__"}


def test_inspect_of_a_directory_without_captures_fails(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not a capture")
    proc = cli("inspect", str(tmp_path))
    assert proc.returncode == 2
    assert b"holds no capture files" in proc.stderr and proc.stdout == b""


def test_inspect_reads_a_capture_on_stdin() -> None:
    data = (PCAPS / "multi_call.pcap").read_bytes()
    from_stdin = cli("inspect", "--json", "-q", "-", stdin=data)
    from_file = cli("inspect", "--json", "-q", str(PCAPS / "multi_call.pcap"))
    assert from_stdin.returncode == 0, from_stdin.stderr
    calls = [json.loads(line) for line in from_stdin.stdout.splitlines()]
    same = [json.loads(line) for line in from_file.stdout.splitlines()]
    assert [c.pop("capture_files") for c in calls] == [["-"]] * 3
    assert [c.pop("capture_files") for c in same] == [[str(PCAPS / "multi_call.pcap")]] * 3
    assert len(calls) == 3 and calls == same


def test_codec_column_is_never_cut() -> None:
    proc = cli("inspect", "-q", str(PCAPS / "display_names.pcap"))
    row = proc.stdout.decode().splitlines()[1]
    assert " PCMU+te " in row and "telephone-even " not in row


def test_hostile_display_name_is_escaped_in_the_table_and_exact_in_json(tmp_path) -> None:
    capture, hostile = hostile_capture(tmp_path)
    table = cli("inspect", "-q", str(capture))
    assert table.returncode == 0, table.stderr
    assert b"\x1b" not in table.stdout and b"\x07" not in table.stdout
    assert "\u202e".encode() not in table.stdout
    assert rb"\x1b]0;X\x07\u202e <1002>" in table.stdout
    as_json = cli("inspect", "--json", "-q", str(capture))
    record = json.loads(as_json.stdout.decode().splitlines()[0])      # valid JSON
    assert record["destinationname"] == hostile                       # faithful


def test_skipped_sip_is_reported_without_counters(tmp_path) -> None:
    # a bare CR LF inside a display name: every SIP message of the call is malformed
    data = (PCAPS / "display_names.pcap").read_bytes().replace(b"Bob Jones", b"Bob\r\nJone")
    capture = tmp_path / "crlf.pcap"
    capture.write_bytes(data)
    proc = cli("inspect", "-q", str(capture))
    assert proc.stdout.decode().splitlines()[-1] == "0 call(s)"
    # all seven, the BYE and its 200 too: the start-line classifier (sip/message.py
    # dialogless_call_id) peeks only at what scans send (OPTIONS, REGISTER...), and never at a
    # head the parser would reject
    assert "7 SIP/SDP message(s) skipped (malformed 7)" in proc.stderr.decode()
    assert "RTP packet(s) matched no call" in proc.stderr.decode()
    clean = cli("inspect", "-q", str(PCAPS / "display_names.pcap"))
    assert clean.stderr == b""


def test_spool_list_without_a_spool_creates_nothing(tmp_path) -> None:
    spool = tmp_path / "spool"
    proc = cli("spool", "--dir", str(spool), "list")
    assert proc.returncode == 0
    assert f"# spool {spool}: does not exist".encode() in proc.stderr
    assert not spool.exists()


def test_receiver_generates_and_prints_a_password(tmp_path) -> None:
    import os
    env = {k: v for k, v in os.environ.items() if k != "CALLN_PASSWORD"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "receiver", "--port", "0",
                             "--dir", str(tmp_path / "rx")], env=env, stdout=subprocess.PIPE, text=True)
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert first.startswith("CallN receiver on https://127.0.0.1:")
    password = re.search(r"generated password: (\S+)", second).group(1)
    assert len(password) >= 16 and password != "secret"


def test_demo_from_another_directory_keeps_files_on_request(tmp_path) -> None:
    keep = tmp_path / "kept"
    proc = cli("demo", "--keep", str(keep), cwd=tmp_path)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "delivery: 4 call(s) delivered, 0 delivered unconfirmed, 0 parked, 0 pending" in out
    assert "the receiver stored 4 call(s):" in out
    assert f"files kept in {keep}: received/" in out
    assert len(list((keep / "received").glob("*.mp3"))) == 4


def test_demo_removes_its_temporary_directory(tmp_path) -> None:
    proc = cli("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    removed = re.search(r"^removed (\S+) \(calln-agent demo --keep DIR keeps the files\)$",
                        proc.stdout.decode(), re.M)
    assert removed, proc.stdout
    from pathlib import Path
    assert not Path(removed.group(1)).exists()


def test_inspect_dtmf_column_marks_what_it_cannot_see() -> None:
    proc = cli("inspect", "-q", str(PCAPS / "dtmf_rfc4733.pcap"), str(PCAPS / "sipp_g711a.pcap"))
    lines = proc.stdout.decode().splitlines()
    assert "dtmf (caller/callee)" in lines[0]
    assert " 1599#/*0 " in lines[1]                 # RFC 4733 events, both sides
    assert " 1/1 " in lines[2]                      # SIPp's call
    public = REPO.parent / "shared" / "pcaps" / "public" / "sip_call_rtp_g711.pcap"
    if public.is_file():                            # PCMA/G729 only: digits could be in-band
        assert "in-band: not scanned" in cli("inspect", "-q", str(public)).stdout.decode()


def test_inspect_json_names_each_calls_capture_file(tmp_path) -> None:
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    (rotated / "a.pcap").write_bytes((PCAPS / "sipp_g711a.pcap").read_bytes())     # 2026-11-26
    (rotated / "b.pcap").write_bytes((PCAPS / "multi_call.pcap").read_bytes())     # 2026-01-15
    proc = cli("inspect", "--json", "-q", str(rotated))
    files = {json.loads(line)["callid"]: json.loads(line)["capture_files"] for line in proc.stdout.splitlines()}
    assert sorted(map(tuple, files.values())) == [(str(rotated / "a.pcap"),)] + [(str(rotated / "b.pcap"),)] * 3
    one = cli("inspect", "--json", "-q", "-", stdin=(PCAPS / "basic_udp.pcap").read_bytes())
    assert [json.loads(line)["capture_files"] for line in one.stdout.splitlines()] == [["-"]]


def test_commands_start_numpy_without_blas_threads() -> None:
    """OpenBLAS starts a thread per core when numpy loads unless told otherwise; the CLI tells
    it one (no command does BLAS work in its own process), and an operator's setting wins."""
    import os
    probe = ("import os, agent.cli, numpy; "
             "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[1] == "2"
