"""A/B of the updater's input step in one process: fastavro + record dicts (before) vs the compiled scan (after).

Reproduce: mkdir /tmp/before && git archive dfaed32 stream/updaters/examples.py | tar -x -C /tmp/before &&
python bench/updater_input.py /tmp/before/stream/updaters/examples.py

Both sides turn the same batch of LabeledExample values (the member coordinate, d=32,
as bench/pipeline.py produces them) into the grouped, padded ``EntityBatch`` the update
takes: before, ``decode_batch`` (fastavro) + ``example_problem`` + ``valid_entity_batch``
over record dicts, loaded from the old ``examples.py``; after, ``ExampleReader.read`` +
``valid_entity_batch``. Hot (1,000 entities x 10 events) and cold (10,000 x 1) batches
of 10,000 values, sides interleaved, best of 7; one JSON line per workload.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from stream.codec import decode_batch, make_codec
from stream.config import load_settings
from stream.updaters.examples import ExampleReader, valid_entity_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline

REPRODUCE = "python bench/updater_input.py <the old stream/updaters/examples.py>"


class _Message:
    """What ``decode_batch`` reads of a consumed message."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_examples", type=Path, help="stream/updaters/examples.py of the code before")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("old_examples", args.old_examples)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    settings = load_settings(overrides={"model.coordinates.member.max_features": str(pipeline.D)})
    codec = make_codec("LabeledExample", "examples")
    reader = ExampleReader(codec, "member", pipeline.D)
    rng = np.random.default_rng(0)
    workloads = {"hot": rng.permutation(np.tile(np.arange(1000), 10)), "cold": np.arange(10_000)}
    for name, entities in workloads.items():
        messages = [_Message(v, i) for i, (_, v) in enumerate(pipeline.example_values(settings, entities, rng))]

        def before(messages: list = messages) -> int:
            decoded = decode_batch(codec, messages)
            kept = [(r, m) for r, m in zip(decoded.records, decoded.messages)
                    if old.example_problem(r, "member", pipeline.D) is None]  # fmt: skip
            batch, _ = old.valid_entity_batch([r for r, _ in kept], [m.offset() for _, m in kept], "member", pipeline.D)
            return int(batch.mask.sum())

        def after(messages: list = messages) -> int:
            offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
            read = reader.read([m.value() for m in messages], offsets)
            batch, _ = valid_entity_batch(read.examples)
            return int(batch.mask.sum())

        assert before() == after() == len(messages)
        best = {"before": float("inf"), "after": float("inf")}
        for _ in range(7):
            for side, step in (("before", before), ("after", after)):
                started = time.perf_counter()
                step()
                best[side] = min(best[side], time.perf_counter() - started)
        n = len(messages)
        print(json.dumps({
            "bench": f"updater-input-{name}", "values": n,
            "before_us_per_value": round(best["before"] / n * 1e6, 2),
            "after_us_per_value": round(best["after"] / n * 1e6, 2),
            "speedup": round(best["before"] / best["after"], 1), "reproduce": REPRODUCE,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
