"""In-process scoring latency and the coefficient tables' memory.

Reproduce: python bench/scoring.py   (or: make bench; --quick for a smaller run)

Prints one JSON line per candidate count (1, 100, 1000; d = 32 per coordinate, synthetic
world features, every entity with a model): p50/p99 latency of ``Scorer.score`` of the
request as the server decodes it (``p50_ms``/``p99_ms``), of decoding and checking the
JSON body (``parse_*``) and of both (``parse_and_score_*``), and requests/s, beside the same candidates scored by the math core's batch path
(``build_dataset`` + ``GameModel.score_breakdown``) as the peer; then the same requests
naming candidates by id alone, their features registered once (``Scorer.register_items``,
what ``glmix serve`` does from the items topic), in process and over HTTP; then one line with the
resident memory and 1000-entity lookup latency of each coefficient table (in memory, and
RocksDB with a 100k-entity cache), each filled with 1M entities in its own process.
Long-lived objects are frozen out of the cyclic GC after setup (``gc.freeze``), as
``glmix serve`` does once its models are loaded, and again after the requests are built:
they belong to the load generator, which shares this process with the server. The same requests also go over HTTP to ``glmix serve``'s app on loopback, sent by a load
generator in another process (``bench/http_load.py``, aiohttp) at concurrency 1, 8 and 32
for 1000 candidates (1 for smaller requests). Last, the 1000-candidate requests with features
go to real ``glmix serve`` processes that load the same models from the embedded broker, with
``--workers 1`` and ``--workers 2`` (``scoring-http-serve`` lines): what one more core buys.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import ServingSettings, load_settings
from stream.gc_pause import cyclic_gc_paused, freeze_long_lived
from stream.kafka import EmbeddedBroker, producer_config
from stream.kafka.broker_process import free_port
from stream.kafka.clients import prepare_topics
from stream.model.dataset import build_dataset
from stream.model.export import initial_global_model_record
from stream.model.game import GameModel, RandomEffectModel
from stream.scoring.http import BackgroundServer, ScoringService, build_app
from stream.scoring.requests import decode_score_request
from stream.scoring.scorer import Scorer
from stream.synthetic import World, WorldSpec, labeled_impressions
from stream.tables.models import CoefficientTable, GlobalModelTable
from stream.tables.stored_table import StoredCoefficientTable

from run_all import start_glmix

REPRODUCE = "python bench/scoring.py"
CACHE_ENTITIES = 100_000
D = 32
HTTP_GOAL_P99_MS = {(1000, 1): 10.0}  # issue 24's aim: 1000 candidates with features, one request at a time
MEMBER_BAGS = ("member_title", "member_skills", "member_seniority", "member_location")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def load_over_http(url: str, bodies: list[str], concurrency: tuple[int, ...], requests: int) -> list[dict]:
    """Latency and requests/s of ``bodies`` sent by the load generator process at each ``concurrency``."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("\n".join(bodies))
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("http_load.py")), "--url", url, "--bodies",
                               fh.name, "--requests", str(requests), "--concurrency", *map(str, concurrency)],
                              check=True, capture_output=True, text=True)
    finally:
        Path(fh.name).unlink()
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def publish_models(bootstrap: str, overrides: dict[str, str], record: dict, means: dict[str, dict[str, np.ndarray]]) -> None:
    """The global model and every entity's coefficients on the broker, as the refit and the updaters publish them."""
    settings = load_settings(overrides={**overrides, "kafka.bootstrap_servers": bootstrap})
    prepare_topics(settings, bootstrap)
    producer = Producer(producer_config(settings.kafka))
    producer.produce(settings.topics.model_global, key=b"glmix",
                     value=make_codec("GlobalModel", settings.topics.model_global).encode(record))
    for name, by_entity in means.items():
        topic = settings.topics.coefficients(name)
        codec = make_codec("EntityModel", topic)
        for entity, m in by_entity.items():
            producer.produce(topic, key=entity.encode(), value=codec.encode({
                "coordinate": name, "entity_id": entity, "version": 1, "means": m.tolist(),
                "precision_kind": "DIAGONAL", "precision": np.ones(D).tobytes()}))
            producer.poll(0)
    producer.flush(60)


