"""Feature index maps: bounded dimension, unseen-feature policies, sparse rows, saving."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.model import INTERCEPT_KEY, FeatureIndex

ROWS = [
    {"skills": [{"name": "skill", "term": "python", "value": 1.0}, {"name": "skill", "term": "sql", "value": 1.0}]},
    {"skills": [("skill", "python", 2.0)], "other": [("ignored", "", 5.0)]},
]


def test_admit_until_the_cap_then_drop_and_count():
    index = FeatureIndex(["skills"], capacity=3, unseen="admit")
    row = index.dense({"skills": [("skill", "a", 1.0), ("skill", "b", 1.0), ("skill", "c", 1.0)]})
    assert index.keys == [INTERCEPT_KEY, ("skill", "a"), ("skill", "b")]
    assert row.tolist() == [1.0, 1.0, 1.0]
    assert index.dropped == 1


def test_drop_policy_never_grows_the_index():
    index = FeatureIndex(["skills"], keys=[("skill", "python")], unseen="drop")
    rows = index.dense_rows(ROWS)
    assert rows.tolist() == [[1.0, 1.0], [1.0, 2.0]]
    assert index.dim == 2 and index.dropped == 1


def test_from_data_keeps_the_most_frequent_and_only_named_bags():
    index = FeatureIndex.from_data(ROWS, ["skills"], capacity=2)
    assert index.keys == [INTERCEPT_KEY, ("skill", "python")]


def test_sparse_rows_sum_duplicates():
    index = FeatureIndex(["skills"], keys=[("skill", "python"), ("skill", "sql")])
    matrix = index.sparse_rows([{"skills": [("skill", "python", 1.0), ("skill", "python", 2.0)]}])
    assert matrix.toarray().tolist() == [[1.0, 3.0, 0.0]]


def test_record_round_trip_rebuilds_the_same_columns():
    index = FeatureIndex.from_data(ROWS, ["skills"])
    again = FeatureIndex.from_record(index.to_record(), ["skills"])
    assert again.keys == index.keys
    np.testing.assert_array_equal(again.dense_rows(ROWS, admit=False), index.dense_rows(ROWS, admit=False))


def test_bad_policy_and_overfull_keys_are_refused():
    with pytest.raises(ValueError, match="unseen"):
        FeatureIndex(["a"], unseen="sometimes")
    with pytest.raises(ValueError, match="capacity"):
        FeatureIndex(["a"], keys=[("x", ""), ("y", "")], capacity=2)


feature_keys = st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["", "x", "y", "z"])), max_size=30)


@given(feature_keys, feature_keys, st.one_of(st.none(), st.integers(2, 12)), st.booleans())
def test_growth_keeps_every_column_in_place_and_appends_until_capacity(old, new, capacity, intercept):
    first = FeatureIndex(["bag"], intercept=intercept, capacity=capacity)
    for key in old:
        first.column(*key)
    grown, left_out = first.extended(new, version=first.version + 1)
    assert grown.keys[: first.dim] == first.keys and grown.extends(first)
    assert grown.version == first.version + 1
    fresh = [k for k in dict.fromkeys(new) if k not in first.keys]
    assert grown.keys[first.dim:] + left_out == fresh
    if left_out:
        assert capacity is not None and grown.dim == capacity
    assert first.extends(grown) == (grown.dim == first.dim)


def test_an_index_with_other_columns_does_not_extend():
    index = FeatureIndex(["bag"], keys=[("a", ""), ("b", "")])
    assert not FeatureIndex(["bag"], keys=[("b", ""), ("a", "")]).extends(index)
    assert FeatureIndex(["bag"], keys=[("a", ""), ("b", ""), ("c", "")]).extends(index)
