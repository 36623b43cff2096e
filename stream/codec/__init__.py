"""Avro schemas and codecs: single-object encoding, Schema Registry wire format, Photon-ML files."""

from stream.codec.avro import (
    DecodedBatch,
    KafkaMessage,
    RecordCodec,
    RegistryCodec,
    SingleObjectCodec,
    decode_batch,
    encode_batch,
    make_codec,
)
from stream.codec.exceptions import CodecError, DecodeError, EncodeError, SchemaNotFoundError
from stream.codec.schemas import AvroSchema, load_schema

__all__ = [
    "AvroSchema",
    "CodecError",
    "DecodeError",
    "DecodedBatch",
    "EncodeError",
    "KafkaMessage",
    "RecordCodec",
    "RegistryCodec",
    "SchemaNotFoundError",
    "SingleObjectCodec",
    "decode_batch",
    "encode_batch",
    "load_schema",
    "make_codec",
]
