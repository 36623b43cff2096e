"""Errors raised while encoding or decoding Avro records."""

from stream.errors import GlmixError


class CodecError(GlmixError):
    """Base class of codec errors."""


class SchemaNotFoundError(CodecError):
    """A schema was asked for by a name or fingerprint that is not known here."""


class DecodeError(CodecError):
    """Bytes could not be decoded into a record; ``reason`` says why in one line.

    Every decode failure, whatever its cause (bad header, unknown schema, truncated or
    corrupt body), raises this one type, so callers can dead-letter it with the reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EncodeError(CodecError):
    """A record does not match the schema it is being written with."""
