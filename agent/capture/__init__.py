"""Capture sources: pcap/pcapng files (replay) and live interfaces, yielding frames.

Entry points: ``read_capture`` (one file) and ``open_captures`` (files and
directories, merged by timestamp), both yielding ``(ts_ns, linktype, frame)``.
"""

from agent.capture.files import iter_capture_paths, open_captures
from agent.capture.pcapfile import read_capture

__all__ = ["iter_capture_paths", "open_captures", "read_capture"]
