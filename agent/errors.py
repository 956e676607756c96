"""The one exception hierarchy for conditions a user must act on.

Malformed packets are never raised out of the engine: parsers raise the
``*ParseError`` types below, and their callers count and skip them.
"""


class AgentError(Exception):
    """Something the operator must fix (bad config, unreadable capture, auth refused)."""


class ConfigError(AgentError):
    """The configuration is invalid."""


class CaptureFormatError(AgentError):
    """A file is not a capture we can read at all."""


class ParseError(ValueError):
    """A packet or message could not be parsed; callers count and skip it."""


class SipParseError(ParseError):
    """A SIP message is malformed."""


class SdpParseError(ParseError):
    """An SDP body is malformed."""
