"""The HEP listener on 127.0.0.1, UDP and TCP, fed by a sender in the test: the messages of
pcaps/hep_basic_udp.pcap sent live give the call its SPAN twin gives (basic_udp.pcap)."""

from __future__ import annotations

import random
import select
import socket
import time
from collections import Counter

import pytest

from agent.capture.hep import HepListener, parse_hep_listen
from agent.config import Config
from agent.net.hep import encode_hep3
from agent.pipeline.engine import Engine
from agent.pipeline.finishing import MediaMode
from agent.replay import replay
from tests.conftest import PCAPS

MAC_KEYS = {"callermacaddress", "destinationmacaddress", "capture_files", "media"}


def _hep_messages() -> list[bytes]:
    """The HEP3 payloads of the capture, in order (the capture's own reader and decoder)."""
    from agent.capture.batches import read_batches
    from agent.net.decode import FrameDecoder

    c = Counter()
    dec = FrameDecoder(c, dedup=False)
    out = []
    for batch in read_batches([PCAPS / "hep_basic_udp.pcap"], c):
        for i in range(len(batch)):
            d = dec.decode(int(batch.ts_ns[i]), batch.linktype, batch.frame(i))
            out.append(d.payload)
    return out


def _span_record(tmp_path) -> dict:
    calls = []
    replay([PCAPS / "basic_udp.pcap"], Config(), calls.append, workdir=tmp_path / "span",
           progress=False, media=MediaMode.COUNTERS)
    (call,) = calls
    return call.record


def _pump(listener: HepListener, engine: Engine, until, timeout_s: float = 20.0) -> None:
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        if poller.poll(100):
            listener.read(engine.feed_datagram)


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in MAC_KEYS}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_live_hep_call_equals_its_span_twin(tmp_path, transport):
    messages = _hep_messages()
    assert len(messages) == 309
    counters = Counter()
    calls = []
    engine = Engine(Config(), calls.append, counters=counters, workdir=tmp_path / "hep",
                    media=MediaMode.COUNTERS)
    listener = HepListener(parse_hep_listen(f"{transport}:127.0.0.1:0"), counters)
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
        sender.connect(listener.address)
        if transport == "udp":
            for i, m in enumerate(messages):
                sender.send(m)
                if i % 20 == 19:               # let the collector keep up (no loss on loopback)
                    _pump(listener, engine, lambda: counters["hep.messages"] > i, 5)
        else:
            # one stream, cut at random places, with garbage between two messages
            stream = b"".join(messages[:100]) + b"\x00garbage\x00" + b"".join(messages[100:])
            rnd = random.Random(19)
            pos = 0
            while pos < len(stream):
                n = rnd.randint(1, 3000)
                sender.sendall(stream[pos:pos + n])
                pos += n
        _pump(listener, engine, lambda: counters["hep.datagrams"] >= 309)
        sender.close()
        engine.finish()
    finally:
        listener.close()
    assert counters["hep.datagrams"] == 309
    if transport == "tcp":
        assert counters["hep.skip.stream_resync"] >= 1 and counters["hep.connections"] == 1
    (call,) = calls
    span = _span_record(tmp_path)
    assert _strip(call.record) == _strip(span)
    assert call.record["callermacaddress"] == ""


def test_listener_drops_and_counts_packets_without_the_auth_key(tmp_path):
    counters = Counter()
    got = []
    listener = HepListener(parse_hep_listen("udp:127.0.0.1:0"), counters, auth_key=b"k3y")
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.connect(listener.address)
        for key in (b"k3y", None, b"wrong", b"k3y"):
            sender.send(encode_hep3(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=5060, dst_port=5060,
                                    ts_ns=1_000_000_000, payload=b"OPTIONS sip:x SIP/2.0\r\n\r\n",
                                    auth_key=key))
        sender.send(b"not hep at all")
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        deadline = time.monotonic() + 10
        while counters["hep.messages"] < 5 and time.monotonic() < deadline:
            if poller.poll(100):
                listener.read(got.append)
    finally:
        listener.close()
    assert len(got) == 2
    assert counters["hep.skip.auth_failed"] == 2
    assert counters["hep.skip.not_hep3"] == 1


def test_listen_address_parsing():
    assert parse_hep_listen("udp:0.0.0.0:9060").port == 9060
    assert parse_hep_listen("tcp:[::1]:9061").host == "::1"
    for bad in ("sctp:0.0.0.0:9060", "udp:9060", "udp:0.0.0.0:99999", "udp:0.0.0.0:"):
        with pytest.raises(ValueError):
            parse_hep_listen(bad)