def serve_processes_over_http(bodies: list[str], requests: int, overrides: dict[str, str], record: dict,
                              means: dict[str, dict[str, np.ndarray]], workers: tuple[int, ...]) -> list[dict]:
    """The load generator against ``glmix serve --workers W`` processes that load the models from a broker."""
    results = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="glmix-bench-serve-") as logs:
        publish_models(broker.bootstrap_servers, overrides, record, means)
        for count in workers:
            port = free_port()
            sets = {**overrides, "serving.host": "127.0.0.1", "serving.port": str(port),
                    "serving.max_candidates": "1000", "serving.max_body_bytes": str(32 * 1024 * 1024),
                    "kafka.group_prefix": f"bench-serve-{uuid.uuid4().hex[:6]}"}
            server = start_glmix(["serve", "--workers", str(count), "--bootstrap-servers", broker.bootstrap_servers],
                                 sets, Path(logs) / f"serve-{count}-workers.log")
            try:
                wait_ready(f"http://127.0.0.1:{port}")
                for line in load_over_http(f"http://127.0.0.1:{port}", bodies, (1, 8, 32), requests):
                    results.append({"workers": count, **line})
            finally:
                server.terminate()
                server.wait(30)
    return results


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """Until 20 fresh connections in a row answer /readyz with 200 (they land on any of the workers)."""
    deadline, streak = time.monotonic() + timeout_s, 0
    while streak < 20:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                streak = streak + 1 if response.status == 200 else 0
        except OSError:
            streak = 0
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table", choices=("memory", "rocksdb"), help=argparse.SUPPRESS)
    parser.add_argument("--entities", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(json.dumps(table_memory(args.table, args.entities)))
        return
    model_overrides = {"model.coordinates.member.max_features": str(D), "model.coordinates.job.max_features": str(D)}
    settings = load_settings(overrides=model_overrides)
    world = World(WorldSpec(seed=1, members=300, jobs=1000, requests=400))
    impressions = [li.impression for li in labeled_impressions(world)]
    record = initial_global_model_record(impressions, settings.model)
    rng = np.random.default_rng(0)
    record["coefficients"] = rng.normal(size=len(record["coefficients"])).tolist()
    global_models = GlobalModelTable(settings.model)
    global_models.apply([record])
    model = global_models.current
    tables, effects, published = {}, {}, {}
    for name, entities in (("member", world.members), ("job", world.jobs)):
        ids = sorted(e.entity_id for e in entities)
        means = rng.normal(size=(len(ids), D))
        published[name] = dict(zip(ids, means))
        tables[name] = CoefficientTable(name, D)
        tables[name].apply([{"entity_id": e, "version": 1, "means": m.tolist()} for e, m in zip(ids, means)])
        effects[name] = RandomEffectModel(np.array(ids), means, np.ones_like(means))
    scorer = Scorer(settings.model, global_models, tables)
    freeze_long_lived()  # as glmix serve does once its models are loaded
    reference = GameModel("logistic", model.coefficients, effects)
    jobs = {j.entity_id: {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in j.bags.items()}
            for j in world.jobs}
    job_ids = sorted(jobs)
    requests = 50 if args.quick else 300
    limits = ServingSettings(max_candidates=1000, max_body_bytes=32 * 1024 * 1024)
    server = BackgroundServer(build_app(ScoringService(scorer, limits, lambda: None, lambda: True)))
    scorer.register_items(jobs)  # the item catalog: candidates named by id alone use these features
    for count in (1, 100, 1000):
        ours, parsing, both, peer, by_id = [], [], [], [], []
        batch = []  # the same requests for every path; each path runs them in a loop of its own, as a service would
        for r in range(requests):
            member = world.members[r % len(world.members)]
            member_bags = {b: [{"name": n, "term": t, "value": v} for n, t, v in f] for b, f in member.bags.items()}
            picked = rng.choice(len(job_ids), size=count, replace=False)
            batch.append((member, member_bags, [{"item_id": job_ids[i], "features": jobs[job_ids[i]]} for i in picked]))
        bodies = [json.dumps({"member_id": m.entity_id, "member_features": b, "candidates": c, "top_k": 10})
                  for m, b, c in batch]
        id_bodies = [json.dumps({"member_id": m.entity_id, "member_features": b,
                                 "candidates": [{"item_id": x["item_id"]} for x in c], "top_k": 10}) for m, b, c in batch]
        freeze_long_lived()  # the load generator's own requests are no garbage of the service's to rescan
        for raw in bodies:  # as the server answers: decode and check the body, score, free it, the collector paused
            with cyclic_gc_paused():
                started = time.perf_counter()
                request = decode_score_request(raw.encode(), limits)
                parsed = time.perf_counter()
                scorer.score(request.member_id, request.member_features, request.candidates, request.context,
                             request.top_k)
                done = time.perf_counter()
                del request
            parsing.append(parsed - started)
            ours.append(done - parsed)
            both.append(done - started)
        for member, member_bags, candidates in batch:
            named = [{"item_id": c["item_id"]} for c in candidates]
            started = time.perf_counter()
            scorer.score(member.entity_id, member_bags, named, top_k=10)
            by_id.append(time.perf_counter() - started)
        levels = (1, 8, 32) if count == 1000 else (1,)
        over_http = load_over_http(server.url, bodies, levels, requests)
        http_by_id = load_over_http(server.url, id_bodies, levels, requests)
        for member, member_bags, candidates in batch:
            rows = [{"member_id": member.entity_id, "item_id": c["item_id"], "features": {**member_bags, **c["features"]}}
                    for c in candidates]
            started = time.perf_counter()
            data = build_dataset(rows, np.zeros(count), model.global_index,
                                 {"member": ("member_id", model.coordinate_indices["member"]),
                                  "job": ("item_id", model.coordinate_indices["job"])})
            reference.score_breakdown(data)
            peer.append(time.perf_counter() - started)
        p50, p99 = percentiles(ours)
        parse_p50, parse_p99 = percentiles(parsing)
        both_p50, both_p99 = percentiles(both)
        peer_p50, peer_p99 = percentiles(peer)
        id_p50, id_p99 = percentiles(by_id)
        print(json.dumps({"bench": "scoring-in-process", "candidates": count, "dim": D, "requests": requests,
                          "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "requests_per_s": round(requests / sum(ours)),
                          "parse_p50_ms": round(parse_p50, 3), "parse_p99_ms": round(parse_p99, 3),
                          "parse_and_score_p50_ms": round(both_p50, 3), "parse_and_score_p99_ms": round(both_p99, 3),
                          "math_core_batch_p50_ms": round(peer_p50, 3), "math_core_batch_p99_ms": round(peer_p99, 3),
                          "goal_p99_ms": 2.0 if count == 1000 else None, "reproduce": REPRODUCE}), flush=True)
        print(json.dumps({"bench": "scoring-in-process-item-catalog", "candidates": count, "dim": D, "requests": requests,
                          "p50_ms": round(id_p50, 3), "p99_ms": round(id_p99, 3),
                          "requests_per_s": round(requests / sum(by_id)), "goal_p99_ms": 2.0 if count == 1000 else None,
                          "reproduce": REPRODUCE}), flush=True)
        for bench, results in (("scoring-http", over_http), ("scoring-http-item-catalog", http_by_id)):
            for result in results:
                print(json.dumps({"bench": bench, "candidates": count, "dim": D, **result,
                                  "client": "own process (bench/http_load.py), keep-alive",
                                  "goal_p99_ms": HTTP_GOAL_P99_MS.get((count, result["concurrency"])),
                                  "reproduce": REPRODUCE}), flush=True)
        if count == 1000:
            served = serve_processes_over_http(bodies, requests, model_overrides, record, published, workers=(1, 2))
    server.close()
    for result in served:
        print(json.dumps({"bench": "scoring-http-serve", "candidates": 1000, "dim": D, **result,
                          "server": "glmix serve processes", "cores": os.cpu_count(),
                          "client": "own process (bench/http_load.py), keep-alive",
                          "goal_p99_ms": HTTP_GOAL_P99_MS.get((1000, result["concurrency"])),
                          "reproduce": REPRODUCE}), flush=True)
    entities = 100_000 if args.quick else 1_000_000
    for kind in ("memory", "rocksdb"):
        done = subprocess.run([sys.executable, __file__, "--table", kind, "--entities", str(entities)],
                              check=True, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1], flush=True)


