"""Coefficient tables keep the highest version per entity; stale, duplicate and broken records change nothing."""

from __future__ import annotations

import numpy as np

from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.scoring.tables import CoefficientTable, GlobalModelTable


def _record(entity: str, version: int, means) -> dict:
    return {"entity_id": entity, "version": version, "means": list(means)}


def test_only_newer_versions_replace_an_entitys_means():
    table = CoefficientTable("member", 2)
    assert table.apply([_record("a", 2, [1, 1]), _record("b", 1, [2, 2]), _record("a", 1, [9, 9])]) == 2
    assert table.apply([_record("a", 2, [7, 7])]) == 0  # a duplicate
    assert table.apply([_record("a", 3, [3, 3]), _record("c", 1, [np.nan, 0]), _record("d", 1, [1, 2, 3])]) == 1
    means, versions = table.lookup(["a", "b", "zz"])
    assert means.tolist() == [[3, 3], [2, 2], [0, 0]] and versions.tolist() == [3, 1, 0]
    assert len(table) == 2


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
