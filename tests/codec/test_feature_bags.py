"""The packed feature bags of ``LabeledExample.unindexed_features``: the compiled batch packer against fastavro's."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from stream.codec.feature_bags import decode_bags, encode_bags, pack_feature_rows
from stream.tables.indexing import MissedFeatures

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_FEATURE = st.tuples(
    st.integers(0, 5),  # row
    st.sampled_from(["skills", "title", "", "naïve ✓"]) | _TEXT,  # bag: few names, so rows repeat them
    _TEXT,  # name
    _TEXT,  # term
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@given(st.lists(_FEATURE, max_size=40))
def test_each_row_packs_to_the_bytes_fastavro_writes_for_its_bags(features):
    n = 7
    rows = np.array([f[0] for f in features], dtype=np.int64)
    missed = MissedFeatures.of_keys(rows, [f[1:4] for f in features], np.array([f[4] for f in features]), np.zeros(1))
    packed, spans = pack_feature_rows(missed.strings, missed.refs, missed.rows, missed.values, n)
    for row in range(n):
        bags: dict[str, list[dict]] = {}  # a bag seen again after another keeps its first place, as a dict does
        for r, bag, name, term, value in features:
            if r == row:
                bags.setdefault(bag, []).append({"name": name, "term": term, "value": value})
        start, length = spans[:, row].tolist()
        if not bags:
            assert length == -1
            continue
        got = packed[start : start + length]
        assert got == encode_bags(bags)
        assert decode_bags(got) == bags


def test_a_batch_without_features_packs_nothing():
    missed = MissedFeatures.of_keys(np.zeros(0, dtype=np.int64), [], np.zeros(0), np.zeros(1))
    packed, spans = pack_feature_rows(missed.strings, missed.refs, missed.rows, missed.values, 3)
    assert packed == b"" and spans[1].tolist() == [-1, -1, -1]
