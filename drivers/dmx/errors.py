"""The one exception every DMX decoder raises, so a receiver needs a single ``except``."""

from __future__ import annotations


class DmxProtocolError(ValueError):
    """A packet or frame that breaks its protocol, or a value the protocol cannot carry.

    The message says what is wrong (truncated, oversized, wrong id, version, vector, length,
    flags or an illegal field value), so a counted drop can be logged with a reason.
    """


class UnsupportedPacket(DmxProtocolError):
    """A well-formed packet of a kind Flytower does not handle (another Art-Net opcode, an
    sACN extended vector we do not use). Receivers ignore these rather than count them as
    malformed."""
