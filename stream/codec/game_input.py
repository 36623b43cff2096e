"""Photon-ML GAME input records: any Avro record schema with name–term–value bags, read as this project's rows.

Photon-ML's GAME drivers read any record schema that has a response, feature bags
(arrays of records with ``name``, ``term`` and ``value``), optional ``weight``,
``offset`` and ``uid``, and entity ids at top level or in ``metadataMap``
(``AvroDataReader`` and ``GameConverters``). This module reads such container files by
the mapping of :class:`~stream.config.GameInputSettings` into the rows the rest of the
package scores and trains on: impression-like dicts (``member_id``, ``item_id``,
``context``, ``features`` by model bag) beside arrays of responses, weights, offsets and
event times. A coordinate's id goes where its ``entity_field`` says (``member_id``,
``item_id`` or ``context:<key>``), so :func:`stream.config.settings.entity_of` and the
scorer find it as they find it in an impression.

Every file's schema is checked before its first record is read: a field the mapping
needs and the schema lacks (or holds with another type) is refused in one line naming
the field, the file and the setting. As in Photon-ML, an id is looked up at top level
first, then in the map; ids, uids and map values are read as strings (``userId: int``
gives ``"1131701"``), a null ``term`` is ``""``. Unlike Photon-ML, a (name, term) twice
in one bag adds up, as in every other path here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from stream.codec.exceptions import CodecError
from stream.config import Settings
from stream.config.settings import entity_of
from stream.progress import Progress

NUMERIC = ("int", "long", "float", "double")
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class GameInputError(CodecError):
    """GAME input files do not fit the mapping (a field missing or of another type, a bad record); says where."""


@dataclass(frozen=True)
class CoordinateIds:
    """Where one coordinate's entity id is read from (``id_field``) and where it goes in a row (``entity_field``)."""

    coordinate: str
    entity_field: str
    id_field: str


@dataclass(frozen=True)
class GameInputMapping:
    """The settings' mapping resolved: the record fields of every model bag, of every coordinate's id, and the rest."""

    response: str
    weight: str
    offset: str
    uid: str
    metadata_map: str
    event_time: str
    bags: Mapping[str, str]
    ids: Sequence[CoordinateIds]

    @classmethod
    def of(cls, settings: Settings) -> GameInputMapping:
        """The mapping of ``settings.game_input`` over every bag and coordinate of ``settings.model``."""
        game, model = settings.game_input, settings.model
        bags = dict.fromkeys(
            [*model.global_feature_bags, *(b for c in model.coordinates.values() for b in c.feature_bags)]
        )
        return cls(
            game.response,
            game.weight,
            game.offset,
            game.uid,
            game.metadata_map,
            game.event_time,
            {bag: game.bag_field(bag) for bag in bags},
            [CoordinateIds(name, c.entity_field, game.id_field(name, c)) for name, c in model.coordinates.items()],
        )

    def id_tags(self, row: Mapping[str, Any]) -> dict[str, str]:
        """A row's entity ids by id field (Photon-ML's id tags: ``{"userId": "17", ...}``)."""
        return {ids.id_field: entity_of(row, ids.entity_field) for ids in self.ids}


@dataclass
class GameRows:
    """Records read: impression-like ``rows`` and, per row, response (NaN: none), weight, offset, uid, event time."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    responses: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    uids: list[str | None] = field(default_factory=list)
    event_times: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        """The responses as an array (NaN where a record has none)."""
        return np.array(self.responses, dtype=np.float64)

    @property
    def weight_array(self) -> np.ndarray:
        """The weights as an array (1 where a record has none)."""
        return np.array(self.weights, dtype=np.float64)

    @property
    def offset_array(self) -> np.ndarray:
        """The offsets as an array (0 where a record has none)."""
        return np.array(self.offsets, dtype=np.float64)

    @property
    def has_responses(self) -> np.ndarray:
        """Which rows carry a response."""
        return ~np.isnan(self.labels)


@dataclass(frozen=True)
class _Layout:
    """What one file's schema holds of the mapping: the fields to read (None: absent and not required)."""

    path: str
    response: str | None
    response_required: bool
    weight: str | None
    offset: str | None
    uid: str | None
    metadata_map: str | None
    top_level_ids: Mapping[str, bool]
    event_time: str | None
    event_time_top_level: bool
    bag_terms: Mapping[str, bool]


