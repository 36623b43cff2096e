"""Avro codecs for Kafka record values, and batch helpers for what ``consume()`` returns.

Two wire formats:

* Avro single-object encoding (the default): ``C3 01`` + the writer schema's 8-byte
  CRC-64-AVRO fingerprint + the Avro body. A reader knows which writer schemas it can
  resolve and rejects any other fingerprint with a :class:`DecodeError`.
* Confluent Schema Registry wire format, when a registry URL is configured: ``00`` + a
  4-byte big-endian schema id + the Avro body; writer schemas are fetched by id.

Either way, records are resolved from the writer's schema to the reader's (Avro schema
resolution), so an old reader reads a newer writer's records and the other way round.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from stream.codec.exceptions import DecodeError, EncodeError
from stream.codec.schemas import AvroSchema, load_schema
from stream.gc_pause import cyclic_gc_paused

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
REGISTRY_MAGIC = b"\x00"
_REGISTRY_HEADER = 5


class KafkaMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the codecs use (stand-ins work in unit tests)."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def error(self) -> Any: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


class RecordCodec(Protocol):
    """Turns records of one reader schema into bytes and back."""

    schema: AvroSchema

    def encode(self, record: Mapping[str, Any]) -> bytes: ...
    def decode(self, payload: bytes) -> dict[str, Any]: ...
    def header(self) -> bytes: ...
    @property
    def magic(self) -> bytes: ...
    def writers(self) -> dict[bytes, AvroSchema]: ...


def _write_body(schema: AvroSchema, record: Mapping[str, Any], out: io.BytesIO) -> None:
    try:
        schemaless_writer(out, schema.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise EncodeError(f"{schema.name}: record does not match the schema: {exc}") from exc


def _read_body(payload: bytes, start: int, writer: AvroSchema, reader: AvroSchema) -> dict[str, Any]:
    stream = io.BytesIO(payload)
    stream.seek(start)
    try:
        if writer.fingerprint == reader.fingerprint:
            record = schemaless_reader(stream, reader.plain, None)
        else:
            record = schemaless_reader(stream, writer.plain, reader.plain)
    except Exception as exc:  # fastavro raises many types for corrupt bytes
        raise DecodeError(f"{reader.name}: corrupt or truncated Avro body ({type(exc).__name__}: {exc})") from exc
    if stream.tell() != len(payload):
        raise DecodeError(f"{reader.name}: {len(payload) - stream.tell()} trailing bytes after the Avro body")
    if not isinstance(record, dict):
        raise DecodeError(f"{reader.name}: body is not a record")
    return record


class SingleObjectCodec:
    """Avro single-object encoding; reads any writer schema it has been told about.

    ``writer_schemas`` are extra schemas (older or newer versions of the reader schema)
    whose records this codec accepts and resolves to ``schema``.
    """

    def __init__(self, schema: AvroSchema, writer_schemas: Iterable[AvroSchema] = ()) -> None:
        self.schema = schema
        self._writers = {schema.fingerprint: schema}
        for writer in writer_schemas:
            self._writers[writer.fingerprint] = writer
        self._header = SINGLE_OBJECT_MAGIC + schema.fingerprint

    def header(self) -> bytes:
        """The framing every value this codec encodes starts with (magic + writer fingerprint)."""
        return self._header

    @property
    def magic(self) -> bytes:
        """The first bytes of every value of this framing."""
        return SINGLE_OBJECT_MAGIC

    def writers(self) -> dict[bytes, AvroSchema]:
        """The framing header (magic + fingerprint) of every writer schema this codec reads, and that schema."""
        return {SINGLE_OBJECT_MAGIC + fingerprint: writer for fingerprint, writer in self._writers.items()}

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with this codec's schema as the writer schema."""
        out = io.BytesIO()
        out.write(self._header)
        _write_body(self.schema, record, out)
        return out.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode one single-object-encoded value, resolving it to the reader schema."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise DecodeError(f"{self.schema.name}: value is {type(payload).__name__}, not bytes")
        if len(payload) < _SINGLE_OBJECT_HEADER or payload[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError(f"{self.schema.name}: not Avro single-object encoded (bad or missing C3 01 header)")
        writer = self._writers.get(bytes(payload[2:_SINGLE_OBJECT_HEADER]))
        if writer is None:
            raise DecodeError(
                f"{self.schema.name}: unknown writer schema fingerprint {bytes(payload[2:10]).hex()}; "
                "register the writer's schema with this reader to resolve it"
            )
        return _read_body(bytes(payload), _SINGLE_OBJECT_HEADER, writer, self.schema)


class RegistryCodec:
    """Confluent Schema Registry wire format through ``confluent_kafka.schema_registry``.

    The writer schema is registered under ``subject`` on first encode; on decode, writer
    schemas are fetched by id once and cached. ``client`` is the registry client.
    """

    def __init__(self, schema: AvroSchema, client: Any, subject: str) -> None:
        self.schema = schema
        self.client = client
        self._subject = subject
        self._schema_id: int | None = None
        self._writers: dict[int, AvroSchema] = {}

    def header(self) -> bytes:
        """The framing every value this codec encodes starts with (magic + schema id), registering the schema once."""
        if self._schema_id is None:
            from confluent_kafka.schema_registry import Schema

            self._schema_id = self.client.register_schema(self._subject, Schema(self.schema.to_json(), "AVRO"))
        return REGISTRY_MAGIC + int(self._schema_id).to_bytes(4, "big")

    @property
    def magic(self) -> bytes:
        """The first byte of every value of this framing."""
        return REGISTRY_MAGIC

    def writers(self) -> dict[bytes, AvroSchema]:
        """The framing header (magic + schema id) of every writer schema fetched so far, and that schema."""
        return {REGISTRY_MAGIC + int(i).to_bytes(4, "big"): writer for i, writer in self._writers.items()}

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the registered id of this codec's schema."""
        out = io.BytesIO()
        out.write(self.header())
        _write_body(self.schema, record, out)
        return out.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode one registry-framed value, resolving it to the reader schema."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise DecodeError(f"{self.schema.name}: value is {type(payload).__name__}, not bytes")
        if len(payload) < _REGISTRY_HEADER or payload[:1] != REGISTRY_MAGIC:
            raise DecodeError(f"{self.schema.name}: not in Schema Registry wire format (bad magic byte)")
        schema_id = int.from_bytes(payload[1:5], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            writer = self._fetch_writer(schema_id)
        return _read_body(bytes(payload), _REGISTRY_HEADER, writer, self.schema)

    def _fetch_writer(self, schema_id: int) -> AvroSchema:
        try:
            registered = self.client.get_schema(schema_id)
            writer = AvroSchema.from_json(registered.schema_str)
        except Exception as exc:  # registry errors, or a schema that is not Avro
            raise DecodeError(f"{self.schema.name}: cannot get writer schema id {schema_id}: {exc}") from exc
        self._writers[schema_id] = writer
        return writer


def make_codec(
    schema_name: str,
    topic: str,
    registry_url: str = "",
    registry_settings: Mapping[str, Any] | None = None,
    writer_schemas: Iterable[AvroSchema] = (),
) -> RecordCodec:
    """The codec for ``schema_name`` values on ``topic``: registry format if a URL is set."""
    schema = load_schema(schema_name)
    if not registry_url:
        return SingleObjectCodec(schema, writer_schemas)
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {**(registry_settings or {}), "url": registry_url}
    client = (
        SchemaRegistryClient.new_client(conf)
        if hasattr(SchemaRegistryClient, "new_client")
        else SchemaRegistryClient(conf)
    )
    return RegistryCodec(schema, client, subject=f"{topic}-value")


@dataclass
class DecodedBatch:
    """What :func:`decode_batch` made of one ``consume()`` result.

    ``records[i]`` came from ``messages[i]``; ``failures`` pairs each message that could
    not be decoded with the error saying why, ready for the dead-letter topic.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    messages: list[KafkaMessage] = field(default_factory=list)
    failures: list[tuple[KafkaMessage, DecodeError]] = field(default_factory=list)


def decode_batch(codec: RecordCodec, messages: Sequence[KafkaMessage]) -> DecodedBatch:
    """Decode every message of a ``consume()`` result; never raises for a bad record."""
    with cyclic_gc_paused():
        return _decode_all(codec, messages)


def _decode_all(codec: RecordCodec, messages: Sequence[KafkaMessage]) -> DecodedBatch:
    batch = DecodedBatch()
    decode = codec.decode
    for message in messages:
        err = message.error()
        if err is not None:
            batch.failures.append((message, DecodeError(f"Kafka error on message: {err}")))
            continue
        try:
            record = decode(message.value())  # type: ignore[arg-type]
        except DecodeError as exc:
            batch.failures.append((message, exc))
            continue
        batch.records.append(record)
        batch.messages.append(message)
    return batch


def encode_batch(codec: RecordCodec, records: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """Encode many records with one codec (one header, one schema lookup)."""
    encode = codec.encode
    return [encode(record) for record in records]