def resident_bytes() -> int:
    """This process's resident set now (VmRSS), so RocksDB's native memory counts too."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def table_memory(kind: str, entities: int) -> dict:
    """Fill one table with ``entities`` entities; its resident memory and the latency of 1000-entity lookups."""
    rng = np.random.default_rng(0)
    before = resident_bytes()
    with tempfile.TemporaryDirectory(prefix="glmix-bench-table-") as tmp:
        if kind == "memory":
            table = CoefficientTable("member", D)
        else:
            table = StoredCoefficientTable("member", D, tmp, cache_entities=CACHE_ENTITIES)
        block = rng.normal(size=(10_000, D))
        for start in range(0, entities, 10_000):
            table.apply([{"entity_id": f"m{start + i:08d}", "version": 1, "means": block[i]} for i in range(10_000)])
        latencies = []
        for _ in range(200):
            ids = [f"m{i:08d}" for i in rng.integers(0, entities, size=1000)]
            started = time.perf_counter()
            table.lookup(ids)
            latencies.append(time.perf_counter() - started)
        used = resident_bytes() - before
        p50, p99 = percentiles(latencies)
        line = {"bench": "coefficient-table", "table": kind, "entities": entities, "dim": D, "resident_bytes": used,
                "bytes_per_entity": round(used / entities), "means_bytes_per_entity": D * 8,
                "lookup_1000_uniform_p50_ms": round(p50, 3), "lookup_1000_uniform_p99_ms": round(p99, 3),
                "reproduce": REPRODUCE}
        if kind == "rocksdb":
            line["cache_entities"] = CACHE_ENTITIES
        table.close()
    return line

if __name__ == "__main__":
    main()
