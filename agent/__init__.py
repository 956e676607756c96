"""CallN capture agent: rebuilds calls from SIP/RTP seen on a tap and delivers recordings."""

__version__ = "0.1.0"
