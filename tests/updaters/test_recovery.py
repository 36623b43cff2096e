"""Updater crash and restart over the kafka_bootstrap broker, with RocksDB stores on disk.

The linear loss makes sequential Bayesian updates exact whatever the batch boundaries,
so a run that lost its state must end with the same coefficients as one that did not.
"""

from __future__ import annotations

import shutil
import time

import msgspec
import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import Settings, load_settings
from stream.kafka import producer_config
from stream.runtime.runner import StageRunner
from stream.updaters.updater import CoordinateUpdater
from tests.helpers import read_topic

pytestmark = pytest.mark.kafka

D = 4
ENTITIES = [f"m{i:03d}" for i in range(12)]


def _settings(bootstrap: str, state_dir, suffix: str) -> Settings:
    return load_settings(overrides={
        "kafka.bootstrap_servers": bootstrap, "kafka.group_prefix": f"glmix-{suffix}", "state_dir": str(state_dir), "model.loss": "linear",
        "topics.examples_by_member": f"ex-{suffix}", "topics.coefficients_prefix": f"coef-{suffix}-",
        "topics.dead_letter": f"dlq-{suffix}", "model.coordinates.member.max_features": str(D),
        "model.coordinates.member.batch_size": "50", "model.coordinates.member.batch_time_ms": "50",
        "model.coordinates.member.gradient_tolerance": "1e-12",
        # the mock cluster waits a whole session timeout for a closed member before rebalancing
        "kafka.consumer.session.timeout.ms": "3000", "kafka.consumer.heartbeat.interval.ms": "500",
    })


def _produce_examples(settings: Settings, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    codec = make_codec("LabeledExample", settings.topics.examples_by_member)
    producer = Producer(producer_config(settings.kafka))
    truth = {e: rng.normal(size=D) for e in ENTITIES}
    for _ in range(n):
        member = ENTITIES[int(rng.integers(len(ENTITIES)))]
        x = rng.normal(size=D).astype(np.float32)
        record = {
            "example_id": "x", "member_id": member, "item_id": "j", "label": float(x @ truth[member] + rng.normal()),
            "event_time": 0, "label_time": 0, "scores": {"global": 0.1}, "global_features": {"indices": b"", "values": b""},
            "coordinates": {"member": {"entity_id": member, "dense": x.tobytes()}},
        }
        producer.produce(settings.topics.examples_by_member, key=member.encode(), value=codec.encode(record))
    producer.flush()


def _run_until(updater: CoordinateUpdater, examples: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while updater.stats.examples < examples:
        if time.monotonic() > deadline:
            raise AssertionError(f"updater absorbed {updater.stats.examples} of {examples} examples in {timeout_s}s")
        updater.step()


def _latest_means(settings: Settings, bootstrap: str) -> dict[str, tuple[int, np.ndarray]]:
    codec = make_codec("EntityModel", settings.topics.coefficients("member"))
    latest: dict[str, tuple[int, np.ndarray]] = {}
    for m in read_topic(bootstrap, settings.topics.coefficients("member")):
        r = codec.decode(m.value())
        if r["entity_id"] not in latest or r["version"] > latest[r["entity_id"]][0]:
            latest[r["entity_id"]] = (r["version"], np.array(r["means"]))
    return latest


@pytest.fixture
def reference(kafka_bootstrap, tmp_path, unique_name):
    """Coefficients after one uninterrupted run over all 600 examples."""
    settings = _settings(kafka_bootstrap, tmp_path / "reference", f"ref-{unique_name}")
    for seed in (1, 2, 3):
        _produce_examples(settings, seed, 200)
    updater = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(updater, 600)
    updater.close()
    return _latest_means(settings, kafka_bootstrap)


def test_a_lost_or_stale_store_is_restored_from_the_changelog(kafka_bootstrap, tmp_path, unique_name, reference):
    settings = _settings(kafka_bootstrap, tmp_path / "state", unique_name)
    _produce_examples(settings, 1, 200)
    first = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(first, 200)
    first.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "state", snapshot)

    _produce_examples(settings, 2, 200)
    second = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(second, 200)
    second.close()
    # crash after the offset commit but before the write: the store is behind the committed offsets
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(snapshot, tmp_path / "state")

    _produce_examples(settings, 3, 200)
    third = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(third, 200)
    third.close()
    assert third.stats.restored_entities == len(ENTITIES)
    latest = _latest_means(settings, kafka_bootstrap)
    assert latest.keys() == reference.keys()
    for entity, (_, means) in latest.items():
        assert np.allclose(means, reference[entity][1], atol=1e-8), entity

    # and with no store at all
    shutil.rmtree(tmp_path / "state")
    _produce_examples(settings, 4, 50)
    fourth = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(fourth, 50)
    fourth.close()
    assert fourth.stats.restored_entities == len(ENTITIES)
    after = _latest_means(settings, kafka_bootstrap)
    assert all(after[e][0] >= latest[e][0] for e in ENTITIES)


def test_replayed_examples_are_absorbed_once(kafka_bootstrap, tmp_path, unique_name):
    settings = _settings(kafka_bootstrap, tmp_path / "state", unique_name)
    _produce_examples(settings, 5, 150)
    first = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(first, 150)
    first.close()
    published = len(read_topic(kafka_bootstrap, settings.topics.coefficients("member")))

    # a crash before any offset commit: a group with no committed offsets restarts from the beginning,
    # with the store intact
    settings = msgspec.structs.replace(settings, kafka=msgspec.structs.replace(settings.kafka, group_prefix=f"rewound-{unique_name}"))
    again = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(again, 150)
    again.close()
    assert again.stats.replayed_events == 150 and again.stats.entity_updates == 0
    assert len(read_topic(kafka_bootstrap, settings.topics.coefficients("member"))) == published
