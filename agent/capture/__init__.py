"""Capture sources: pcap/pcapng files (replay) and live interfaces, yielding frames."""
