"""The joiner over the kafka_bootstrap broker picks up new models without a restart and scores with them."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from stream.codec import make_codec
from stream.config import load_settings
from stream.consumers.joiner import Joiner
from stream.kafka import prepare_topics, producer_config
from stream.model.export import initial_global_model_record
from stream.runtime.runner import StageRunner
from stream.synthetic import World, WorldSpec, event_stream, labeled_impressions
from stream.synthetic.sinks import event_topics_and_codecs, produce_to_kafka
from tests.helpers import read_topic

pytestmark = pytest.mark.kafka


def _produce_clicked(producer: Producer, topics, labeled) -> None:
    """Each labeled impression and a click on it 1 ms later, keyed by member."""
    impressions, clicks = make_codec("Impression", topics.impressions), make_codec("Interaction", topics.interactions)
    for li in labeled:
        imp = li.impression
        producer.produce(topics.impressions, key=imp["member_id"].encode(), value=impressions.encode(imp))
        producer.produce(topics.interactions, key=imp["member_id"].encode(), value=clicks.encode({
            "interaction_id": f"c-{imp['impression_id']}", "impression_id": imp["impression_id"],
            "member_id": imp["member_id"], "item_id": imp["item_id"], "type": "CLICK",
            "event_time": imp["event_time"] + 1}))


def _step_until(joiner: Joiner, examples: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while joiner.stats.examples < examples:
        assert time.monotonic() < deadline, f"joiner emitted {joiner.stats.examples} of {examples} examples"
        joiner.step()


def test_new_global_and_entity_models_are_used_from_the_next_batch(kafka_bootstrap, tmp_path, unique_name):
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "joiner.early_positives": "true", "topics.impressions": f"imp-{unique_name}",
        "topics.interactions": f"int-{unique_name}", "topics.examples_by_member": f"exm-{unique_name}",
        "topics.examples_by_job": f"exj-{unique_name}", "topics.model_global": f"global-{unique_name}",
        "topics.coefficients_prefix": f"coef-{unique_name}-",
    })
    topics = settings.topics
    labeled = labeled_impressions(World(WorldSpec(seed=2, members=5, jobs=5, requests=4, items_per_request=2)))
    record = initial_global_model_record([li.impression for li in labeled], settings.model, version=1)
    record["coefficients"] = [0.0] * len(record["coefficients"])
    producer = Producer(producer_config(settings.kafka))
    global_codec = make_codec("GlobalModel", topics.model_global)
    producer.produce(topics.model_global, key=b"glmix", value=global_codec.encode(record))
    producer.flush()
    joiner = StageRunner(Joiner(settings), settings)
    impression_codec, interaction_codec = make_codec("Impression", topics.impressions), make_codec("Interaction", topics.interactions)

    def show_and_click(impression: dict) -> None:
        key = impression["member_id"].encode()
        producer.produce(topics.impressions, key=key, value=impression_codec.encode(impression))
        producer.produce(topics.interactions, key=key, value=interaction_codec.encode({
            "interaction_id": f"c-{impression['impression_id']}", "impression_id": impression["impression_id"],
            "member_id": impression["member_id"], "item_id": impression["item_id"], "type": "CLICK",
            "event_time": impression["event_time"] + 1}))
        producer.flush()

    try:
        first, second = labeled[0].impression, labeled[1].impression
        show_and_click(first)
        _step_until(joiner, 1)
        # a refit publishes version 2; the member's updater publishes a model for the second impression's member
        producer.produce(topics.model_global, key=b"glmix",
                         value=global_codec.encode(dict(record, version=2, coefficients=[0.25] * len(record["coefficients"]))))
        member_means = np.linspace(-1, 1, settings.model.coordinates["member"].max_features)
        producer.produce(topics.coefficients("member"), key=second["member_id"].encode(), value=make_codec(
            "EntityModel", topics.coefficients("member")).encode({
                "coordinate": "member", "entity_id": second["member_id"], "version": 4, "means": member_means.tolist(),
                "precision_kind": "PACKED_UPPER", "precision": b""}))
        producer.flush()
        time.sleep(1.0)
        show_and_click(second)
        _step_until(joiner, 2)
    finally:
        joiner.close()
    codec = make_codec("LabeledExample", topics.examples_by_member)
    examples = {e["example_id"]: e for e in (codec.decode(m.value()) for m in read_topic(kafka_bootstrap, topics.examples_by_member))}
    before, after = examples[first["impression_id"]], examples[second["impression_id"]]
    assert before["label"] == after["label"] == 1.0
    assert before["model_versions"]["global"] == 1 and before["scores"]["global"] == 0.0
    assert after["model_versions"]["global"] == 2 and after["model_versions"]["member"] == 4
    global_values = np.frombuffer(after["global_features"]["values"], dtype="<f4")
    assert after["scores"]["global"] == pytest.approx(0.25 * global_values.sum(), rel=1e-6)
    dense = np.frombuffer(after["coordinates"]["member"]["dense"], dtype="<f4")
    assert after["scores"]["member"] == pytest.approx(float(dense @ member_means), rel=1e-6)


def test_without_a_model_the_joiner_indexes_a_warm_up_of_impressions_not_its_first_batch(
        kafka_bootstrap, tmp_path, unique_name, caplog):
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "joiner.bootstrap_impressions": "120", "joiner.batch_size": "25", "joiner.early_positives": "true",
        "topics.impressions": f"imp-{unique_name}", "topics.interactions": f"int-{unique_name}",
        "topics.examples_by_member": f"exm-{unique_name}", "topics.examples_by_job": f"exj-{unique_name}",
        "topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
    })
    topics = settings.topics
    labeled = labeled_impressions(World(WorldSpec(seed=4, members=30, jobs=40, requests=40, items_per_request=4)))
    producer = Producer(producer_config(settings.kafka))

    def produce(part) -> None:
        _produce_clicked(producer, topics, part)
        producer.flush()

    joiner = StageRunner(Joiner(settings), settings)
    caplog.set_level("WARNING", logger="stream.consumers.joiner")
    try:
        produce(labeled[:100])
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:  # many micro-batches of 25, all held: 100 < 120 impressions
            joiner.step()
        assert joiner.stage.models.global_model.current is None and joiner.stats.examples == 0
        produce(labeled[100:])
        _step_until(joiner, len(labeled))
        model = joiner.stage.models.global_model.current
    finally:
        joiner.close()
    assert model.version == 1 and joiner.stats.examples == len(labeled) == 160
    # Indexed from a warm-up of at least 120 impressions, not from a micro-batch of 25.
    [line] = [r.getMessage() for r in caplog.records if "warm-up impressions" in r.getMessage()]
    assert int(re.search(r"from (\d+) warm-up impressions", line).group(1)) >= 120
    first_batch = initial_global_model_record([li.impression for li in labeled[:25]], settings.model)
    assert len(first_batch["features"]) < model.global_index.dim


def test_a_logged_batch_whose_examples_were_half_delivered_is_completed_on_another_machine(kafka_bootstrap, tmp_path,
                                                                                          unique_name):
    """The crash the outbox is for: a batch logged to the changelog, some of its examples produced, then SIGKILL.

    The partition then arrives at a process with an empty state directory (another
    machine): it restores the batch from the changelog, produces exactly the missing
    examples, and keeps the batch's processed offsets and pending impressions.
    """
    from stream.consumers.outbox import OutgoingRecord, outbox_entries, outbox_size_item, wall_ms
    from stream.state.store_changelog import batch_records

    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "topics.impressions": f"imp-{unique_name}", "topics.interactions": f"int-{unique_name}",
        "topics.examples_by_member": f"exm-{unique_name}", "topics.examples_by_job": f"exj-{unique_name}",
        "topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
    })
    topics = settings.topics
    labeled = labeled_impressions(World(WorldSpec(seed=3, members=5, jobs=5, requests=2, items_per_request=3)))
    record = initial_global_model_record([li.impression for li in labeled], settings.model)
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topics.model_global, key=b"glmix", value=make_codec("GlobalModel", topics.model_global).encode(record))
    from stream.synthetic.examples import joined_examples
    from stream.tables.models import GlobalModelTable

    table = GlobalModelTable(settings.model)
    table.apply([record])
    examples = joined_examples(labeled, table.current, settings.model)
    codec = make_codec("LabeledExample", "any")
    outgoing = [OutgoingRecord(topic, e["member_id"].encode(), codec.encode(e), e["example_id"])
                for topic in (topics.examples_by_member, topics.examples_by_job) for e in examples]
    pending_key, pending_value = b"p" + b"imp-still-waiting", b"a pending impression"
    outbox = outbox_entries(outgoing, wall_ms())
    logged = batch_records([*outbox, outbox_size_item(outbox), (pending_key, pending_value)], [],
                           {topics.impressions: 41})
    changelog = settings.kafka.changelog_topic("joiner")
    prepare_topics(settings)
    for key, value in logged:
        producer.produce(changelog, key=key, value=value, partition=0)
    delivered = outgoing[:4] + outgoing[len(examples):len(examples) + 1]  # what reached the broker before the crash
    for r in delivered:
        producer.produce(r.topic, key=r.key, value=r.value)
    producer.flush(10)

    joiner = StageRunner(Joiner(settings), settings)
    try:
        deadline = time.monotonic() + 60
        while 0 not in joiner.assignment.stores or joiner.stats.outbox_recovered < len(outgoing) - len(delivered):
            assert time.monotonic() < deadline, f"recovered {joiner.stats.outbox_recovered}"
            joiner.step()
        store = joiner.assignment.stores[0]
        assert store.processed_offset(topics.impressions) == 41
        assert store.get_many([pending_key]) == [pending_value]
        assert joiner.stats.changelog_batches_restored == 1
        joiner.step()  # the partition's next batch produces what the outbox had not delivered, in its checkpoint

        def on_topics() -> list[list[str]]:
            return [sorted(codec.decode(m.value())["example_id"] for m in read_topic(kafka_bootstrap, topic))
                    for topic in (topics.examples_by_member, topics.examples_by_job)]

        assert on_topics() == [sorted(e["example_id"] for e in examples)] * 2  # before close() could produce it
    finally:
        joiner.close()
    assert joiner.stats.outbox_recovered == len(outgoing) - len(delivered) == 7


def test_records_of_an_unfinished_batch_are_ignored_and_overwritten(kafka_bootstrap, tmp_path, unique_name):
    """A writer killed in the middle of logging a batch: a restore applies nothing of it, and the next batch
    overwrites its keys with the committed values, so compaction cannot resurrect them."""
    from stream.state.store_changelog import batch_records

    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "topics.impressions": f"imp-{unique_name}", "topics.interactions": f"int-{unique_name}",
        "topics.examples_by_member": f"exm-{unique_name}", "topics.examples_by_job": f"exj-{unique_name}",
        "topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
        "joiner.bootstrap_impressions": "1",
    })
    topics = settings.topics
    producer = Producer(producer_config(settings.kafka))
    changelog = settings.kafka.changelog_topic("joiner")
    prepare_topics(settings)
    committed = batch_records([(b"kept", b"committed value")], [], {topics.impressions: 9})
    unfinished = batch_records([(b"kept", b"uncommitted value"), (b"new", b"uncommitted")], [], {topics.impressions: 20})
    for key, value in [*committed, *unfinished[:-2]]:  # no offsets, no marker: the writer died here
        producer.produce(changelog, key=key, value=value, partition=0)
    producer.flush(10)

    world = World(WorldSpec(seed=4, members=5, jobs=5, requests=3, items_per_request=2))
    produce_to_kafka(list(event_stream(world, labeled_impressions(world))), producer, *event_topics_and_codecs(settings))
    producer.flush(10)
    joiner = StageRunner(Joiner(settings), settings)
    try:
        deadline = time.monotonic() + 60
        while 0 not in joiner.assignment.stores or joiner.stats.batches == 0:
            assert time.monotonic() < deadline
            joiner.step()
        for _ in range(3):  # the first batch with partition 0 ready logs its compensation
            joiner.step()
        store = joiner.assignment.stores[0]
        assert store.get_many([b"kept", b"new"]) == [b"committed value", None]
    finally:
        joiner.close()
    log = [(m.key(), m.value()) for m in read_topic(kafka_bootstrap, changelog) if m.partition() == 0]
    last_kept = [v for k, v in log if k == b"kept"][-1]
    last_new = [v for k, v in log if k == b"new"][-1]
    assert (last_kept, last_new) == (b"committed value", None)


def test_a_joiner_that_takes_over_fully_read_partitions_closes_their_windows(kafka_bootstrap, tmp_path, unique_name):
    """Impressions whose interactions never come close once the interactions input is idle. A joiner that gets
    partitions a previous owner read to the end never receives a record from them, so its consumer knows no
    position there: the store's processed offsets must stand in, or those windows never close."""
    overrides = {
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "topics.impressions": f"imp-{unique_name}", "topics.interactions": f"int-{unique_name}",
        "topics.examples_by_member": f"exm-{unique_name}", "topics.examples_by_job": f"exj-{unique_name}",
        "topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
        "joiner.attribution_window_ms": "10000", "joiner.allowed_lateness_ms": "1000",
    }
    first_settings = load_settings(overrides={**overrides, "joiner.idle_input_ms": "3600000"})  # never idle
    topics = first_settings.topics
    labeled = labeled_impressions(World(WorldSpec(seed=5, members=6, jobs=6, requests=40, items_per_request=2)))
    producer = Producer(producer_config(first_settings.kafka))
    record = initial_global_model_record([li.impression for li in labeled], first_settings.model)
    producer.produce(topics.model_global, key=b"glmix", value=make_codec("GlobalModel", topics.model_global).encode(record))
    codec = make_codec("Impression", topics.impressions)
    impressions = [dict(li.impression, event_time=1_000_000 + 1_000 * n) for n, li in enumerate(labeled)]
    for impression in impressions:  # and no interactions at all
        producer.produce(topics.impressions, key=impression["member_id"].encode(), value=codec.encode(impression))
    producer.flush(10)
    first = StageRunner(Joiner(first_settings), first_settings)
    try:
        deadline = time.monotonic() + 60
        while first.stats.join.impressions < len(impressions):
            assert time.monotonic() < deadline
            first.step()
        assert first.stats.examples == 0  # the interactions input is not idle yet: it holds every window
    finally:
        first.close()
    second_settings = load_settings(overrides={**overrides, "joiner.idle_input_ms": "200"})
    second = StageRunner(Joiner(second_settings), second_settings)
    try:
        _step_until(second, len(impressions) // 2, timeout_s=60)
    finally:
        second.close()


def test_a_batch_with_more_dead_letters_than_the_producer_queue_holds_goes_on_with_nothing_lost(
        kafka_bootstrap, tmp_path, unique_name):
    """One batch brings 3,000 malformed records to a joiner whose producer queue holds 200: a full queue is
    back-pressure, so the stage serves it and goes on; every bad record is dead-lettered once and every
    impression is joined (the producer's BufferError once killed the joiner here)."""
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "kafka.producer.queue.buffering.max.messages": "200", "joiner.early_positives": "true",
        "topics.impressions": f"imp-{unique_name}", "topics.interactions": f"int-{unique_name}",
        "topics.examples_by_member": f"exm-{unique_name}", "topics.examples_by_job": f"exj-{unique_name}",
        "topics.model_global": f"global-{unique_name}", "topics.coefficients_prefix": f"coef-{unique_name}-",
        "topics.dead_letter": f"dlq-{unique_name}",
    })
    topics = settings.topics
    prepare_topics(settings)
    labeled = labeled_impressions(World(WorldSpec(seed=5, members=10, jobs=10, requests=20, items_per_request=2)))
    record = initial_global_model_record([li.impression for li in labeled], settings.model, version=1)
    producer = Producer(producer_config(settings.kafka, **{"queue.buffering.max.messages": 100_000}))
    producer.produce(topics.model_global, key=b"glmix", value=make_codec("GlobalModel", topics.model_global).encode(record))
    garbage = [b"not avro %05d" % i for i in range(3_000)]
    for value in garbage:
        producer.produce(topics.interactions, key=b"m-flood", value=value, partition=0)
    _produce_clicked(producer, topics, labeled)
    assert producer.flush(30) == 0

    joiner = StageRunner(Joiner(settings), settings)
    most_in_one_batch = 0
    try:
        deadline = time.monotonic() + 90
        while joiner.stats.examples < len(labeled) or joiner.stats.dead_lettered < len(garbage):
            assert time.monotonic() < deadline, (
                f"joiner emitted {joiner.stats.examples} of {len(labeled)} examples and dead-lettered "
                f"{joiner.stats.dead_lettered} of {len(garbage)}")
            before = joiner.stats.dead_lettered
            joiner.step()
            most_in_one_batch = max(most_in_one_batch, joiner.stats.dead_lettered - before)
    finally:
        joiner.close()
    assert most_in_one_batch > 200, f"no batch overfilled the queue (at most {most_in_one_batch} dead letters)"
    dead = read_topic(kafka_bootstrap, topics.dead_letter)
    assert sorted(m.value() for m in dead) == garbage
    assert all(dict(m.headers())["source.topic"] == topics.interactions.encode() for m in dead)
    codec = make_codec("LabeledExample", topics.examples_by_member)
    emitted = [codec.decode(m.value())["example_id"] for m in read_topic(kafka_bootstrap, topics.examples_by_member)]
    assert sorted(emitted) == sorted(li.impression["impression_id"] for li in labeled)


