"""The compiled feature lookup gives exactly the resolver's columns and misses, collisions included."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.codec import load_schema, make_codec
from stream.codec.columnar import ColumnarDecoder, FeatureBagsColumn, feature_hash
from stream.codec.columnar.bags import bags_column
from stream.config import load_settings
from stream.errors import InvalidValueError
from stream.model.export import initial_global_model_record
from stream.model.features import FeatureIndex
from stream.scoring.requests import Feature
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.hash_index import FeatureLookup, KeyArrays
from stream.tables.indexing import FeatureResolver
from stream.tables.models import GlobalModel, GlobalModelTable

CODEC = make_codec("Impression", "tests.hash_index")
DECODER = ColumnarDecoder.single_object(load_schema("Impression"))
EMPTY_IMPRESSION = {"impression_id": "i", "request_id": "r", "member_id": "m", "item_id": "j", "position": 0,
                    "event_time": 0, "random_bucket": False, "features": {}, "context": {}}


def decoded(impressions: list[dict[str, Any]]) -> FeatureBagsColumn:
    batch = DECODER.decode([CODEC.encode(imp) for imp in impressions])
    assert batch.ok.all()
    return batch.columns["features"]


def ntv(name: str, term: str, value: float = 1.0) -> dict[str, Any]:
    return {"name": name, "term": term, "value": value}


@pytest.fixture(scope="module")
def world() -> tuple[list[dict[str, Any]], GlobalModel, Any]:
    """Synthetic impressions with empty bags, non-ASCII terms, a bag no slot reads, and an index of the first 20."""
    spec = load_settings(overrides={"model.coordinates.member.max_features": "6"}).model  # some features get dropped
    impressions = [li.impression for li in labeled_impressions(World(WorldSpec(seed=12, members=8, jobs=8, requests=15)))]
    impressions[0]["features"]["job_title"] = impressions[0]["features"]["job_title"] * 2  # repeated features
    impressions[1]["features"]["job_title"] = []  # an empty bag
    impressions[2]["features"] = {}  # no bags at all
    for i in (3, 4, 30, 31):  # non-ASCII terms, the first two indexed, the last two not
        impressions[i]["features"]["job_title"].append(ntv("title", f"ingénieur-数据-{i % 2}", 0.5))
        impressions[i]["features"]["member_skills"] = [ntv("skill", f"ř{i}"), ntv("(INTERCEPT)", "")]
    impressions[32]["features"]["unread_bag"] = [ntv("title", "nurse")]  # a bag no slot reads: neither placed nor missed
    table = GlobalModelTable(spec)
    table.apply([initial_global_model_record(impressions[:20], spec)])  # later impressions have unseen features
    assert table.current is not None
    return impressions, table.current, spec


def assert_as_resolver(lookup: FeatureLookup, features: FeatureBagsColumn, world) -> None:
    impressions, model, spec = world
    expected = FeatureResolver(model, spec).index([imp["features"] for imp in impressions], with_missed=True)
    got = lookup.lookup(features)
    for slot in range(lookup.slots):
        rows, columns, values = got.coo(slot)
        assert rows.tolist() == expected.rows[slot].tolist()
        assert columns.tolist() == expected.columns[slot].tolist()
        assert values.tolist() == expected.values[slot].tolist()
    missed, want = got.missed_features(), expected.missed
    assert want is not None and len(want.keys) > 0
    assert missed.rows.tolist() == want.rows.tolist() and missed.keys == want.keys
    assert missed.values.tolist() == want.values.tolist() and missed.per_slot.tolist() == want.per_slot.tolist()


def test_the_compiled_lookup_gives_the_resolvers_columns_and_misses(world):
    impressions, model, spec = world
    lookup = FeatureLookup.for_model(model, spec)
    assert lookup.version == model.index_version and lookup.slots == 1 + len(spec.coordinates)
    assert any(key[2].startswith("ingénieur") for key in (lookup.table.keys.triple(k) for k in range(len(lookup.table.keys))))
    assert_as_resolver(lookup, decoded(impressions), world)


def test_one_64_bit_hash_for_every_key_still_gives_exact_columns(world):
    """Every key and feature hashed to 0: each probe meets every other key, and only the bytes tell them apart."""
    impressions, model, spec = world
    built = FeatureLookup.for_model(model, spec)
    keys = dataclasses.replace(built.table.keys, hashes=np.zeros(len(built.table.keys), dtype=np.uint64))
    lookup = FeatureLookup.build(keys, built.columns, built.bags.keys, built.uses, built.version)
    features = decoded(impressions)
    assert_as_resolver(lookup, dataclasses.replace(features, hashes=np.zeros_like(features.hashes)), world)


def test_a_key_under_anothers_hash_is_never_a_false_hit():
    index = FeatureIndex(["b"], [("title", "nurse"), ("title", "doctor")], intercept=False)
    built = FeatureLookup.from_indexes([index])
    nurse = feature_hash("b", "title", "nurse")
    doctor = built.table.keys.triple(1)
    assert doctor == ("b", "title", "doctor")
    forged = dataclasses.replace(built.table.keys, hashes=np.array([np.uint64(1), np.uint64(nurse)], dtype=np.uint64))
    lookup = FeatureLookup.build(forged, built.columns, built.bags.keys, built.uses)  # doctor's column under nurse's hash
    features = decoded([{**EMPTY_IMPRESSION, "features": {"b": [ntv("title", "nurse"), ntv("title", "doctor")]}}])
    got = lookup.lookup(features)
    assert got.columns.tolist() == [[-1, -1]]  # neither found under the forged hashes, nurse not given doctor's column
    assert got.missed.tolist() == [True, True] and got.per_slot.tolist() == [2]
    assert built.lookup(features).columns.tolist() == [[0, 1]]


def test_a_key_twice_in_one_version_is_refused():
    keys = KeyArrays.of([("b", "title", "nurse"), ("b", "title", "nurse")])
    with pytest.raises(InvalidValueError, match="occurs twice"):
        FeatureLookup.build(keys, np.zeros((2, 1), dtype=np.int64), KeyArrays.of([("b", "", "")]), np.ones((1, 1), bool))


def test_a_spec_with_transforms_is_refused(world):
    _, model, _ = world
    spec = load_settings(overrides={"model.transforms.age.kind": "log"}).model
    with pytest.raises(InvalidValueError, match="transforms"):
        FeatureLookup.for_model(model, spec)


text = st.text(alphabet="ab é数\x00", max_size=3)
bag_names = st.sampled_from(["b0", "b1", "é", ""])
index_specs = st.tuples(
    st.lists(bag_names, min_size=1, max_size=3, unique=True),
    st.lists(st.tuples(text, text), max_size=12, unique=True),
    st.booleans(),
)
rows = st.lists(st.dictionaries(bag_names, st.lists(st.builds(ntv, text, text), max_size=6), max_size=4), max_size=5)


@settings(deadline=None)
@given(st.lists(index_specs, min_size=1, max_size=3), rows, st.sampled_from([None, 0, 3]))
def test_random_key_sets_resolve_as_the_feature_indexes_say(specs, bags, hash_mask):
    """Each feature gets, per index, ``index.column`` when its bag is the index's (the resolver's rule), else -1."""
    indexes = [FeatureIndex(b, keys, intercept=intercept) for b, keys, intercept in specs]
    lookup = FeatureLookup.from_indexes(indexes)
    features = decoded([{**EMPTY_IMPRESSION, "features": row} for row in bags])
    if hash_mask is not None:  # hashes that collide (all of them with 0): the bytes must decide
        keys = lookup.table.keys
        lookup = FeatureLookup.build(
            dataclasses.replace(keys, hashes=keys.hashes & np.uint64(hash_mask)), lookup.columns, lookup.bags.keys,
            lookup.uses,
        )
        features = dataclasses.replace(features, hashes=features.hashes & np.uint64(hash_mask))
    got = lookup.lookup(features)
    flat = [(row, bag, item) for row, bag_map in enumerate(bags) for bag, items in bag_map.items() for item in items]
    per_slot = np.zeros(len(indexes), dtype=np.int64)
    for e, (row, bag, item) in enumerate(flat):
        want = [index.column(item["name"], item["term"], admit=False) if bag in index.bag_names else None
                for index in indexes]
        assert got.columns[:, e].tolist() == [-1 if c is None else c for c in want]
        lacking = [bag in index.bag_names and c is None for index, c in zip(indexes, want)]
        assert got.missed[e] == any(lacking) and got.rows[e] == row
        per_slot += lacking
    assert got.per_slot.tolist() == per_slot.tolist()


def _as_request_features(rows_of_bags: list[dict[str, Any]]) -> list[dict[str, list[Feature]]]:
    return [{bag: [Feature(**item) for item in items] for bag, items in bags.items()} for bags in rows_of_bags]


@pytest.mark.parametrize("kind", ["dicts", "request Structs"])
def test_bags_in_python_index_through_the_lookup_as_the_resolver_indexes_them(world, kind):
    """A scoring request's bags (plain dicts, or the Structs msgspec decodes) give the decoder's column and the resolver's columns."""
    impressions, model, spec = world
    rows = [imp["features"] for imp in impressions]
    column = bags_column(rows if kind == "dicts" else _as_request_features(rows))
    want = decoded(impressions)
    for name in ("row_offsets", "bag_row_offsets", "bag_feature_offsets", "values", "hashes", "name_lengths", "term_lengths"):
        assert getattr(column, name).tolist() == getattr(want, name).tolist(), name
    assert [column.value(i) for i in range(len(rows))] == [want.value(i) for i in range(len(rows))]
    assert_as_resolver(FeatureLookup.for_model(model, spec), column, world)


@settings(deadline=None)
@given(rows, st.booleans())
def test_any_bags_make_the_decoders_column(bags, as_structs):
    """Empty bags and strings, non-ASCII, and the NUL byte that ends each string in the joined text (measured apart)."""
    column = bags_column(_as_request_features(bags) if as_structs else bags)
    want = decoded([{**EMPTY_IMPRESSION, "features": row} for row in bags])
    assert [column.value(i) for i in range(len(bags))] == [want.value(i) for i in range(len(bags))]
    assert column.hashes.tolist() == want.hashes.tolist()
    assert column.row_offsets.tolist() == want.row_offsets.tolist()


def test_defaults_of_left_out_terms_and_values():
    column = bags_column([{"b": [{"name": "n"}, {"name": "m", "term": "t"}]}])
    assert column.value(0) == {"b": [ntv("n", ""), ntv("m", "t")]}
    assert column.hashes.tolist() == [feature_hash("b", "n", ""), feature_hash("b", "m", "t")]
