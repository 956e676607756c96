"""The batch forms of duplicate suppression agree with the per-packet ones: check_many with
is_duplicate (same answers, same state after), rtp_frames' keys with rtp_key."""

import random
import struct

import numpy as np
import pytest

from agent.capture.batches import group_records
from agent.net.dedup import Deduplicator, rtp_key
from agent.net.fastpath import rtp_frames


@pytest.mark.parametrize("seed", range(20))
def test_check_many_equals_is_duplicate(seed):
    rng = random.Random(seed)
    one, many = Deduplicator(window_ns=50), Deduplicator(window_ns=50)
    t = rng.randrange(1000)
    dups = 0
    for _run in range(30):
        n = rng.randrange(1, 80)
        stamps, keys = [], []
        for _ in range(n):
            t = max(0, t + rng.choice([0, 1, 5, 20, 49, 50, 51, 120]) - (rng.random() < 0.1) * 30)
            stamps.append(t)
            keys.append(rng.randrange(rng.choice([8, 1000])))
        expected = [one.is_duplicate(ts, key) for ts, key in zip(stamps, keys)]
        got = many.check_many(np.array(stamps, dtype=np.int64), np.array(keys, dtype=np.uint64)).tolist()
        assert got == expected
        assert (many._cur, many._prev, many._gen) == (one._cur, one._prev, one._gen)
        dups += sum(expected)
    assert dups > 0



@pytest.mark.parametrize("seed", range(10))
def test_runs_and_single_packets_mixed_equal_is_duplicate(seed):
    """The batch path checks runs while the frames it cannot take are checked one by one on
    the same table (runs spanning many generations, and runs inside one)."""
    rng = random.Random(100 + seed)
    one, mixed = Deduplicator(window_ns=50), Deduplicator(window_ns=50)
    t = rng.randrange(1000)
    for _run in range(60):
        n = rng.randrange(1, 120)
        stamps, keys = [], []
        for _ in range(n):
            t = max(0, t + rng.choice([0, 0, 1, 5, 20, 49, 50, 51, 120]) - (rng.random() < 0.1) * 30)
            stamps.append(t)
            keys.append(rng.randrange(rng.choice([8, 300, 1 << 63])))
        expected = [one.is_duplicate(ts, key) for ts, key in zip(stamps, keys)]
        if rng.random() < 0.5:
            got = mixed.check_many(np.array(stamps, dtype=np.int64), np.array(keys, dtype=np.uint64)).tolist()
        else:
            got = [mixed.is_duplicate(ts, key) for ts, key in zip(stamps, keys)]
        assert got == expected
        assert (mixed._cur, mixed._prev, mixed._gen) == (one._cur, one._prev, one._gen)

def _frame(ident: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0x1234) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00" + ip + udp + b"\xee" * 6   # + trailer


def test_rtp_frames_keys_equal_rtp_key_including_short_payloads():
    rng = random.Random(7)
    frames = []
    for i in range(200):
        size = rng.choice([12, 13, 14, 20, 160])
        payload = bytes([0x80, rng.randrange(128)]) + rng.randbytes(size - 2)
        frames.append((i, 1, _frame(rng.randrange(65536), payload)))
    batch = next(group_records(iter(frames)))
    fx = rtp_frames(batch.buf, batch.starts, batch.lens)
    assert fx is not None and fx.cand.all()
    for i in range(len(batch)):
        frame = batch.frame(i)
        ulen = (frame[38] << 8) | frame[39]
        assert int(fx.dedup_key[i]) == rtp_key((frame[18] << 8) | frame[19], frame[26:30], frame[30:34],
                                               frame[34:34 + ulen])
        assert (int(fx.seq[i]), int(fx.ssrc[i])) == struct.unpack_from("!H4xI", frame, 44)
