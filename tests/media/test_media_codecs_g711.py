"""G.711, L16, DVI4 and the decoder factory: exact, table- or Python-level decoders."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agent.media import g711
from agent.media.codecs import (
    Decoder,
    Dvi4Decoder,
    make_decoder,
    is_comfort_noise,
    is_telephone_event,
)

PUBLIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "pcaps" / "public"
ALL_CODES = bytes(range(256))


# ------------------------------------------------------------------ independent references
# Written the way the classic Sun Microsystems g711.c does it, one code at a time.


def ref_ulaw2linear(u_val: int) -> int:
    u_val = ~u_val & 0xFF
    t = ((u_val & 0x0F) << 3) + 0x84
    t <<= (u_val & 0x70) >> 4
    return (0x84 - t) if (u_val & 0x80) else (t - 0x84)


def ref_alaw2linear(a_val: int) -> int:
    a_val ^= 0x55
    t = (a_val & 0x0F) << 4
    seg = (a_val & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t += 0x108
        t <<= seg - 1
    return t if (a_val & 0x80) else -t


def test_ulaw_table_matches_reference_for_all_256_codes():
    expected = [ref_ulaw2linear(c) for c in range(256)]
    assert g711.ULAW_TO_LINEAR.dtype == np.int16
    assert g711.ULAW_TO_LINEAR.tolist() == expected
    assert g711.decode_ulaw(ALL_CODES).tolist() == expected


def test_alaw_table_matches_reference_for_all_256_codes():
    expected = [ref_alaw2linear(c) for c in range(256)]
    assert g711.ALAW_TO_LINEAR.dtype == np.int16
    assert g711.ALAW_TO_LINEAR.tolist() == expected
    assert g711.decode_alaw(ALL_CODES).tolist() == expected


def test_g711_well_known_values():
    u, a = g711.ULAW_TO_LINEAR, g711.ALAW_TO_LINEAR
    assert (u[0x00], u[0x80], u[0xFF], u[0x7F]) == (-32124, 32124, 0, 0)
    assert (a[0xD5], a[0x55], a[0xAA], a[0x2A]) == (8, -8, 32256, -32256)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg CLI not installed")
@pytest.mark.parametrize("fmt,decode", [("mulaw", g711.decode_ulaw), ("alaw", g711.decode_alaw)])
def test_g711_matches_ffmpeg(tmp_path, fmt, decode):
    raw = tmp_path / "in.raw"
    out = tmp_path / "out.raw"
    raw.write_bytes(ALL_CODES * 3)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", fmt, "-ar", "8000", "-i", str(raw),
         "-f", "s16le", str(out)],
        check=True,
    )  # fmt: skip
    ffmpeg_pcm = np.frombuffer(out.read_bytes(), dtype="<i2")
    assert np.array_equal(decode(ALL_CODES * 3), ffmpeg_pcm)


def test_g711_round_trip_of_every_code():
    pcm_u = g711.decode_ulaw(ALL_CODES)
    codes_u = g711.linear_to_ulaw(pcm_u)
    # 0x7F is µ-law "negative zero": it re-encodes as positive zero 0xFF; every other code is kept.
    assert codes_u == bytes(0xFF if c == 0x7F else c for c in range(256))
    pcm_a = g711.decode_alaw(ALL_CODES)
    assert g711.linear_to_alaw(pcm_a) == ALL_CODES


SEG_UEND = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF]
SEG_AEND = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]


def _search(val: int, table: list[int]) -> int:
    for i, end in enumerate(table):
        if val <= end:
            return i
    return len(table)


def ref_linear2ulaw(pcm_val: int) -> int:
    """Sun g711.c (16-bit input, BIAS 0x84, CLIP 32635)."""
    if pcm_val < 0:
        pcm_val, mask = 0x84 - pcm_val, 0x7F
    else:
        pcm_val, mask = pcm_val + 0x84, 0xFF
    pcm_val = min(pcm_val, 32635 + 0x84)
    seg = _search(pcm_val, SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm_val >> (seg + 3)) & 0xF)) ^ mask


def ref_linear2alaw(pcm_val: int) -> int:
    """Sun g711.c A-law compressor (13-bit magnitude)."""
    pcm_val >>= 3
    if pcm_val >= 0:
        mask = 0xD5
    else:
        mask, pcm_val = 0x55, -pcm_val - 1
    seg = _search(pcm_val, SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= ((pcm_val >> 1) if seg < 2 else (pcm_val >> seg)) & 0x0F
    return aval ^ mask


def test_g711_encoders_match_reference_for_every_int16():
    x = np.arange(-32768, 32768, dtype=np.int16)
    xs = x.tolist()
    assert g711.linear_to_ulaw(x) == bytes(ref_linear2ulaw(v) for v in xs)
    assert g711.linear_to_alaw(x) == bytes(ref_linear2alaw(v) for v in xs)


def test_g711_sine_snr():
    t = np.arange(8000) / 8000
    x = (12000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    for enc, dec in ((g711.linear_to_ulaw, g711.decode_ulaw), (g711.linear_to_alaw, g711.decode_alaw)):
        y = dec(enc(x)).astype(float)
        snr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum((y - x) ** 2))
        assert snr > 35  # G.711's ~38 dB for a loud sine


# ------------------------------------------------------------------ make_decoder / interface


@pytest.mark.parametrize("name", ["PCMU", "pcmu", "Pcmu"])
def test_make_decoder_pcmu_case_insensitive(name):
    d = make_decoder(name, 8000)
    assert isinstance(d, Decoder)
    assert (d.rtp_clock_hz, d.sample_rate_hz, d.channels_out, d.errors) == (8000, 8000, 1, 0)
    out = d.decode(b"\x00\x80\xff")
    assert out.dtype == np.int16 and out.shape == (3,)
    assert out.tolist() == [-32124, 32124, 0]
    assert d.samples_for_rtp_ticks(160) == 160


def test_make_decoder_pcma():
    d = make_decoder("PCMA", 8000)
    assert d.decode(b"\xd5\x55").tolist() == [8, -8]
    assert d.decode(b"").shape == (0,)


@pytest.mark.parametrize("name", ["LPC", "G723", "AMR", "H264", "CN", "telephone-event", "xyz"])
def test_make_decoder_unknown_returns_none(name):
    assert make_decoder(name, 8000) is None


def test_comfort_noise_and_telephone_event_names():
    assert is_comfort_noise("CN") and is_comfort_noise("cn")
    assert not is_comfort_noise("PCMU")
    assert is_telephone_event("telephone-event") and is_telephone_event("TELEPHONE-EVENT")
    assert not is_telephone_event("CN")


# ------------------------------------------------------------------ L16


def test_l16_mono_big_endian():
    d = make_decoder("L16", 11025, 1)
    assert (d.rtp_clock_hz, d.sample_rate_hz) == (11025, 11025)
    assert d.decode(struct.pack(">3h", 1, -2, 32767)).tolist() == [1, -2, 32767]


def test_l16_stereo_downmixed_to_mono():
    d = make_decoder("l16", 16000, 2)
    payload = struct.pack(">6h", 100, 300, -100, -300, 32767, 32767)
    assert d.decode(payload).tolist() == [200, -200, 32767]


def test_l16_odd_length_is_rejected_and_counted():
    d = make_decoder("L16", 8000, 2)
    assert d.decode(b"\x00\x01\x00").shape == (0,)
    assert d.errors == 1


# ------------------------------------------------------------------ DVI4

IMA_STEPS = [
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60,
    66, 73, 80, 88, 97, 107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371,
    408, 449, 494, 544, 598, 658, 724, 796, 876, 963, 1060, 1166, 1282, 1411, 1552, 1707,
    1878, 2066, 2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358, 5894, 6484, 7132,
    7845, 8630, 9493, 10442, 11487, 12635, 13899, 15289, 16818, 18500, 20350, 22385, 24623,
    27086, 29794, 32767,
]  # fmt: skip
IMA_INDEX = [-1, -1, -1, -1, 2, 4, 6, 8] * 2


def ima_encode_dvi4_packets(
    x: np.ndarray, samples_per_packet: int, reconstruction: list[int] | None = None
) -> list[bytes]:
    """Reference IMA ADPCM encoder emitting RFC 3551 DVI4 packets (state in each header).

    ``reconstruction`` receives the encoder's own decoded values (its predictor track).
    """
    packets = []
    pred, index = 0, 0
    for start in range(0, len(x), samples_per_packet):
        header = struct.pack(">hBB", pred, index, 0)
        nibbles = []
        for s in x[start : start + samples_per_packet].tolist():
            step = IMA_STEPS[index]
            diff = s - pred
            code = 0
            if diff < 0:
                code, diff = 8, -diff
            vpdiff = step >> 3
            if diff >= step:
                code |= 4; diff -= step; vpdiff += step  # noqa: E702
            if diff >= step >> 1:
                code |= 2; diff -= step >> 1; vpdiff += step >> 1  # noqa: E702
            if diff >= step >> 2:
                code |= 1; vpdiff += step >> 2  # noqa: E702
            pred = max(-32768, pred - vpdiff) if code & 8 else min(32767, pred + vpdiff)
            index = min(88, max(0, index + IMA_INDEX[code]))
            nibbles.append(code)
            if reconstruction is not None:
                reconstruction.append(pred)
        body = bytes((nibbles[i] << 4) | nibbles[i + 1] for i in range(0, len(nibbles), 2))
        packets.append(header + body)
    return packets


@pytest.mark.parametrize("rate_hz", [8000, 16000])
def test_dvi4_decodes_synthesised_sine(rate_hz):
    n = rate_hz // 50
    t = np.arange(rate_hz) / rate_hz
    x = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    track: list[int] = []
    packets = ima_encode_dvi4_packets(x, n, track)
    d = make_decoder("DVI4", rate_hz)
    assert (d.rtp_clock_hz, d.sample_rate_hz) == (rate_hz, rate_hz)
    y = np.concatenate([d.decode(p) for p in packets])
    assert y.shape == x.shape and d.errors == 0
    # The decoder must reproduce the encoder's predictor exactly, sample for sample.
    assert y.tolist() == track
    # skip the first 10 ms while the step size adapts from index 0
    a, b = x[rate_hz // 100 :].astype(float), y[rate_hz // 100 :].astype(float)
    assert 10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)) >= 30


def test_dvi4_high_nibble_first_and_header_not_output():
    d = Dvi4Decoder("DVI4", 8000, 8000)
    # predictor 1000, index 0 (step 7): high nibble 0x4 adds 7 + (7 >> 3) = 7 -> 1007 and
    # moves the index to 2 (step 9); low nibble 0xC subtracts 9 + (9 >> 3) = 10 -> 997.
    out = d.decode(struct.pack(">hBB", 1000, 0, 0) + bytes([0x4C]))
    assert out.tolist() == [1007, 997]


def test_dvi4_rejects_short_or_bad_index():
    d = make_decoder("DVI4", 8000)
    assert d.decode(b"\x00\x00").shape == (0,)
    assert d.decode(struct.pack(">hBB", 0, 120, 0) + b"\x00").shape == (0,)
    assert d.errors == 2


def _rtp_payloads(pcap: Path) -> dict[tuple[int, int], list[bytes]]:
    scapy = pytest.importorskip("scapy.all")
    streams: dict[tuple[int, int], list[bytes]] = {}
    for pkt in scapy.PcapReader(str(pcap)):
        if scapy.UDP not in pkt or 5060 in (pkt[scapy.UDP].sport, pkt[scapy.UDP].dport):
            continue
        data = bytes(pkt[scapy.UDP].payload)
        if len(data) < 12 or data[0] >> 6 != 2:
            continue
        offset = 12 + 4 * (data[0] & 0x0F)
        ssrc = struct.unpack_from("!I", data, 8)[0]
        streams.setdefault((ssrc, data[1] & 0x7F), []).append(data[offset:])
    return streams


def test_dvi4_public_capture_matches_libavcodec_ima_wav():
    pcap = PUBLIC / "sip-rtp-dvi4.pcap"
    if not pcap.exists():
        pytest.skip("public captures not available")
    av = pytest.importorskip("av")
    streams = _rtp_payloads(pcap)
    assert sorted(pt for _, pt in streams) == [5, 6]
    for (ssrc, pt), payloads in streams.items():
        rate = 8000 if pt == 5 else 16000
        d = make_decoder("DVI4", rate)
        ours = [d.decode(p) for p in payloads]
        assert d.errors == 0
        assert sum(len(o) for o in ours) == len(payloads) * rate // 50
        # Independent decode: rewrite each packet as an IMA-WAV block (LE header, low nibble
        # first) for libavcodec's adpcm_ima_wav, which also outputs the header sample first.
        for payload, mine in zip(payloads[:60], ours):
            ctx = av.CodecContext.create("adpcm_ima_wav", "r")
            ctx.sample_rate, ctx.layout = rate, "mono"
            ctx.options = {"block_align": str(len(payload)), "bits_per_coded_sample": "4"}
            body = bytes(((b & 0x0F) << 4) | (b >> 4) for b in payload[4:])
            block = payload[1::-1] + payload[2:3] + b"\x00" + body
            frames = ctx.decode(av.Packet(block))
            theirs = np.concatenate([f.to_ndarray().ravel() for f in frames])
            assert theirs[0] == struct.unpack(">h", payload[:2])[0]
            assert np.array_equal(theirs[1:], mine)
