"""A/B of the live updater between two source trees, interleaved on one broker in one run.

Reproduce: git archive <before-commit> | tar -x -C /tmp/before && python bench/updater_ab.py /tmp/before
(--quick: smaller workloads)

Each measurement is ``bench/pipeline.py``'s ``bench_updater`` (hot and cold, full and
diagonal precision) run in a subprocess of the tree under test, against the same
embedded broker, in the order A B B A so that a drift of the shared machine's load
falls on both sides. The ceiling (consume + compiled decode) is the one the after tree
measures. Prints one JSON line per measurement, then one summary line per workload
with each side's median events/s and the ratio after/before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from stream.kafka import EmbeddedBroker

HERE = Path(__file__).resolve().parent.parent
REPRODUCE = "python bench/updater_ab.py <before tree>"
RUN = (
    "import json, sys; sys.path.insert(0, 'bench'); import pipeline; "
    "print(json.dumps(pipeline.bench_updater(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "
    "int(sys.argv[5]), batch_size=int(sys.argv[6]), precision=sys.argv[7])))"
)


def measure(tree: Path, bootstrap: str, workload: tuple) -> dict:
    """One ``bench_updater`` run with ``tree``'s code; its JSON line."""
    args = [str(a) for a in workload]
    out = subprocess.run(
        [sys.executable, "-c", RUN, bootstrap, *args],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the source tree of the code before (e.g. a git archive)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sides = {"before": args.before.resolve(), "after": HERE}
    if args.quick:
        workloads = {"hot": ("hot", 1, 200, 10, 2000), "cold": ("cold", 2, 2000, 1, 2000)}
    else:
        workloads = {"hot": ("hot", 1, 1000, 20, 10_000), "cold": ("cold", 2, 20_000, 1, 10_000)}
    with EmbeddedBroker() as broker:
        for precision in ("full", "diagonal"):
            for name, workload in workloads.items():
                rates: dict[str, list[float]] = {"before": [], "after": []}
                ceiling = []
                for side in ("before", "after", "after", "before"):
                    line = measure(sides[side], broker.bootstrap_servers, (*workload, precision))
                    line.update(side=side, reproduce=REPRODUCE)
                    print(json.dumps(line), flush=True)
                    rates[side].append(line["updater_events_per_s"])
                    if side == "after":
                        ceiling.append(line["raw_ceiling_events_per_s"])
                before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
                top = max(ceiling)
                summary = {
                    "bench": f"updater-ab-{name}", "precision": precision, "before_events_per_s": round(before),
                    "after_events_per_s": round(after), "after_over_before": round(after / before, 3),
                    "compiled_ceiling_events_per_s": round(top), "before_over_ceiling": round(before / top, 3),
                    "after_over_ceiling": round(after / top, 3), "reproduce": REPRODUCE,
                }  # fmt: skip
                print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
