"""Feature lookup: today's Python resolver per record against the compiled hash table over decoded batches.

Reproduce: python bench/feature_lookup.py   (--records N, --repeats N, --index-from N)

The same synthetic impressions (``stream.synthetic``), indexed by a first global model
built from the first ``--index-from`` of them (few, so that later ones have unindexed
features: this world's vocabulary is small). The resolver (``FeatureResolver.index(..., with_missed=True)``, as the joiner calls it,
its per-feature cache warm) reads the decoded dicts; the compiled lookup
(``FeatureLookup.lookup``) reads the columnar decoder's batch of the same records, with
and without listing the missed features as strings (``missed_features``, what the joiner
packs). Both outputs are checked equal first. Batches of the whole set and of 100
records (light load); best of ``--repeats``, the cyclic GC paused. One JSON line per
batch size, and one for building the table of the index version.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from columnar import best_seconds

from stream.codec import load_schema, make_codec
from stream.codec.columnar import ColumnarDecoder, FeatureBagsColumn
from stream.config import load_settings
from stream.model.export import initial_global_model_record
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.hash_index import FeatureLookup
from stream.tables.indexing import FeatureResolver
from stream.tables.models import GlobalModelTable

REPRODUCE = "python bench/feature_lookup.py"


def check_same(lookup: FeatureLookup, resolver: FeatureResolver, features: FeatureBagsColumn, rows: list) -> None:
    got, want = lookup.lookup(features), resolver.index(rows, with_missed=True)
    for slot in range(lookup.slots):
        for a, b in zip(got.coo(slot), (want.rows[slot], want.columns[slot], want.values[slot])):
            assert np.array_equal(a, b)
    missed = got.missed_features()
    assert want.missed is not None and missed.keys == want.missed.keys
    assert np.array_equal(missed.per_slot, want.missed.per_slot)


def measure(resolver: FeatureResolver, lookup: FeatureLookup, batches: list, repeats: int) -> tuple[float, float, float]:
    """Seconds for all ``batches``: the resolver, the compiled lookup, and the lookup listing its misses as strings."""
    resolved = best_seconds(lambda: [resolver.index(rows, with_missed=True) for _, rows in batches], repeats)
    compiled = best_seconds(lambda: [lookup.lookup(features) for features, _ in batches], repeats)
    listed = best_seconds(lambda: [lookup.lookup(features).missed_features() for features, _ in batches], repeats)
    return resolved, compiled, listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--index-from", type=int, default=20)
    args = parser.parse_args()

    world = World(WorldSpec(seed=3, members=500, jobs=300, requests=max(1, args.records // 5), items_per_request=5))
    impressions = [li.impression for li in labeled_impressions(world)][: args.records]
    spec = load_settings().model
    table = GlobalModelTable(spec)
    table.apply([initial_global_model_record(impressions[: args.index_from], spec)])
    model = table.current
    assert model is not None
    codec = make_codec("Impression", "bench.impressions")
    values = [codec.encode(imp) for imp in impressions]
    decoder = ColumnarDecoder.single_object(load_schema("Impression"))
    resolver = FeatureResolver(model, spec)
    lookup = FeatureLookup.for_model(model, spec)
    build = best_seconds(lambda: FeatureLookup.for_model(model, spec), args.repeats)
    print(json.dumps({
        "bench": "feature-lookup-build", "index_version": model.index_version,
        "keys": len(lookup.table.keys), "bags": len(lookup.bags.keys), "slots": lookup.slots,
        "build_ms": round(build * 1e3, 2), "reproduce": REPRODUCE,
    }), flush=True)

    for batch_size in (len(values), 100):
        batches = [
            (decoder.decode(values[i : i + batch_size]).columns["features"],
             [imp["features"] for imp in impressions[i : i + batch_size]])
            for i in range(0, len(values), batch_size)
        ]  # fmt: skip
        for features, rows in batches:
            check_same(lookup, resolver, features, rows)  # also warms the resolver's per-feature cache
        resolved, compiled, listed = measure(resolver, lookup, batches, args.repeats)
        n_features = sum(int(features.row_offsets[-1]) for features, _ in batches)
        misses = sum(int(lookup.lookup(features).missed.sum()) for features, _ in batches)
        print(json.dumps({
            "bench": "feature-lookup", "records": len(values), "batch_records": batch_size,
            "features_per_record": round(n_features / len(values), 1),
            "missed_features_per_record": round(misses / len(values), 2),
            "resolver_us_per_record": round(resolved / len(values) * 1e6, 3),
            "compiled_us_per_record": round(compiled / len(values) * 1e6, 3),
            "compiled_with_missed_keys_us_per_record": round(listed / len(values) * 1e6, 3),
            "resolver_ns_per_feature": round(resolved / n_features * 1e9, 1),
            "compiled_ns_per_feature": round(compiled / n_features * 1e9, 1),
            "speedup": round(resolved / compiled, 1), "repeats": args.repeats, "reproduce": REPRODUCE,
        }), flush=True)


if __name__ == "__main__":
    main()
