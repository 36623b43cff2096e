"""Compiled columnar decoding (DESIGN §8): a batch of framed Avro values into typed arrays, a status per row."""

from stream.codec.columnar.batch import (
    ColumnarBatch,
    FeatureBagsColumn,
    FieldColumn,
    ScalarColumn,
    StringColumn,
    StringMapColumn,
)
from stream.codec.columnar.decoder import (
    FALLBACK_STATUSES,
    ColumnarDecoder,
    FallbackResult,
    decode_fallback,
    feature_hash,
)
from stream.codec.columnar.plan import STATUS_TEXT, Status, UnsupportedSchemaError

__all__ = [
    "FALLBACK_STATUSES",
    "STATUS_TEXT",
    "ColumnarBatch",
    "ColumnarDecoder",
    "FallbackResult",
    "FeatureBagsColumn",
    "FieldColumn",
    "ScalarColumn",
    "Status",
    "StringColumn",
    "StringMapColumn",
    "UnsupportedSchemaError",
    "decode_fallback",
    "feature_hash",
]