def test_two_coordinates_keyed_by_the_same_entity_share_one_examples_topic_and_get_each_example_once(
        kafka_bootstrap, tmp_path, unique_name):
    """A second member coordinate (over other job features) reads examples.by-member too: the joiner writes each
    example there once, with both coordinates' features, not once per coordinate (each updater would absorb it twice)."""
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": kafka_bootstrap, "kafka.group_prefix": unique_name, "state_dir": str(tmp_path),
        "joiner.early_positives": "true", "topics.impressions": f"imp-{unique_name}",
        "topics.interactions": f"int-{unique_name}", "topics.examples_by_member": f"exm-{unique_name}",
        "topics.examples_by_job": f"exj-{unique_name}", "topics.model_global": f"global-{unique_name}",
        "topics.coefficients_prefix": f"coef-{unique_name}-", "model.coordinates.member2.entity_field": "member_id",
        "model.coordinates.member2.feature_bags": "job_company",
    })
    topics = settings.topics
    prepare_topics(settings)
    labeled = labeled_impressions(World(WorldSpec(seed=7, members=8, jobs=8, requests=10, items_per_request=2)))
    producer = Producer(producer_config(settings.kafka))
    record = initial_global_model_record([li.impression for li in labeled], settings.model, version=1)
    producer.produce(topics.model_global, key=b"glmix", value=make_codec("GlobalModel", topics.model_global).encode(record))
    _produce_clicked(producer, topics, labeled)
    assert producer.flush(30) == 0
    joiner = StageRunner(Joiner(settings), settings)
    try:
        _step_until(joiner, len(labeled))
    finally:
        joiner.close()
    codec = make_codec("LabeledExample", topics.examples_by_member)
    emitted = [codec.decode(m.value()) for m in read_topic(kafka_bootstrap, topics.examples_by_member)]
    assert sorted(e["example_id"] for e in emitted) == sorted(li.impression["impression_id"] for li in labeled)
    assert all({"member", "member2"} <= set(e["coordinates"]) for e in emitted)
