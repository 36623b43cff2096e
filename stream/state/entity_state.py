"""The binary layout of one coordinate's entity states: a fixed-size numpy record per entity.

Every state of a coordinate has the same size (DESIGN §5: compact, fixed layouts, never
pickle), so B states read by one multi-get become one structured array with a single
``np.frombuffer``, and are written back with one ``tobytes``. A full precision is stored
as its packed upper triangle. For the ``l2`` prior the state also holds a ring of the
entity's most recent events (features as float32), which the next update refits.

The first field is a layout tag derived from (dim, precision kind, window), so a state
written under another configuration is detected instead of misread.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from stream.model.packed import pack_upper, packed_diagonal, packed_size, unpack_upper
from stream.state.exceptions import StateLayoutError

NO_OFFSET = -1


@dataclass(frozen=True)
class StateLayout:
    """The shape of a coordinate's states: ``dim`` coefficients, full or diagonal precision, a window of events."""

    dim: int
    diagonal: bool
    window: int

    @property
    def precision_size(self) -> int:
        """Stored precision values: d (diagonal) or d(d+1)/2 (packed upper triangle)."""
        return self.dim if self.diagonal else packed_size(self.dim)

    @cached_property
    def tag(self) -> int:
        """A 32-bit fingerprint of the layout, stored in every state."""
        return zlib.crc32(f"glmix-state-v1:{self.dim}:{int(self.diagonal)}:{self.window}".encode())

    @cached_property
    def dtype(self) -> np.dtype:
        """The numpy record type of one state."""
        d, w = self.dim, self.window
        return np.dtype(
            [
                ("tag", "<u4"),
                ("window_size", "<i4"),
                ("version", "<i8"),
                ("last_offset", "<i8"),
                ("event_count", "<i8"),
                ("last_event_time", "<i8"),
                ("index_version", "<i8"),
                ("mean", "<f8", (d,)),
                ("precision", "<f8", (self.precision_size,)),
                ("window_features", "<f4", (w, d)),
                ("window_labels", "<f4", (w,)),
                ("window_offsets", "<f4", (w,)),
                ("window_weights", "<f4", (w,)),
                ("window_times", "<i8", (w,)),
            ]
        )

    @property
    def state_bytes(self) -> int:
        """Bytes one state takes in RocksDB (before RocksDB's own compression)."""
        return self.dtype.itemsize

    def new_states(self, count: int, prior_precision_diagonal: np.ndarray) -> np.ndarray:
        """``count`` never-updated states: zero mean, the new-entity prior, no events, no offset."""
        states = np.zeros(count, dtype=self.dtype)
        states["tag"] = self.tag
        states["version"] = 0
        states["last_offset"] = NO_OFFSET
        states["precision"] = self.pack_precision(np.broadcast_to(prior_precision_diagonal, (count, self.dim)))
        return states

    def decode(self, values: list[bytes | None], prior_precision_diagonal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """States from a multi-get (None: a new entity) and the mask of those found."""
        found = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        states = self.new_states(len(values), prior_precision_diagonal)
        if found.any():
            present = [v for v in values if v is not None]
            size = self.state_bytes
            if any(len(v) != size for v in present):
                raise StateLayoutError(
                    f"a stored state is not {size} bytes: the store was written with another layout or is corrupt"
                )
            stored = np.frombuffer(b"".join(present), dtype=self.dtype)
            if np.any(stored["tag"] != self.tag):
                raise StateLayoutError(
                    f"stored states have another layout than dim={self.dim}, diagonal={self.diagonal}, window={self.window}"
                )
            states[found] = stored
        return states, found

    def encode(self, states: np.ndarray) -> list[bytes]:
        """One value per state, for a WriteBatch."""
        return row_bytes(np.asarray(states, dtype=self.dtype))

    def pack_precision(self, precision: np.ndarray) -> np.ndarray:
        """(B, d) diagonals or (B, d, d) matrices -> the stored (B, precision_size) values.

        A diagonal given to a full layout becomes a diagonal matrix.
        """
        if self.diagonal:
            return precision if precision.ndim == 2 else np.diagonal(precision, axis1=1, axis2=2)
        if precision.ndim == 2:
            return packed_diagonal(precision)
        return pack_upper(np.ascontiguousarray(precision, dtype=np.float64))

    def unpack_precision(self, stored: np.ndarray) -> np.ndarray:
        """Stored values -> (B, d) diagonals or symmetric (B, d, d) matrices."""
        if self.diagonal:
            return np.array(stored, dtype=np.float64)
        return unpack_upper(np.ascontiguousarray(stored, dtype=np.float64), self.dim)


def row_bytes(rows: np.ndarray) -> list[bytes]:
    """Each row (first axis) of ``rows`` as its own bytes value, from one contiguous copy."""
    buffer = np.ascontiguousarray(rows).tobytes()
    size = len(buffer) // len(rows) if len(rows) else 0
    return [buffer[i : i + size] for i in range(0, len(buffer), size)] if size else [b""] * len(rows)
