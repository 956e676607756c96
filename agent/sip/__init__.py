"""SIP: message parsing, SDP, and the call tracker (dialog state machine)."""
