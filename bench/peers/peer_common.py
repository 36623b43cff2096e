"""What both peers of bench/join_peers.py share: the project's Avro values, the join's rules, progress lines.

The peers run in their own virtualenv (bench/join_peers.py builds it), without the ``stream`` package: they read
the packaged ``.avsc`` files with fastavro, as any consumer of the topics would. The join's rules come from the
benchmark as JSON, taken from the project's settings (``joiner.*``), so there is one source for them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
HEADER = 10  # the single-object magic and the writer schema's 8-byte CRC-64-AVRO fingerprint


def _plain(node: Any) -> Any:
    """``node`` without logical types: timestamps stay epoch milliseconds, as the project decodes them."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _inlined(node: Any, named: dict[str, Any]) -> Any:
    """``node`` with the first reference to each of ``named``'s types replaced by its definition (self-contained)."""
    if isinstance(node, str) and node in named:
        return named.pop(node)
    if isinstance(node, dict):
        return {k: _inlined(v, named) for k, v in node.items()}
    if isinstance(node, list):
        return [_inlined(v, named) for v in node]
    return node


class SingleObjectReader:
    """Decodes one packaged schema's Avro single-object values (the framing the project's topics carry).

    The schema is made self-contained (the shared NameTermValue type inlined), as the project fingerprints it.
    """

    def __init__(self, schema_dir: Path, name: str) -> None:
        named = {"io.glmix.NameTermValue": json.loads((schema_dir / "NameTermValue.avsc").read_text())}
        schema = _inlined(json.loads((schema_dir / f"{name}.avsc").read_text()), named)
        self.schema = parse_schema(_plain(schema), named_schemas={})
        self._header = MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(self.schema), "CRC-64-AVRO"))
        self.name = name

    def decode(self, value: bytes) -> dict[str, Any]:
        """The record of ``value``; a value of another framing or writer schema is an error (the data is ours)."""
        if value[:HEADER] != self._header:
            raise ValueError(f"{self.name}: not a single-object value of the packaged schema")
        return schemaless_reader(io.BytesIO(value[HEADER:]), self.schema, None)

    def symbols(self, field: str) -> list[str]:
        """The symbols of the enum field ``field`` (a type's position is its code)."""
        kind = next(f["type"] for f in self.schema["fields"] if f["name"] == field)
        return list(kind["symbols"])


@dataclass(frozen=True)
class Rules:
    """The join's rules as the joiner's settings give them (``joiner.*``), labels keyed by interaction type code."""

    window_ms: int
    lateness_ms: int
    retention_ms: int
    early_positives: bool
    labels: dict[int, float]

    @classmethod
    def parse(cls, text: str, type_symbols: list[str]) -> Rules:
        raw = json.loads(text)
        return cls(int(raw["attribution_window_ms"]), int(raw["allowed_lateness_ms"]), int(raw["emitted_retention_ms"]),
                   bool(raw["early_positives"]), {type_symbols.index(k): float(v) for k, v in raw["labels"].items()})


def example(impression: dict[str, Any], label: float, label_time: int, types: list[str]) -> dict[str, Any]:
    """The peers' output for one impression: the impression with its label (no indexing, no scores)."""
    return {"example_id": impression["impression_id"], "member_id": impression["member_id"],
            "item_id": impression["item_id"], "label": label, "event_time": impression["event_time"],
            "label_time": label_time, "interaction_types": types, "position": impression["position"],
            "random_bucket": impression["random_bucket"], "context": impression["context"],
            "features": impression["features"]}


class Progress:
    """Counts the input events the join step has taken and the examples it has emitted; says when it took the last.

    The line it prints (JSON, on stdout) is what the benchmark times a peer by: ``last_input_s`` is the wall clock
    (``time.time()``, comparable across processes) when the join step had taken ``expect`` events.
    """

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.events = 0
        self.examples = 0
        self.late = 0  # events a peer's windowing dropped as too late
        self.first_input_s: float | None = None

    def took(self, events: int = 1) -> None:
        if self.first_input_s is None:
            self.first_input_s = time.time()
        before = self.events
        self.events += events
        if before < self.expect <= self.events:
            print(json.dumps({"last_input_s": time.time(), "first_input_s": self.first_input_s,
                              "events": self.events, "examples": self.examples, "late_events": self.late}), flush=True)


def arguments(description: str) -> argparse.Namespace:
    """The command line both peers take from the benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--impressions", required=True)
    parser.add_argument("--interactions", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--schemas", required=True, type=Path)
    parser.add_argument("--rules", required=True, help="the joiner's settings as JSON")
    parser.add_argument("--expect", required=True, type=int, help="input events the benchmark produces")
    parser.add_argument("--guarantee", default="at-least-once", choices=["at-least-once", "exactly-once", "none"])
    return parser.parse_args()


def ready(what: str) -> None:
    """Tell the benchmark (on stderr, its log) that the peer holds its inputs and waits for data."""
    print(f"PEER READY {what}", file=sys.stderr, flush=True)
