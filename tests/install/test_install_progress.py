"""Progress bars: bytes read of the total (from the open files' offsets), then calls
rendered and delivered; nothing at all when stderr is not a terminal or the run is short."""

from __future__ import annotations

import io
import time
from collections import Counter

from agent.progress import Progress, ReadPosition
from tests.install._install_testlib import PCAPS


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_read_position_follows_open_files_and_counts_closed_ones(tmp_path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(b"x" * 10_000)
    b.write_bytes(b"y" * 5_000)
    position = ReadPosition([tmp_path])
    assert position.total == 15_000 and position.done_bytes() == 0
    with open(a, "rb", buffering=0) as fa:
        fa.read(4_000)
        assert position.done_bytes() == 4_000
    with open(b, "rb", buffering=0) as fb:
        fb.read(1_000)
        assert position.done_bytes() == 10_000 + 1_000      # a: seen, now closed = whole
    assert position.done_bytes() == 15_000


def test_bars_show_read_rendered_and_delivered_on_a_terminal(monkeypatch) -> None:
    import agent.progress as progress
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.05)
    monkeypatch.setattr(progress, "REFRESH_S", 0.05)
    counters = Counter()
    rendered = []
    out = _Terminal()
    capture = PCAPS / "multi_call.pcap"
    with Progress(captures=[capture], counters=counters, enabled=True, stream=out,
                  rendered=lambda: len(rendered), delivered=lambda: (counters["d"], 4)) as bars:
        with open(capture, "rb", buffering=0) as fh:
            fh.read(capture.stat().st_size // 2)
            time.sleep(0.3)
            assert "read:  50%" in out.getvalue()
        bars.reading_done()
        counters["calls.finished"] = 4
        rendered += [1, 2, 3]
        time.sleep(0.3)
        assert "rendered:  75%" in out.getvalue() and "3/4" in out.getvalue()
        rendered.append(4)
        counters["d"] = 4
    text = out.getvalue()
    assert "read: 100%" in text and "4 calls]" in text
    assert "rendered: 100%" in text and "delivered: 100%" in text and "4/4" in text


def test_no_bars_off_a_terminal_or_when_quiet_or_short(monkeypatch) -> None:
    quiet = _Terminal()
    with Progress(captures=[PCAPS / "multi_call.pcap"], counters=Counter(), enabled=False, stream=quiet):
        time.sleep(0.1)
    short = _Terminal()
    with Progress(captures=[PCAPS / "multi_call.pcap"], counters=Counter(), enabled=True, stream=short):
        pass                                              # done before SHOW_AFTER_S
    assert quiet.getvalue() == "" and short.getvalue() == ""
    piped = io.StringIO()                                 # not a terminal
    monkeypatch.setattr("sys.stderr", piped)
    with Progress(captures=[PCAPS / "multi_call.pcap"], counters=Counter(), enabled=True) as bars:
        assert not bars.enabled