def read_game_rows(
    paths: Sequence[str | Path],
    mapping: GameInputMapping,
    require_response: bool = True,
    require_time: bool = False,
    valid_labels: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: Progress | None = None,
) -> GameRows:
    """Every record of ``paths`` (see :func:`game_row_batches`) in one :class:`GameRows`."""
    whole = GameRows()
    for batch in game_row_batches(paths, mapping, require_response, require_time, valid_labels):
        for name in ("rows", "responses", "weights", "offsets", "uids", "event_times"):
            getattr(whole, name).extend(getattr(batch, name))
        if progress is not None:
            progress.advance(len(batch))
    return whole


def game_row_batches(
    paths: Sequence[str | Path],
    mapping: GameInputMapping,
    require_response: bool = True,
    require_time: bool = False,
    valid_labels: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 4096,
) -> Iterator[GameRows]:
    """The records of ``paths`` in batches of ``batch_size``, file by file, each file's schema checked first.

    ``require_response``: the schema must have the response field and every record a
    value (training); otherwise a file without one reads as responses of NaN (scoring).
    ``require_time``: the schema must carry ``event_time`` (a replay). ``valid_labels``
    (a loss's) says which responses are labels; a record with another is refused.
    """
    if require_time and not mapping.event_time:
        raise GameInputError(
            "GAME input records are replayed by their event time: set game_input.event_time to the field that holds it"
        )
    for path in paths:
        with _open(path) as fh:
            try:
                reader = fastavro.reader(fh)
            except (ValueError, EOFError) as exc:
                raise GameInputError(f"{path}: not an Avro container file ({exc})") from exc
            layout = _layout(str(path), reader.writer_schema, mapping, require_response, require_time)
            records = _records(reader, str(path))
            row = 0
            while chunk := list(islice(records, batch_size)):
                batch = GameRows()
                for record in chunk:
                    _add(batch, record, layout, mapping, row)
                    row += 1
                if valid_labels is not None:
                    labels = batch.labels
                    bad = np.flatnonzero(~valid_labels(labels))
                    if len(bad):
                        raise GameInputError(
                            f"{path}: record {row - len(chunk) + int(bad[0])}: response {labels[bad[0]]} "
                            "is not a label of the model's loss (model.loss)"
                        )
                yield batch


def _open(path: str | Path):
    if not Path(path).is_file():
        raise GameInputError(f"{path}: no such file")
    return open(path, "rb")


def _records(reader: Iterable[Any], path: str) -> Iterator[Mapping[str, Any]]:
    try:
        yield from reader
    except (ValueError, EOFError) as exc:
        raise GameInputError(f"{path}: cannot read it past a damaged block ({exc})") from exc


# --------------------------------------------------------------------------- schema


def _named_types(schema: Any, names: dict[str, Any]) -> dict[str, Any]:
    """Every named type (record, enum, fixed) defined in ``schema``, by full and by short name."""
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, names)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "error", "enum", "fixed") and "name" in schema:
            full = (
                schema["name"]
                if "." in schema["name"]
                else ".".join(filter(None, [schema.get("namespace"), schema["name"]]))
            )
            names[full] = names[full.rsplit(".", 1)[-1]] = schema
        for f in schema.get("fields", ()):
            _named_types(f["type"], names)
        for key in ("items", "values"):
            if key in schema:
                _named_types(schema[key], names)
        if isinstance(schema.get("type"), (dict, list)):
            _named_types(schema["type"], names)
    return names


def _resolve(schema: Any, names: Mapping[str, Any]) -> Any:
    """``schema`` with a name reference or a wrapped primitive (``{"type": "long", "logicalType": ...}``) resolved."""
    if isinstance(schema, str):
        return schema if schema in _PRIMITIVES else names.get(schema, schema)
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
        return schema["type"]
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
        return _resolve(schema["type"], names)
    return schema


