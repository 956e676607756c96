"""A HEP collector for tests that run it inside a network namespace: the agent's listener
feeding an engine until SIGTERM, then one JSON call record per line on stdout and the
counters as JSON on stderr. Usage: python -m tests.hep._hep_collect udp:HOST:PORT KEY"""

from __future__ import annotations

import json
import select
import signal
import sys
import tempfile
from collections import Counter

from agent.capture.hep import HepListener, parse_hep_listen
from agent.config import Config
from agent.pipeline.engine import Engine
from agent.pipeline.finishing import MediaMode


def main(listen: str, key: str) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    counters: Counter = Counter()
    calls = []
    with tempfile.TemporaryDirectory() as work:
        engine = Engine(Config(), calls.append, counters=counters, workdir=work, media=MediaMode.COUNTERS)
        listener = HepListener(parse_hep_listen(listen), counters, key.encode())
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        print("ready", file=sys.stderr, flush=True)
        while not stop:
            if poller.poll(100):
                listener.read(engine.feed_datagram)
        listener.read(engine.feed_datagram)
        engine.finish()
        listener.close()
    for call in calls:
        print(json.dumps(call.record, default=str))
    print(json.dumps(dict(counters)), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
