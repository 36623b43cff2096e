"""The Avro schemas shipped inside the package, parsed once and looked up by name or fingerprint.

Each schema is kept self-contained (named types inlined) so that its parsing canonical
form, its CRC-64-AVRO fingerprint and the text registered with a Schema Registry all
describe the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, cast

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from stream.codec.exceptions import SchemaNotFoundError

EVENT_SCHEMAS = (
    "Impression",
    "Interaction",
    "LabeledExample",
    "EntityModel",
    "GlobalModel",
    "ScoredCandidate",
    "ScoreRequest",
    "ScoreResponse",
    "ItemFeatures",
)
PHOTON_SCHEMAS = ("TrainingExampleAvro", "BayesianLinearModelAvro", "ScoringResultAvro")

# Files that only define named types used by the others; parsed first.
_EVENT_BUILDING_BLOCKS = ("NameTermValue", "ScoredCandidate")
_PHOTON_BUILDING_BLOCKS = ("FeatureAvro", "NameTermValueAvro")


@dataclass(frozen=True)
class AvroSchema:
    """A parsed, self-contained Avro schema with its canonical form and 8-byte fingerprint.

    ``parsed`` keeps logical types (for container files and registries); ``plain`` is the
    same schema without them, which the codecs decode with so that timestamps stay
    epoch-millisecond ints on the hot path instead of becoming ``datetime`` objects.
    """

    name: str
    parsed: dict[str, Any]
    plain: dict[str, Any]
    canonical: str
    fingerprint: bytes
    text: str

    @classmethod
    def from_json(cls, schema: dict[str, Any] | str) -> AvroSchema:
        """Parse a self-contained schema (a dict or JSON text)."""
        if isinstance(schema, str):
            schema = json.loads(schema)
        parsed = cast(dict[str, Any], parse_schema(schema, named_schemas={}))
        plain = cast(dict[str, Any], parse_schema(_without_logical_types(schema), named_schemas={}))
        canonical = to_parsing_canonical_form(parsed)
        # fastavro prints the CRC-64-AVRO fingerprint as the little-endian byte sequence that
        # Avro single-object encoding puts on the wire.
        return cls(
            name=parsed["name"],
            parsed=parsed,
            plain=plain,
            canonical=canonical,
            fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
            text=json.dumps(schema),
        )

    def to_json(self) -> str:
        """The full JSON text (logical types and docs kept), for registering with a Schema Registry."""
        return self.text


def _without_logical_types(node: Any) -> Any:
    """The same schema with logical types dropped, so timestamps decode as plain epoch ints.

    Parsing canonical form ignores logical types, so the fingerprint is unchanged.
    """
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


def _inline_named(node: Any, blocks: dict[str, Any], defined: set[str]) -> Any:
    """Replace references to building blocks by their definition at the first use only.

    Avro allows a named type to be defined once and referenced by name afterwards, so
    this keeps the schema self-contained and valid (inlining every use would redefine it).
    """
    if isinstance(node, str):
        if node in blocks and node not in defined:
            defined.add(node)
            return _inline_named(blocks[node], blocks, defined)
        return node
    if isinstance(node, list):
        return [_inline_named(item, blocks, defined) for item in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            namespace = node.get("namespace", "")
            defined.add(f"{namespace}.{node['name']}" if namespace else node["name"])
        return {
            k: (v if k in ("name", "namespace", "doc", "default") else _inline_named(v, blocks, defined))
            for k, v in node.items()
        }
    return node


def _load_family(folder: str, blocks: tuple[str, ...], names: tuple[str, ...]) -> dict[str, AvroSchema]:
    root = resources.files("stream.codec").joinpath("schemas", *([folder] if folder else []))
    definitions = {}
    for block in blocks:
        block_json = json.loads(root.joinpath(f"{block}.avsc").read_text())
        definitions[f"{block_json['namespace']}.{block_json['name']}"] = block_json
    return {
        name: AvroSchema.from_json(
            _inline_named(json.loads(root.joinpath(f"{name}.avsc").read_text()), definitions, set())
        )
        for name in names
    }


@cache
def _catalog() -> dict[str, AvroSchema]:
    return {
        **_load_family("", _EVENT_BUILDING_BLOCKS, EVENT_SCHEMAS),
        **_load_family("photon", _PHOTON_BUILDING_BLOCKS, PHOTON_SCHEMAS),
    }


def load_schema(name: str) -> AvroSchema:
    """The packaged schema ``name`` (``Impression``, ``TrainingExampleAvro``, ...)."""
    try:
        return _catalog()[name]
    except KeyError:
        raise SchemaNotFoundError(
            f"no packaged schema named {name!r}; known: {', '.join(sorted(_catalog()))}"
        ) from None
