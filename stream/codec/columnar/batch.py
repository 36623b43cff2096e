"""A decoded batch as columns: typed arrays, strings as (offset, length) into the batch buffer, maps as CSR.

Values of a row whose status is not OK are zeros or empty and mean nothing; its
map entries and features are not in the CSR tables at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stream.codec.columnar.plan import STATUS_TEXT, Status


class FieldColumn(Protocol):
    """What every column offers: row ``i``'s value as fastavro would have decoded it."""

    def value(self, row: int) -> Any: ...


@dataclass(frozen=True)
class ScalarColumn:
    """An int, long, boolean, float, double or enum field as one typed array (enums as symbol indices).

    ``present`` is the mask of an optional (``["null", T]``) field, None for a required one.
    """

    values: np.ndarray
    present: np.ndarray | None = None
    symbols: tuple[str, ...] = ()

    def value(self, row: int) -> Any:
        """Row ``row``'s value as a Python object (None when absent, the symbol for an enum)."""
        if self.present is not None and not self.present[row]:
            return None
        if self.symbols:
            return self.symbols[int(self.values[row])]
        return self.values[row].item()


@dataclass(frozen=True)
class StringColumn:
    """A string or bytes field as (offset, length) into the batch's ``data``; decoded only when asked."""

    data: bytes
    offsets: np.ndarray
    lengths: np.ndarray
    text: bool = True
    present: np.ndarray | None = None

    def value(self, row: int) -> str | bytes | None:
        """Row ``row``'s value: ``str`` for a string field, ``bytes`` for bytes, None when absent."""
        if self.present is not None and not self.present[row]:
            return None
        start = int(self.offsets[row])
        raw = self.data[start : start + int(self.lengths[row])]
        return raw.decode() if self.text else raw


@dataclass(frozen=True)
class StringMapColumn:
    """A map<string> field as CSR: row ``i``'s entries are ``row_offsets[i]:row_offsets[i+1]``, in wire order."""

    data: bytes
    row_offsets: np.ndarray
    key_offsets: np.ndarray
    key_lengths: np.ndarray
    value_offsets: np.ndarray
    value_lengths: np.ndarray

    def value(self, row: int) -> dict[str, str]:
        """Row ``row``'s map."""
        return {
            _text(self.data, self.key_offsets[e], self.key_lengths[e]): _text(
                self.data, self.value_offsets[e], self.value_lengths[e]
            )
            for e in range(int(self.row_offsets[row]), int(self.row_offsets[row + 1]))
        }


@dataclass(frozen=True)
class FeatureBagsColumn:
    """A map<array<NameTermValue>> field flattened to one entry per feature, CSR by row, in wire order.

    Features: row ``i``'s are ``row_offsets[i]:row_offsets[i+1]``; each has its bag, name
    and term as (offset, length) into ``data``, its value, and ``hashes``, FNV-1a 64 of
    (bag, name, term) (see ``stream.codec.columnar.feature_hash``). Bags, kept so that a
    bag without features survives: row ``i``'s are ``bag_row_offsets[i]:bag_row_offsets[i+1]``,
    bag ``b``'s features ``bag_feature_offsets[b]:bag_feature_offsets[b+1]``.
    """

    data: bytes
    row_offsets: np.ndarray
    bag_offsets: np.ndarray
    bag_lengths: np.ndarray
    name_offsets: np.ndarray
    name_lengths: np.ndarray
    term_offsets: np.ndarray
    term_lengths: np.ndarray
    values: np.ndarray
    hashes: np.ndarray
    bag_row_offsets: np.ndarray
    bag_key_offsets: np.ndarray
    bag_key_lengths: np.ndarray
    bag_feature_offsets: np.ndarray

    def text(self, offset: np.integer | int, length: np.integer | int) -> str:
        """The string at ``offset`` of the batch buffer."""
        return _text(self.data, offset, length)

    def value(self, row: int) -> dict[str, list[dict[str, Any]]]:
        """Row ``row``'s bags, shaped as fastavro decodes them."""
        return {
            _text(self.data, self.bag_key_offsets[b], self.bag_key_lengths[b]): [
                {
                    "name": _text(self.data, self.name_offsets[e], self.name_lengths[e]),
                    "term": _text(self.data, self.term_offsets[e], self.term_lengths[e]),
                    "value": float(self.values[e]),
                }
                for e in range(int(self.bag_feature_offsets[b]), int(self.bag_feature_offsets[b + 1]))
            ]
            for b in range(int(self.bag_row_offsets[row]), int(self.bag_row_offsets[row + 1]))
        }


def _text(data: bytes, offset: np.integer | int, length: np.integer | int) -> str:
    start = int(offset)
    return data[start : start + int(length)].decode()


@dataclass(frozen=True)
class ColumnarBatch:
    """One batch of values decoded to a reader schema: a status per row and one column per reader field.

    ``data`` is the batch's values concatenated, ``starts`` where each value begins in it
    (n + 1 entries). For a row that is not OK, ``error_at`` is the byte of the value where
    decoding stopped and ``error_field`` the field it was in (-1: the header).
    """

    schema_name: str
    data: bytes
    starts: np.ndarray
    status: np.ndarray
    error_at: np.ndarray
    error_field: np.ndarray
    writer: np.ndarray
    columns: Mapping[str, FieldColumn]
    writer_fields: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.status)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of the rows that decoded."""
        return self.status == Status.OK

    def reason(self, row: int) -> str | None:
        """One line saying why row ``row`` did not decode, or None if it did."""
        status = Status(int(self.status[row]))
        if status is Status.OK:
            return None
        where = ""
        field = int(self.error_field[row])
        if field >= 0:
            where = f" in field {self.writer_fields[int(self.writer[row])][field]!r}"
        length = int(self.starts[row + 1] - self.starts[row])
        return f"{self.schema_name}: {STATUS_TEXT[status]}{where} at byte {int(self.error_at[row])} of {length}"

    def failures(self, statuses: frozenset[Status] | None = None) -> list[tuple[int, str]]:
        """(row, reason) of every row that did not decode, or only of those with one of ``statuses``."""
        rows = np.flatnonzero(self.status != Status.OK)
        if statuses is not None:
            rows = rows[np.isin(self.status[rows], [int(s) for s in statuses])]
        return [(int(row), str(self.reason(int(row)))) for row in rows]

    def record(self, row: int) -> dict[str, Any]:
        """Row ``row`` as the dict fastavro decodes (for the rare row that must leave the columnar path)."""
        return {name: column.value(row) for name, column in self.columns.items()}
