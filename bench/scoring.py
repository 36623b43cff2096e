"""In-process scoring latency and the coefficient tables' memory.

Reproduce: python bench/scoring.py   (or: make bench; --quick for a smaller run)

Prints one JSON line per candidate count (1, 100, 1000; d = 32 per coordinate, synthetic
world features, every entity with a model): p50/p99 latency of ``Scorer.score`` and
requests/s, beside the same candidates scored by the math core's batch path
(``build_dataset`` + ``GameModel.score_breakdown``) as the peer; then one line with the
memory the in-memory coefficient table takes per entity, filled with 1M entities.
The same requests also go over HTTP to ``glmix serve``'s app on loopback (the client
runs in the same process, one keep-alive connection, so it shares the GIL).
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import tracemalloc

import numpy as np

from stream.config import ServingSettings, load_settings
from stream.model.dataset import build_dataset
from stream.model.export import initial_global_model_record
from stream.model.game import GameModel, RandomEffectModel
from stream.scoring.http import BackgroundServer, ScoringService, build_app
from stream.scoring.scorer import Scorer
from stream.scoring.tables import CoefficientTable, GlobalModelTable
from stream.synthetic import World, WorldSpec, labeled_impressions

REPRODUCE = "python bench/scoring.py"
D = 32
MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    settings = load_settings(overrides={"model.coordinates.member.max_features": str(D),
                                        "model.coordinates.job.max_features": str(D)})
    world = World(WorldSpec(seed=1, members=300, jobs=1000, requests=400))
    impressions = [li.impression for li in labeled_impressions(world)]
    record = initial_global_model_record(impressions, settings.model)
    rng = np.random.default_rng(0)
    record["coefficients"] = rng.normal(size=len(record["coefficients"])).tolist()
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    model = global_models.current
    tables, effects = {}, {}
    for name, entities in (("member", world.members), ("job", world.jobs)):
        ids = sorted(e.entity_id for e in entities)
        means = rng.normal(size=(len(ids), D))
        tables[name] = CoefficientTable(name, D)
        tables[name].apply([{"entity_id": e, "version": 1, "means": m.tolist()} for e, m in zip(ids, means)])
        effects[name] = RandomEffectModel(np.array(ids), means, np.ones_like(means))
    scorer = Scorer(settings.model, global_models, tables)
    reference = GameModel("logistic", model.coefficients, effects)
    jobs = {j.entity_id: {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in j.bags.items()}
            for j in world.jobs}
    job_ids = sorted(jobs)
    requests = 50 if args.quick else 300
    limits = ServingSettings(max_candidates=1000, max_body_bytes=32 * 1024 * 1024)
    server = BackgroundServer(build_app(ScoringService(scorer, limits, lambda: None, lambda: True)))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for count in (1, 100, 1000):
        ours, peer, over_http = [], [], []
        for r in range(requests):
            member = world.members[r % len(world.members)]
            member_bags = {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in member.bags.items()}
            picked = rng.choice(len(job_ids), size=count, replace=False)
            candidates = [{"item_id": job_ids[i], "features": jobs[job_ids[i]]} for i in picked]
            started = time.perf_counter()
            scorer.score(member.entity_id, member_bags, candidates, top_k=10)
            ours.append(time.perf_counter() - started)
            body = json.dumps({"member_id": member.entity_id, "member_features": member_bags, "candidates": candidates,
                               "top_k": 10})
            started = time.perf_counter()
            connection.request("POST", "/v1/score", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            over_http.append(time.perf_counter() - started)
            assert response.status == 200
            rows = [{"member_id": member.entity_id, "item_id": c["item_id"], "features": {**member_bags, **c["features"]}}
                    for c in candidates]
            started = time.perf_counter()
            data = build_dataset(rows, np.zeros(count), model.global_index,
                                 {"member": ("member_id", model.coordinate_indices["member"]),
                                  "job": ("item_id", model.coordinate_indices["job"])})
            reference.score_breakdown(data)
            peer.append(time.perf_counter() - started)
        p50, p99 = percentiles(ours)
        peer_p50, peer_p99 = percentiles(peer)
        http_p50, http_p99 = percentiles(over_http)
        print(json.dumps({"bench": "scoring-in-process", "candidates": count, "dim": D, "requests": requests,
                          "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "requests_per_s": round(requests / sum(ours)),
                          "math_core_batch_p50_ms": round(peer_p50, 3), "math_core_batch_p99_ms": round(peer_p99, 3),
                          "goal_p99_ms": 2.0 if count == 1000 else None, "reproduce": REPRODUCE}), flush=True)
        print(json.dumps({"bench": "scoring-http", "candidates": count, "dim": D, "requests": requests,
                          "p50_ms": round(http_p50, 3), "p99_ms": round(http_p99, 3),
                          "requests_per_s": round(requests / sum(over_http)), "client": "same process, keep-alive",
                          "goal_p99_ms": 20.0 if count == 1000 else None, "reproduce": REPRODUCE}), flush=True)
    connection.close()
    server.close()
    entities = 100_000 if args.quick else 1_000_000
    tracemalloc.start()
    table = CoefficientTable("member", D)
    block = rng.normal(size=(10_000, D))
    for start in range(0, entities, 10_000):
        table.apply([{"entity_id": f"m{start + i:08d}", "version": 1, "means": block[i]} for i in range(10_000)])
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"bench": "coefficient-table-memory", "entities": entities, "dim": D, "table_bytes": current,
                      "bytes_per_entity": round(current / entities), "means_bytes_per_entity": D * 8,
                      "reproduce": REPRODUCE}), flush=True)


if __name__ == "__main__":
    main()
