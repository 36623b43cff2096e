"""Impressions and interactions decoded once, at the edge, into columns (DESIGN §8), whatever framing or writer schema.

The joiner, the backtest and the bootstrap all hand the join impressions as rows of a
:class:`~stream.codec.columnar.ColumnarBatch` (the joiner its interactions too): the
compiled decoder reads every value whose writer schema it has a program for; a value of
any other writer is decoded by the codec (fastavro) and re-encoded with the reader
schema, so it too becomes a row of a batch, and the rest of the path knows one representation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.codec.avro import RecordCodec, SingleObjectCodec
from stream.codec.columnar import FALLBACK_STATUSES, ColumnarBatch, ColumnarDecoder, decode_fallback
from stream.codec.columnar.batch import ScalarColumn, StringColumn
from stream.codec.validation import decoded_impressions, impression_problems, interaction_problems

_FALLBACK = [int(status) for status in FALLBACK_STATUSES]


@dataclass(frozen=True)
class DecodedRow:
    """Where one valid record's columns are: row ``row`` of ``batch``."""

    batch: ColumnarBatch
    row: int


def join_fields(rows: Sequence[DecodedRow]) -> list[dict[str, Any]]:
    """What the join reads of each row: impression id and event time, and an interaction's type symbol.

    Read a batch at a time (one slice of the id column, one ``tolist``), not row by row.
    """
    out: list[dict[str, Any]] = [{}] * len(rows)
    by_batch: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_batch.setdefault(id(row.batch), []).append(i)
    for positions in by_batch.values():
        batch = rows[positions[0]].batch
        at = np.array([rows[i].row for i in positions], dtype=np.int64)
        ids, times, types = (batch.columns.get(name) for name in ("impression_id", "event_time", "type"))
        assert isinstance(ids, StringColumn) and ids.present is None and isinstance(times, ScalarColumn)
        data = ids.data
        texts = [data[o : o + n].decode() for o, n in zip(ids.offsets[at].tolist(), ids.lengths[at].tolist())]
        fields = [{"impression_id": i, "event_time": t} for i, t in zip(texts, times.values[at].tolist())]
        if isinstance(types, ScalarColumn) and types.symbols is not None:
            symbols = types.symbols
            for record, code in zip(fields, types.values[at].tolist()):
                record["type"] = symbols[code]
        for i, record in zip(positions, fields):
            out[i] = record
    return out


Problems = Callable[[ColumnarBatch], dict[int, str]]


class RowDecoder:
    """Decodes batches of values as ``codec`` frames them: a valid row or a dead-letter reason per value.

    ``problems`` is the schema's validation rule on a decoded batch (see
    :mod:`stream.codec.validation`). The compiled program set follows the codec: a
    registry codec that learned a writer schema while decoding a fallback row gets a
    program for it from the next batch on.
    """

    def __init__(self, codec: RecordCodec, problems: Problems) -> None:
        self._codec = codec
        self._problems = problems
        self._reader = SingleObjectCodec(codec.schema)
        self._reader_decoder = ColumnarDecoder.of_codec(self._reader)
        self._known = len(codec.writers())
        self._decoder = ColumnarDecoder.of_codec(codec)

    def decode(self, values: Sequence[bytes | None]) -> list[DecodedRow | str]:
        """Per value, its row, or the one-line reason it must be dead-lettered (undecodable or invalid)."""
        if len(self._codec.writers()) != self._known:
            self._known = len(self._codec.writers())
            self._decoder = ColumnarDecoder.of_codec(self._codec)
        batch = self._decoder.decode(values)
        out: list[DecodedRow | str] = [""] * len(values)
        fallback = decode_fallback(self._codec, values, batch)
        for row, reason in batch.failures():
            if int(batch.status[row]) not in _FALLBACK:
                out[row] = reason
        for row, reason in fallback.failures.items():
            out[row] = reason
        _place(out, batch, np.flatnonzero(batch.ok), self._problems)
        if fallback.records:
            rows = sorted(fallback.records)
            again = self._reader_decoder.decode([self._reader.encode(fallback.records[row]) for row in rows])
            for j, reason in again.failures():  # fastavro read it, so only a value the reader cannot hold lands here
                out[rows[j]] = reason
            _place(out, again, np.flatnonzero(again.ok), self._problems, np.asarray(rows))
        return out


def impression_rows(records: Sequence[Mapping[str, Any]]) -> list[DecodedRow | str]:
    """Rows of Impression records (read from files, made in tests), each a row or the reason it is invalid.

    The records are encoded with the packaged schema and decoded like any batch.
    """
    batch = decoded_impressions(records)
    out: list[DecodedRow | str] = [""] * len(records)
    for row, reason in batch.failures():
        out[row] = reason
    _place(out, batch, np.flatnonzero(batch.ok), impression_problems)
    return out


def impression_decoder(codec: RecordCodec) -> RowDecoder:
    """The decoder of Impression values as ``codec`` frames them."""
    return RowDecoder(codec, impression_problems)


def interaction_decoder(codec: RecordCodec) -> RowDecoder:
    """The decoder of Interaction values as ``codec`` frames them."""
    return RowDecoder(codec, interaction_problems)


def _place(
    out: list[DecodedRow | str],
    batch: ColumnarBatch,
    rows: np.ndarray,
    check: Problems,
    positions: np.ndarray | None = None,
) -> None:
    """Put each decoded row of ``batch`` at its position in ``out``: its row if valid, else its problem."""
    problems = check(batch)
    for row in rows.tolist():
        at = row if positions is None else int(positions[row])
        out[at] = problems.get(row) or DecodedRow(batch, row)