def _branches(schema: Any, names: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The non-null types a field may hold, and whether it may be null."""
    types = schema if isinstance(schema, list) else [schema]
    resolved = [_resolve(t, names) for t in types]
    return [t for t in resolved if t != "null"], "null" in resolved


def _kind(schema: Any) -> str:
    """A resolved type's kind: a primitive's name, or record, array, map, enum, fixed."""
    return schema if isinstance(schema, str) else str(schema.get("type"))


def _describe(branches: list[Any]) -> str:
    return " or ".join(_kind(b) for b in branches) or "null"


def _layout(path: str, schema: Any, mapping: GameInputMapping, require_response: bool, require_time: bool) -> _Layout:
    """Check ``schema`` against ``mapping``: one line naming the field, the file and the setting when it does not fit."""
    names = _named_types(schema, {})
    top = _resolve(schema, names)
    if _kind(top) != "record":
        raise GameInputError(f"{path}: holds {_kind(top)} values, not records (GAME input is records)")
    fields = {f["name"]: f["type"] for f in top["fields"]}

    def scalar(name: str, role: str, key: str, kinds: tuple[str, ...], required: bool) -> str | None:
        if name not in fields:
            if required:
                raise GameInputError(f"{path}: no field {name!r} ({role}, {key})")
            return None
        branches, _ = _branches(fields[name], names)
        if not branches or any(_kind(b) not in kinds for b in branches):
            raise GameInputError(
                f"{path}: field {name!r} is {_describe(branches)}, not {' or '.join(kinds)} ({role}, {key})"
            )
        return name

    response = scalar(mapping.response, "the response", "game_input.response", NUMERIC, require_response)
    weight = scalar(mapping.weight, "the weight", "game_input.weight", NUMERIC, False)
    offset = scalar(mapping.offset, "the offset", "game_input.offset", NUMERIC, False)
    uid = scalar(mapping.uid, "the uid", "game_input.uid", ("string", "int", "long", "enum"), False)
    metadata_map = None
    if mapping.metadata_map in fields:
        branches, _ = _branches(fields[mapping.metadata_map], names)
        if [_kind(b) for b in branches] != ["map"]:
            raise GameInputError(
                f"{path}: field {mapping.metadata_map!r} is {_describe(branches)}, not a map (game_input.metadata_map)"
            )
        metadata_map = mapping.metadata_map
    id_kinds = ("string", "int", "long", "enum", "boolean")
    top_level_ids = {}
    for ids in mapping.ids:
        role = f"coordinate {ids.coordinate!r}'s entity id"
        key = f"game_input.ids.{ids.coordinate}"
        if ids.id_field in fields:
            scalar(ids.id_field, role, key, id_kinds, True)
        elif metadata_map is None:
            raise GameInputError(
                f"{path}: no field {ids.id_field!r} and no {mapping.metadata_map!r} map to find it in ({role}, {key})"
            )
        top_level_ids[ids.coordinate] = ids.id_field in fields
    event_time, time_top_level = None, False
    if require_time:
        if mapping.event_time in fields:
            scalar(mapping.event_time, "the event time", "game_input.event_time", ("int", "long"), True)
            time_top_level = True
        elif metadata_map is None:
            raise GameInputError(
                f"{path}: no field {mapping.event_time!r} and no {mapping.metadata_map!r} map to find it in "
                "(the event time, game_input.event_time)"
            )
        event_time = mapping.event_time
    bag_terms = {}
    for bag, name in mapping.bags.items():
        bag_terms[name] = _bag_has_term(path, name, fields, names, f"model bag {bag!r}", f"game_input.bags.{bag}")
    return _Layout(
        path,
        response,
        require_response,
        weight,
        offset,
        uid,
        metadata_map,
        top_level_ids,
        event_time,
        time_top_level,
        bag_terms,
    )


def _bag_has_term(
    path: str, name: str, fields: Mapping[str, Any], names: Mapping[str, Any], role: str, key: str
) -> bool:
    """Check that field ``name`` is a name–term–value bag; whether its items have a ``term`` field."""
    if name not in fields:
        raise GameInputError(f"{path}: no field {name!r} ({role}, {key})")
    branches, _ = _branches(fields[name], names)
    items = _resolve(branches[0]["items"], names) if [_kind(b) for b in branches] == ["array"] else None
    if items is None or _kind(items) != "record":
        raise GameInputError(
            f"{path}: field {name!r} is {_describe(branches)}, not an array of name-term-value records ({role}, {key})"
        )
    item_fields = {f["name"]: f["type"] for f in items["fields"]}
    for needed, kinds in (("name", ("string",)), ("value", NUMERIC)):
        found = _branches(item_fields[needed], names)[0] if needed in item_fields else []
        if not found or any(_kind(b) not in kinds for b in found):
            raise GameInputError(
                f"{path}: the items of field {name!r} have no {' or '.join(kinds)} {needed!r} ({role}, {key})"
            )
    return "term" in item_fields


# --------------------------------------------------------------------------- records


def _add(batch: GameRows, record: Mapping[str, Any], layout: _Layout, mapping: GameInputMapping, row: int) -> None:
    """Append ``record`` (row ``row`` of its file) to ``batch``; a record that cannot be used is refused in one line."""
    where = f"{layout.path}: record {row}"
    metadata = (record.get(layout.metadata_map) if layout.metadata_map else None) or {}
    features = {}
    for bag, name in mapping.bags.items():
        features[bag] = _bag(record.get(name), layout.bag_terms[name], where, name)
    out: dict[str, Any] = {"member_id": "", "item_id": "", "context": {}, "features": features}
    for ids in mapping.ids:
        value = record.get(ids.id_field) if layout.top_level_ids[ids.coordinate] else None
        if value is None:
            value = metadata.get(ids.id_field)
        if value is None or value == "":
            raise GameInputError(
                f"{where}: no id {ids.id_field!r} at top level or in {mapping.metadata_map!r} "
                f"(coordinate {ids.coordinate!r}, game_input.ids.{ids.coordinate})"
            )
        if ids.entity_field.startswith("context:"):
            out["context"][ids.entity_field.removeprefix("context:")] = str(value)
        else:
            out[ids.entity_field] = str(value)
    uid = record.get(layout.uid) if layout.uid else None
    out["impression_id"] = None if uid is None else str(uid)
    batch.rows.append(out)
    batch.responses.append(_number(record, layout.response, where, math.nan, required=layout.response_required))
    weight = _number(record, layout.weight, where, 1.0)
    if weight < 0:
        raise GameInputError(f"{where}: weight {weight} (game_input.weight): weights are >= 0")
    batch.weights.append(weight)
    batch.offsets.append(_number(record, layout.offset, where, 0.0))
    batch.uids.append(out["impression_id"])
    if layout.event_time is not None:
        batch.event_times.append(_event_time(record, metadata, layout, where))


def _number(record: Mapping[str, Any], name: str | None, where: str, default: float, required: bool = False) -> float:
    value = record.get(name) if name else None
    if value is None:
        if required:
            raise GameInputError(f"{where}: {name!r} is null (a training record needs its response)")
        return default
    number = float(value)
    if not math.isfinite(number):
        raise GameInputError(f"{where}: {name!r} is {number}")
    return number


def _bag(items: Sequence[Mapping[str, Any]] | None, has_term: bool, where: str, name: str) -> list[dict[str, Any]]:
    bag = []
    for item in items or ():
        value = float(item["value"])
        if not math.isfinite(value):
            raise GameInputError(f"{where}: feature {item['name']!r} of bag {name!r} is {value}")
        term = (item.get("term") if has_term else None) or ""
        bag.append({"name": item["name"], "term": term, "value": value})
    return bag


def _event_time(record: Mapping[str, Any], metadata: Mapping[str, Any], layout: _Layout, where: str) -> int:
    name = layout.event_time
    value = record.get(name) if layout.event_time_top_level and name else None
    if value is None and name:
        value = metadata.get(name)
    if isinstance(value, datetime):
        return int((value - _EPOCH).total_seconds() * 1000)
    try:
        return int(str(value)) if not isinstance(value, int) else value
    except ValueError:
        raise GameInputError(f"{where}: event time {name!r} is {value!r}, not epoch milliseconds") from None
