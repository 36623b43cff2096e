"""Coefficient tables (in memory, and on RocksDB with a hot cache) keep the highest version per entity."""

from __future__ import annotations

import numpy as np
import pytest

from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.tables.models import CoefficientTable, GlobalModelTable
from stream.tables.stored_table import StoredCoefficientTable


def _record(entity: str, version: int, means) -> dict:
    return {"entity_id": entity, "version": version, "means": list(means)}


@pytest.fixture(params=["memory", "rocksdb"])
def make_table(request, tmp_path):
    made = []

    def make(dim: int, keep_posteriors: bool = False, cache_entities: int = 2):
        if request.param == "memory":
            table = CoefficientTable("member", dim, keep_posteriors)
        else:  # a cache smaller than the data: lookups must also read RocksDB
            table = StoredCoefficientTable("member", dim, tmp_path, cache_entities, keep_posteriors)
        made.append(table)
        return table

    yield make
    for table in made:
        table.close()


def test_only_newer_versions_replace_an_entitys_means(make_table):
    table = make_table(2)
    assert table.apply([_record("a", 2, [1, 1]), _record("b", 1, [2, 2]), _record("a", 1, [9, 9])]) == 2
    assert table.apply([_record("a", 2, [7, 7])]) == 0  # a duplicate
    assert table.apply([_record("a", 3, [3, 3]), _record("c", 1, [np.nan, 0]), _record("d", 1, [1, 2, 3])]) == 1
    means, versions = table.lookup(["a", "b", "zz"])
    assert means.tolist() == [[3, 3], [2, 2], [0, 0]] and versions.tolist() == [3, 1, 0]
    assert len(table) == 2


def test_event_counts_follow_the_version_that_is_kept(make_table):
    """What the joiner reports entity history by: how many events the held model of each entity had absorbed."""
    table = make_table(2)
    table.apply([{**_record("a", 2, [1, 1]), "event_count": 7}, {**_record("b", 1, [2, 2]), "event_count": 3},
                 {**_record("a", 1, [9, 9]), "event_count": 99}, {**_record("c", 1, [0, 0]), "event_count": 1}])
    table.apply([{**_record("b", 2, [2, 2]), "event_count": 5}, {**_record("a", 2, [7, 7]), "event_count": 50}])
    assert table.event_counts(["a", "b", "c", "zz"]).tolist() == [7, 5, 1, 0]


def test_the_global_model_table_keeps_the_newest_usable_model():
    settings = load_settings()
    impressions = [{"features": {"job_title": [{"name": "title", "term": "nurse", "value": 1.0}]}}]
    first = initial_global_model_record(impressions, settings.model, version=1)
    table = GlobalModelTable(settings.model)
    assert table.apply([first]) and table.current.version == 1
    broken = dict(first, version=3, coefficients=[float("nan")] * len(first["coefficients"]))
    older = dict(first, version=0)
    assert not table.apply([broken, older])
    assert table.current.version == 1 and table.rejected == 1
    assert table.apply([dict(first, version=2)]) and table.current.version == 2


def test_posteriors_come_back_for_exploration(make_table):
    table = make_table(2, keep_posteriors=True)
    packed = np.array([2.0, 0.5, 3.0]).tobytes()  # upper triangle of [[2, .5], [.5, 3]]
    table.apply([{**_record("a", 1, [1, 2]), "precision_kind": "PACKED_UPPER", "precision": packed},
                 {**_record("b", 1, [0, 1]), "precision_kind": "DIAGONAL", "precision": np.array([4.0, 5.0]).tobytes()}])
    means, precisions, known = table.posteriors(["a", "b", "c"])
    assert known.tolist() == [True, True, False] and means[0].tolist() == [1, 2]
    assert precisions[0].tolist() == [[2, 0.5], [0.5, 3]] and precisions[1].tolist() == [[4, 0], [0, 5]]


def test_the_rocksdb_table_holds_more_entities_than_its_cache(tmp_path):
    table = StoredCoefficientTable("job", 3, tmp_path, cache_entities=10)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(500, 3))
    assert table.apply([_record(f"j{i}", 1, m) for i, m in enumerate(means)]) == 500
    ids = [f"j{i}" for i in rng.permutation(500)[:200]] + ["unknown"]
    got, versions = table.lookup(ids)
    assert np.array_equal(got[:-1], means[[int(e[1:]) for e in ids[:-1]]]) and versions[-1] == 0
    assert len(table) == 500 and len(table._cache) == 10
    table.lookup(["j1", "j2"])
    table.lookup(["j1"] + [f"j{i}" for i in range(100, 109)])  # j1 used again, j2 not: j2 is evicted first
    assert "j1" in table._cache and "j2" not in table._cache
    assert table.apply([_record("j7", 2, [9, 9, 9]), _record("j8", 1, [5, 5, 5])]) == 1  # j8 v1 is a duplicate
    assert table.lookup(["j7"])[0].tolist() == [[9, 9, 9]] and table.version("j8") == 1
    table.close()
    assert not table.path.exists()
