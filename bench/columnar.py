"""Impression decode: fastavro per record (the project's codec) against the compiled columnar decoder per batch.

Reproduce: python bench/columnar.py   (--records N, --repeats N)

The same synthetic impressions (``stream.synthetic``, ~13 name-term-value features each),
framed as the single-object codec frames them, decoded in memory both ways in this run
(best of ``--repeats``, the cyclic GC paused as ``decode_batch`` pauses it); every
columnar row is checked against fastavro's record first. Prints one JSON line for the
decode and one for numba's first call: in a fresh process with an empty cache (compile)
and again with that cache filled (load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from stream.codec import load_schema, make_codec
from stream.codec.columnar import ColumnarDecoder
from stream.gc_pause import cyclic_gc_paused
from stream.synthetic import World, WorldSpec, labeled_impressions

REPRODUCE = "python bench/columnar.py"
FIRST_CALL = """
import time
from stream.codec import load_schema, make_codec
from stream.codec.columnar import ColumnarDecoder
value = make_codec("Impression", "bench").encode({"impression_id": "i", "request_id": "r", "member_id": "m",
    "item_id": "j", "position": 0, "event_time": 0, "random_bucket": False, "features": {}, "context": {}})
decoder = ColumnarDecoder.single_object(load_schema("Impression"))
started = time.perf_counter()
decoder.decode([value])
print(time.perf_counter() - started)
"""


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``run``, the cyclic collector paused (bench/feature_lookup.py times with it too)."""
    best = np.inf
    for _ in range(repeats):
        with cyclic_gc_paused():
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
    return float(best)


def first_call_seconds(cache_dir: str) -> float:
    """Seconds of the decoder's first call in a new process whose numba cache is ``cache_dir``."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    world = World(WorldSpec(seed=3, members=500, jobs=300, requests=max(1, args.records // 5), items_per_request=5))
    impressions = [li.impression for li in labeled_impressions(world)][: args.records]
    codec = make_codec("Impression", "bench.impressions")
    values = [codec.encode(r) for r in impressions]
    decoder = ColumnarDecoder.single_object(load_schema("Impression"))
    batch = decoder.decode(values)
    assert batch.ok.all() and all(batch.record(i) == codec.decode(v) for i, v in enumerate(values))
    features = int(batch.columns["features"].row_offsets[-1])

    fastavro = best_seconds(lambda: [codec.decode(v) for v in values], args.repeats)
    columnar = best_seconds(lambda: decoder.decode(values), args.repeats)
    print(json.dumps({
        "bench": "columnar-decode", "schema": "Impression", "records": len(values),
        "ntv_features_per_record": round(features / len(values), 1),
        "value_bytes_per_record": round(sum(map(len, values)) / len(values), 1),
        "fastavro_us_per_record": round(fastavro / len(values) * 1e6, 3),
        "columnar_us_per_record": round(columnar / len(values) * 1e6, 3),
        "speedup": round(fastavro / columnar, 1), "repeats": args.repeats, "reproduce": REPRODUCE,
    }), flush=True)

    with tempfile.TemporaryDirectory(prefix="glmix-numba-") as cache_dir:
        cold = first_call_seconds(cache_dir)
        warm = first_call_seconds(cache_dir)
    print(json.dumps({
        "bench": "columnar-first-call", "numba_first_call_cold_cache_s": round(cold, 2),
        "numba_first_call_warm_cache_s": round(warm, 3), "reproduce": REPRODUCE,
    }), flush=True)


if __name__ == "__main__":
    main()
