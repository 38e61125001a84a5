"""One error tree for everything the protocol package rejects.

Every codec in ``protocol`` raises only subclasses of :class:`ProtocolError` for bad input,
so a transport can catch one type, count it, and carry on.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised for malformed or invalid wire data."""

    #: Short machine-readable name used in counters, dead letters and terminal ERROR replies.
    code = "protocol_error"


class FramingError(ProtocolError):
    """A byte stream could not be cut into frames (bad header, oversize length, bad version)."""

    code = "bad_frame"


class ChecksumError(FramingError):
    """A frame's CRC-16/CCITT-FALSE did not match its contents."""

    code = "bad_crc"


class MessageError(ProtocolError):
    """A payload decoded but is not a valid message: wrong type, missing or unknown field.

    ``path`` names the offending field in JSONPath-like form (``$.records[3].amount``) when
    the decoder could tell, so operators can find the problem in a dead-letter entry.
    """

    code = "bad_message"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class TopicError(ProtocolError):
    """An MQTT topic or site id is not one onecard uses."""

    code = "bad_topic"


class AuthError(ProtocolError):
    """A terminal or edge failed the HELLO challenge–response."""

    code = "auth_failed"
