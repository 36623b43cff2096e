"""Which global fit the refit should publish: each candidate setting by backtest on the two worlds of the test suite.

Reproduce: python bench/refit_candidates.py   (about 5 minutes on 2 cores)

Prints one JSON line per world and ``refit.candidates`` setting (none = no refits): the published fits, and the
progressive AUC of the global model alone and of the full model (and of members' first examples), eight refits at
1 s latency, with the settings of ``tests/backtest/worlds.py``. These are the README's refit-candidates table.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.event_log import EventLog  # noqa: E402
from stream.backtest.replay import Backtest, BacktestOptions  # noqa: E402
from stream.synthetic import World, WorldSpec, event_stream, ratings_like  # noqa: E402
from stream.synthetic.sinks import write_avro_files  # noqa: E402
from tests.backtest.worlds import RATINGS_JOIN, backtest_settings, eight_refits  # noqa: E402

REPRODUCE = "python bench/refit_candidates.py"
WORLDS = {
    "ratings-like": (ratings_like(), RATINGS_JOIN),
    "vocabulary": (WorldSpec(seed=5, members=300, jobs=3000, requests=6000, emerging_terms=20,
                             mean_request_gap_ms=200), {}),
}


def _rounded(auc: float | None) -> float | None:
    return None if auc is None else round(auc, 4)


def main() -> None:
    for name, (spec, join) in WORLDS.items():
        with tempfile.TemporaryDirectory() as directory:
            write_avro_files(event_stream(World(spec)), directory)
            log = EventLog.from_paths([Path(directory) / "impressions.avro", Path(directory) / "interactions.avro"])
            for candidates in ("none", "residual", "standalone", "both"):
                settings = backtest_settings(**join, **({} if candidates == "none" else {"refit.candidates": candidates}))
                options = BacktestOptions(latency_ms=1000) if candidates == "none" else eight_refits(log)
                report = Backtest(settings, options).run(log.events).report
                published = Counter(r["candidate"] for r in report["refits"] if r["status"] == "published")
                first_history = report["entity_history"]["member"][0]  # members' first examples: the cold start
                first = first_history["variants"]
                print(json.dumps({"bench": "refit-candidates", "world": name, "candidates": candidates,
                                  "published": dict(published),
                                  "global_only_auc": round(report["variants"]["global"]["auc"], 4),
                                  "full_auc": round(report["variants"]["global+member+job"]["auc"], 4),
                                  "first_member_examples": {"history": first_history["history"],
                                                            "global_only_auc": _rounded(first["global"]["auc"]),
                                                            "full_auc": _rounded(first["global+member+job"]["auc"])},
                                  "reproduce": REPRODUCE}), flush=True)


if __name__ == "__main__":
    main()
