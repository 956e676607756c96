"""CallMedia and render_recording against real public captures, with tshark's truth as the
oracle: packets, loss, duplicates and sequence wrap per RTP stream must agree."""

import json
import struct
from pathlib import Path

import pytest

from agent.media.render import render_recording
from agent.media.sequencer import CallMedia
from agent.media.timeline import CodecInfo, StreamSpec

PUBLIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "public"
if not PUBLIC.is_dir():
    pytest.skip("public captures not available", allow_module_level=True)


def udp_datagrams(path):
    """(ts_ns, src, dst, payload) of Ethernet/IPv4/UDP packets in a classic pcap file."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        ts_ns = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        off, etype = 14, struct.unpack_from("!H", frame, 12)[0]
        while etype == 0x8100:
            etype = struct.unpack_from("!H", frame, off + 2)[0]
            off += 4
        if etype != 0x0800 or frame[off + 9] != 17:
            continue
        ihl = (frame[off] & 0x0F) * 4
        flags_frag = struct.unpack_from("!H", frame, off + 6)[0]
        if flags_frag & 0x3FFF:
            continue
        src = ".".join(map(str, frame[off + 12:off + 16]))
        dst = ".".join(map(str, frame[off + 16:off + 20]))
        sport, dport, ulen = struct.unpack_from("!HHH", frame, off + ihl)
        payload = frame[off + ihl + 8:off + ihl + ulen]
        yield ts_ns, f"{src}:{sport}", f"{dst}:{dport}", payload


def feed_truth_streams(name, tmp_path):
    truth = json.loads((PUBLIC / "truth" / f"{name}.json").read_text())["rtp_streams"]
    keys = {(s["src"], s["dst"]): i for i, s in enumerate(truth)}
    cm = CallMedia(tmp_path / "call.media")
    for ts_ns, src, dst, payload in udp_datagrams(PUBLIC / name):
        i = keys.get((src, dst))
        if i is not None:
            cm.on_rtp(i, ts_ns, src, dst, payload)   # direction = truth stream number
    cm.close()
    return truth, cm


@pytest.mark.parametrize("name", ["sip-rtp-g726.pcap", "asterisk_zfone_xlite.pcap",
                                  "magicjack_short_call.pcap", "sip_dtmf2.pcap",
                                  "rtp-protocol.pcap"])
def test_stream_stats_match_tshark(name, tmp_path):
    truth, cm = feed_truth_streams(name, tmp_path)
    got = {(s.side, s.ssrc): s.stats for s in cm.streams}
    for i, t in enumerate(truth):
        st = got[(i, int(t["ssrc"], 16))]
        assert st.packets == t["packets"], t["id"]
        assert st.lost == t["lost_packets"], t["id"]
        assert st.duplicated == t["duplicate_packets"], t["id"]
        assert st.late == 0
        assert st.payload_types == {int(k): v for k, v in t["payload_types"].items()}
        assert (st.src, st.dst) == (t["src"], t["dst"])
    assert len(got) == len(truth)


def test_zrtp_is_noticed(tmp_path):
    _, cm = feed_truth_streams("asterisk_zfone_xlite.pcap", tmp_path)
    assert cm.zrtp_seen and cm.zrtp_packets > 0


def test_render_real_two_way_call(tmp_path):
    truth, cm = feed_truth_streams("magicjack_short_call.pcap", tmp_path)
    assert len(truth) == 2
    specs = [StreamSpec(s.index, s.side, {0: CodecInfo("PCMU", 8000)}) for s in cm.streams]
    res = render_recording(cm.log_path, specs, tmp_path / "rec.wav", fmt="wav", channels=2,
                           sample_rate_hz=8000)
    assert res.audio_packets == sum(t["packets"] for t in truth)
    assert res.undecodable == []
    assert res.per_side_ms == [t["packets"] * 20 for t in truth]
    span_ms = (max(s.stats.last_arrival_ns for s in cm.streams)
               - min(s.stats.first_arrival_ns for s in cm.streams)) / 1e6
    assert res.duration_ms == pytest.approx(span_ms + 20, abs=60)
