"""Malformed examples in a live updater's batch: each is dead-lettered with its reason, the rest are absorbed."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.kafka import producer_config
from stream.runtime.runner import StageRunner
from stream.updaters.updater import CoordinateUpdater
from tests.helpers import read_topic
from tests.updaters.test_recovery import D, _latest_means, _run_until, _settings

pytestmark = pytest.mark.kafka


def test_one_bad_example_is_dead_lettered_and_its_batch_goes_on(kafka_bootstrap, tmp_path, unique_name):
    settings = _settings(kafka_bootstrap, tmp_path / "state", unique_name)
    topic = settings.topics.examples_by_member
    codec = make_codec("LabeledExample", topic)

    def value(member: str, label: float = 1.0, width: int = D) -> bytes:
        return codec.encode({
            "example_id": "x", "member_id": member, "item_id": "j", "label": label, "event_time": 0, "label_time": 0,
            "global_features": {"indices": b"", "values": b""},
            "coordinates": {"member": {"entity_id": member, "dense": np.ones(width, dtype="<f4").tobytes()}},
        })

    bad = {b"truncated": value("m1")[:-3], b"garbage": b"\x00\x01garbage", b"nan": value("m1", label=float("nan")),
           b"narrow": value("m1", width=D - 1)}
    producer = Producer(producer_config(settings.kafka))
    sent = [(b"m1", value("m1")), *bad.items(), (b"m2", value("m2")), (b"m1", value("m1"))]
    for key, payload in sent:  # one partition, so one batch holds them all
        producer.produce(topic, key=key, value=payload, partition=0)
    producer.flush()
    updater = StageRunner(CoordinateUpdater(settings, "member"), settings)
    _run_until(updater, 3)
    updater.close()
    assert updater.stats.examples == 3 and updater.stats.entity_updates == 2
    dead = read_topic(kafka_bootstrap, settings.topics.dead_letter)
    reasons = {m.key(): dict(m.headers())["error"].decode() for m in dead}
    assert reasons == {
        b"truncated": f"LabeledExample: truncated value in field 'position' at byte {len(bad[b'truncated'])} of "
                      f"{len(bad[b'truncated'])}",
        b"garbage": "LabeledExample: bad or missing framing header at byte 0 of 9",
        b"nan": "non-finite feature, label, weight, offset or score, or a negative weight",
        b"narrow": f"coordinate 'member' has {D - 1} features, expected {D}",
    }
    assert sorted(int(dict(m.headers())["source.offset"]) for m in dead) == [1, 2, 3, 4]
    assert {e: v for e, (v, _) in _latest_means(settings, kafka_bootstrap).items()} == {"m1": 1, "m2": 1}
