"""SRTP decryption cost in the render worker (issue 19).

Builds one call's raw media log (two directions of G.711, 20 ms packets, AES_CM_128_HMAC_SHA1_80
by default) encrypted with libsrtp, then measures in CPU time (process_time, not wall: the
machine is shared), side by side in one run:

- ``libsrtp alone``: ``Session.unprotect`` over the same packets in a bare loop (the floor);
- ``decrypt_raw_log``: the worker's step (raw log in, decrypted raw log out);
- ``sequence``: the worker's sequencing of the same call's plain log (``sequence_capture``),
  the step every call pays anyway, as the yardstick the decryption adds to.

Prints packets per CPU-second and audio-seconds per CPU-second (one audio-second = one second
of one direction: 50 packets) and the ratios.

Usage: python3 bench/srtp_rate.py [--seconds 600] [--suite AES_CM_128_HMAC_SHA1_80|AEAD_AES_128_GCM] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import struct
import sys
import tempfile
import time
from pathlib import Path

import pylibsrtp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.media.medialog import MediaLogWriter  # noqa: E402
from agent.media.srtp import decrypt_raw_log  # noqa: E402
from agent.media.stream import MediaPlan, sequence_capture  # noqa: E402
from agent.media.timeline import CodecInfo  # noqa: E402
from agent.sip.crypto import SUITES, KeyPeriod, parse_crypto  # noqa: E402

PACKETS_PER_S = 50


def build(raw: Path, plain: Path, seconds: int, suite: str) -> tuple[MediaPlan, list[bytes], bytes]:
    info = SUITES[suite]
    keys = [bytes((side * 7 + i) & 0xFF for i in range(info.key_bytes + info.salt_bytes)) for side in (0, 1)]
    profile = getattr(pylibsrtp.Policy, info.libsrtp_profile)
    tx = [pylibsrtp.Session(pylibsrtp.Policy(key=k, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                             srtp_profile=profile)) for k in keys]
    enc, clear = MediaLogWriter(raw), MediaLogWriter(plain)
    wire: list[bytes] = []
    payload = bytes(range(160))
    for n in range(seconds * PACKETS_PER_S):
        for side in (0, 1):
            packet = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, 0x1000 + side) + payload
            protected = tx[side].protect(packet)
            arrival_ns = n * 20_000_000 + side * 1_000_000
            enc.append(side, 0, 0, arrival_ns, 0, False, protected)
            clear.append(side, 0, 0, arrival_ns, 0, False, packet)
            if side == 0:
                wire.append(protected)
    enc.close()
    clear.close()
    periods = tuple([KeyPeriod(0, parse_crypto(f"1 {suite} inline:{base64.b64encode(k).decode()}"))] for k in keys)
    codecs = {d: {0: CodecInfo("PCMU", 8000)} for d in (0, 1)}
    plan = MediaPlan(codecs=codecs, labels=[(0, 0, "10.0.0.1:4000", "10.0.0.2:4000"),
                                            (1, 1, "10.0.0.2:4000", "10.0.0.1:4000")],
                     captured_packets=(seconds * PACKETS_PER_S,) * 2, srtp=periods)
    return plan, wire, keys[0]


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600, help="call length (both directions)")
    ap.add_argument("--suite", default="AES_CM_128_HMAC_SHA1_80", choices=[s for s, i in SUITES.items()
                                                                          if i.libsrtp_profile])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        raw, plain = tmp_path / "call.rtp", tmp_path / "plain.rtp"
        plan, wire, key0 = build(raw, plain, args.seconds, args.suite)
        packets = 2 * args.seconds * PACKETS_PER_S
        audio_s = 2 * args.seconds
        profile = getattr(pylibsrtp.Policy, SUITES[args.suite].libsrtp_profile)
        best = {"libsrtp alone": float("inf"), "decrypt_raw_log": float("inf"), "sequence": float("inf")}
        for _ in range(args.repeat):
            rx = pylibsrtp.Session(pylibsrtp.Policy(key=key0, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                                    srtp_profile=profile))
            # The bare loop decrypts one direction's packets: scaled to both for the comparison.
            best["libsrtp alone"] = min(best["libsrtp alone"], 2 * cpu(lambda: [rx.unprotect(p) for p in wire]))
            best["decrypt_raw_log"] = min(best["decrypt_raw_log"], cpu(
                lambda: decrypt_raw_log(raw, tmp_path / "out.rtp", plan)))
            best["sequence"] = min(best["sequence"], cpu(
                lambda: sequence_capture(plain, tmp_path / "ordered", plan)))
        print(f"{args.suite}, one call of {args.seconds} s both ways: {packets} packets, {audio_s} audio-s "
              f"(best of {args.repeat}, CPU time)")
        for name, seconds in best.items():
            print(f"  {name:16s} {seconds:7.3f} CPU-s  {packets / seconds:11,.0f} packets/CPU-s  "
                  f"{audio_s / seconds:9,.0f} audio-s/CPU-s")
        print(f"  decrypt_raw_log / libsrtp alone = {best['decrypt_raw_log'] / best['libsrtp alone']:.2f}; "
              f"decrypt_raw_log / sequence = {best['decrypt_raw_log'] / best['sequence']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
