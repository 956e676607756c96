"""Media: RTP streams, codecs, DTMF and the mixer that makes one recording per call."""
